"""
### dbops_pin: keep one backup past its retention, locally and offsite, until unpinned

Manual only. A pinned backup is never expired: not by the nightly retention, not by
offsite retention on any target, not by point-in-time retention (a pinned base backup keeps
its WAL too). Pinned backups do not count toward `min_keep` (they stay anyway, so they never
stand in for the recent ones). The DB Ops page shows each pin and its reason.

| task | what it does |
|---|---|
| `plan` | refuses, before anything is written: a bad store, subject or `backup_id`, a pin without a reason, a backup that is not in the local repository (pin); logs the offsite targets the pin goes to (a target in `offsite.targets` without an Airflow connection is skipped: nothing can be shipped there) |
| `pin_local` | writes the backup's sidecar `pin.json` (`pinned`, `reason`, `by` = this run, `at`); unpin writes `pinned: false`. Skipped for an unpin of a backup no longer in the local repository |
| `pin_rsync`, `pin_s3` | the entry `<series>/<backup_id>` in `pins.json` at the target's root (so the pin survives the loss of the local repository), added or removed. In the one-slot pool `dbops_offsite_wal`, beside offsite retention: a retention never reads the pins while they change |

**Params**: `store` (a store, or `postgres_pitr` for a base backup of point-in-time
recovery); `subject` (Postgres: the series as the DB Ops page lists it, such as
`ai_platform` or `_globals`; empty for the other stores); `backup_id` (exactly, as listed);
`action` (`pin` or `unpin`); `reason` (required to pin: why this backup must stay).

**Rerun**: idempotent: a pin already there (same reason) is not written again; an unpin
of what is not pinned changes nothing. A failed target task cleared later converges.

**Backfill**: not applicable (manual only, no schedule).
"""

from airflow.sdk import Param

from dbops.dagkit import OPTIONAL_STRING, dbops_dag
from dbops.tasks.pin import ACTIONS, MAX_REASON, PIN_STORES, TARGETS, pin_local, pin_target_task, plan
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_pin",
    schedule=None,
    doc_md=__doc__,
    tags=["backup", "retention"],
    params={
        "store": Param(
            "postgres",
            type="string",
            enum=PIN_STORES,
            title="Store",
            description="The store of the backup (postgres_pitr: a base backup of point-in-time recovery).",
        ),
        "subject": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=63,
            title="Subject (Postgres database)",
            description="Postgres: the series as the DB Ops page lists it (ai_platform, _globals). "
            "Empty for the other stores.",
        ),
        "backup_id": Param(
            None,
            type=OPTIONAL_STRING,
            pattern=r"^([0-9]{8}T[0-9]{6}Z(-[1-9][0-9]*)?)?$",
            title="Backup id",
            description="Required: exactly as listed, such as 20261004T020000Z.",
        ),
        "action": Param(
            "pin",
            type="string",
            enum=list(ACTIONS),
            title="Action",
            description="pin: never expire it, locally or offsite; unpin: let retention judge it again.",
        ),
        "reason": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=MAX_REASON,
            title="Reason",
            description="Why this backup must stay (required to pin), shown on the DB Ops page.",
        ),
    },
):
    planned = plan()
    local = pin_local(planned)
    for target in TARGETS:
        local >> pin_target_task(target)(planned)
    summary()
