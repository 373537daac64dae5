"""What a bootstrap or verify step did or found, in a form fit for logs and XCom."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Action = Literal["create", "update", "unchanged", "drift", "unsupported", "missing"]


@dataclass(frozen=True)
class Change:
    """One object and what happened to it (or, in a dry run, what would)."""

    action: Action
    target: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.action:<11} {self.target}" + (f"  ({self.detail})" if self.detail else "")


@dataclass
class StoreReport:
    store: str
    dry_run: bool = False
    changes: list[Change] = field(default_factory=list)

    def add(self, action: Action, target: str, detail: str = "") -> None:
        self.changes.append(Change(action, target, detail))

    @property
    def problems(self) -> list[Change]:
        """Differences that were not (or could not be) repaired."""
        return [c for c in self.changes if c.action in ("drift", "unsupported", "missing")]

    @property
    def modified(self) -> list[Change]:
        return [c for c in self.changes if c.action in ("create", "update")]

    def as_verification(self) -> StoreReport:
        """A dry-run plan read as a check: what would be created is missing, updated is drift."""
        renamed: dict[Action, Action] = {"create": "missing", "update": "drift"}
        checked = StoreReport(self.store)
        for c in self.changes:
            checked.add(renamed.get(c.action, c.action), c.target, c.detail.replace("would ", "needs: "))
        return checked

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        return (
            f"{self.store}: {verb} {len(self.modified)}, unchanged "
            f"{sum(c.action == 'unchanged' for c in self.changes)}, problems {len(self.problems)}"
        )

    def render(self) -> str:
        head = f"{self.summary()}{' [dry run: nothing was touched]' if self.dry_run else ''}"
        return "\n".join([head, *("  " + c.line() for c in self.changes)])

    def to_dict(self) -> dict:
        return {
            "store": self.store,
            "dry_run": self.dry_run,
            "changes": [asdict(c) for c in self.changes],
            "summary": self.summary(),
        }
