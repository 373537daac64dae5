"""Approval before destruction (Airflow's human-in-the-loop ``ApprovalOperator``).

A step that replaces data that exists (an overwrite restore, a restore into the live Redis,
``VACUUM FULL`` of listed tables) waits under "Required Actions" for a person to approve the
plan it shows; the typed ``confirm_overwrite`` stays the first key, this is the second.

- not destructive (judged from the plan's XCom): succeeds at once, nobody is asked;
- Approve: the destructive tasks run;
- Reject: they are skipped, nothing changes;
- no answer within ``restore.approval_timeout_minutes``: the approval fails, so do they (nothing changes).

Each try asks for itself: an answer is never carried over to a later try (a retry or a clear asks
again, and its log says why), so an approval is never applied to a try nobody approved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import ExceptionRetryPolicy, RetryRule
from airflow.sdk.definitions.retry_policy import RetryAction

log = logging.getLogger(__name__)

# A timeout is the answer "no": a retry would ask again and hold the run; the refusals of the
# other tasks (dagkit.NEVER_RETRY) fail at once here too.
NO_RETRY_ON_TIMEOUT = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[
                "dbops.backup.adapter.NotRetryable",
                "dbops.config.ConfigError",
                "airflow.providers.standard.exceptions.HITLTimeoutError",
                "airflow.providers.standard.exceptions.HITLRejectException",
            ],
            action=RetryAction.FAIL,
            reason="no approval in time (or a refusal): asking again cannot change it",
        )
    ]
)

# A retry of the approval does no work, it asks again: at once, not after the DAG's backoff. It is
# how an answer Airflow 3.3 drops is asked for again: its scheduler takes a task resumed within a
# second or two of parking for one killed externally and retries it (fixed in Airflow 3.4).
APPROVAL_RETRY_DELAY = timedelta(seconds=10)

# XCom key of the outcome: {"approved": True/False/None (not needed), "by", "at", "summary"}; also
# pushed when a rejection skips the downstream tasks (the task then has no return value)
APPROVAL_KEY = "approval"

# (the plan's XCom, the run's Params) -> (subject, Markdown body), or None when nothing is destroyed
Describe = Callable[[dict, dict], "tuple[str, str] | None"]


class DestructionApproval(ApprovalOperator):
    """Waits for an approval only when ``describe`` finds the plan destructive."""

    def __init__(
        self, *, describe: Describe, plan_task: str = "plan", subject: str = "Approve a destructive step", **kwargs: Any
    ) -> None:
        kwargs.setdefault("retry_policy", NO_RETRY_ON_TIMEOUT)
        # over the DAG's defaults, which arrive in kwargs too
        kwargs.update(retry_delay=APPROVAL_RETRY_DELAY, retry_exponential_backoff=0)
        super().__init__(subject=subject, **kwargs)
        self.describe = describe
        self.plan_task = plan_task

    def execute(self, context: Any) -> Any:
        from dbops.runtime import runtime_config

        planned = context["ti"].xcom_pull(task_ids=self.plan_task) or {}
        described = self.describe(planned, dict(context["params"]))
        if described is None:
            log.info("nothing existing is replaced: no approval needed")
            outcome = {"approved": None, "summary": "no approval needed (nothing existing is replaced)"}
            context["ti"].xcom_push(key=APPROVAL_KEY, value=outcome)
            return outcome
        self.subject, self.body = described
        try_number = context["ti"].try_number
        if try_number > 1:
            log.warning("%s", _asked_again_line(try_number))
        minutes = runtime_config().restore.approval_timeout_minutes
        self.response_timeout = timedelta(minutes=minutes)
        log.info(
            "waiting up to %g min for an approval under Required Actions: %s\n%s", minutes, self.subject, self.body
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" in event:
            return super().execute_complete(context, event)  # a timeout raises: the task fails, nothing changed
        # pushed before the parent handles a rejection: skipping the downstream tasks ends the
        # task without a return value, and the run's report and summary must still tell why
        approved = event.get("chosen_options") == [self.APPROVE]
        by = (event.get("responded_by_user") or {}).get("name") or "?"
        line = (
            f"approved by {by}" if approved else f"rejected by {by}: the destructive step was skipped, nothing changed"
        )
        log.info("%s", line)
        outcome = {"approved": approved, "by": by, "at": str(event.get("responded_at")), "summary": line}
        context["ti"].xcom_push(key=APPROVAL_KEY, value=outcome)
        context["ti"].xcom_push(key="summary", value=line)
        super().execute_complete(context, event)
        return outcome


def _asked_again_line(try_number: int) -> str:
    return (
        f"asked again (try {try_number}): an answer given to an earlier try is not carried over; the request is "
        "pending again under Required Actions. A retry follows an earlier try that changed nothing, e.g. an answer "
        "Airflow 3.3 dropped because it came within seconds of the request appearing (fixed in Airflow 3.4)"
    )


def _timeout_line() -> str:
    from dbops.runtime import runtime_config

    minutes = runtime_config().restore.approval_timeout_minutes
    return (
        f"**Approve**: the step runs. **Reject**: it is skipped and nothing changes. "
        f"No answer within {minutes:g} min: the run fails and nothing changes."
    )


def _session(session: Any) -> str:
    if isinstance(session, dict) and "pid" in session:
        application = session.get("application_name") or "-"
        return f"pid {session['pid']} (user {session.get('user')}, application {application})"
    return str(session)


def describe_restore(planned: dict, params: dict) -> tuple[str, str] | None:
    """The approval of a destructive restore: what is replaced, which sessions end, the backup."""
    why = planned.get("approval")
    if not why:
        return None
    copy = planned.get("copy") or {}
    details = planned.get("details") or {}
    target = copy.get("target") or planned.get("target")
    store = params.get("store", planned.get("store"))
    backup = planned.get("backup") or {}
    backup_id = (
        backup.get("backup_id")
        or planned.get("backup_id")
        or (planned.get("pitr") or {}).get("base_backup")
        or (planned.get("pitr_offsite") or {}).get("base_backup")
    )
    replaced = f"`{target}`: {why}"
    if details.get("set_aside_as"):
        replaced += f"; the old one is renamed aside to `{details['set_aside_as']}` (kept, not dropped)"
    sessions = details.get("sessions") or []
    if sessions:
        ended = "\n".join(f"- {_session(s)}" for s in sessions)
    elif store == "postgres":
        ended = "- none connected now (any connected when the copy is swapped in is ended)"
    else:
        ended = "- none: clients keep their connections; the keys of the backup are written under them"
    size = f"{backup['size']} ({backup['bytes']} bytes)" if backup.get("size") else "see the plan log"
    age = f"taken {backup['taken_at']}, {backup['age']} old" if backup.get("age") else "see the plan log"
    source = (planned.get("offsite") or {}).get("location") or "the local repository"
    lines = [
        f"## Restore {store} backup `{backup_id}` over `{target}`",
        "",
        "| | |",
        "|---|---|",
        f"| **Replaced** | {replaced} |",
        f"| **Backup** | `{backup_id}` from {source} |",
        f"| **Size** | {size} |",
        f"| **Age** | {age} |",
        f"| **confirm_overwrite** | `{params.get('confirm_overwrite') or ''}` |",
        "",
        "**Sessions that end**",
        "",
        ended,
    ]
    actions = planned.get("actions") or []
    if actions:
        lines += ["", "**The plan**", "", *(f"{n}. {a}" for n, a in enumerate(actions, 1))]
    lines += ["", _timeout_line()]
    return f"Restore over {target} ({store} backup {backup_id})", "\n".join(lines)


def describe_vacuum_full(planned: dict, params: dict) -> tuple[str, str] | None:
    """The approval of VACUUM FULL of listed tables (each locked ACCESS EXCLUSIVE while rewritten)."""
    tables = planned.get("vacuum_full_tables") or []
    if not tables or params.get("dry_run"):
        return None  # nothing listed, or a dry run: nothing is rewritten
    databases = planned.get("databases") or []
    lines = [
        f"## VACUUM (FULL, ANALYZE) of {len(tables)} table(s)",
        "",
        "Each table is rewritten under an ACCESS EXCLUSIVE lock: no reads or writes of it until it is done, "
        "and the rewrite needs free disk of about the table's size. A table whose lock is not granted within "
        "`maintenance.lock_timeout` is skipped and reported.",
        "",
        "**Tables**",
        "",
        *(f"- `{t}`" for t in tables),
        "",
        f"**Databases**: {', '.join(f'`{d}`' for d in databases) or 'the connection’s'}",
        "",
        _timeout_line(),
    ]
    return f"VACUUM FULL of {', '.join(tables[:3])}{' …' if len(tables) > 3 else ''}", "\n".join(lines)
