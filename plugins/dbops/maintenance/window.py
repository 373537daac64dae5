"""The maintenance window: new work starts only before its end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    clock: Callable[[], datetime] = field(default=utcnow, compare=False, repr=False)

    @classmethod
    def starting(cls, start: datetime | None, minutes: int, clock: Callable[[], datetime] = utcnow) -> Window:
        """``minutes`` long from ``start`` (the run's start; None: now)."""
        begin = start or clock()
        if begin.tzinfo is None:
            raise ValueError("the window start must be timezone-aware")
        return cls(begin, begin + timedelta(minutes=minutes), clock)

    def closed(self) -> bool:
        return self.clock() >= self.end

    def remaining_s(self) -> float:
        return max((self.end - self.clock()).total_seconds(), 0.0)

    def describe(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M:%S} .. {self.end:%Y-%m-%d %H:%M:%S} UTC"
