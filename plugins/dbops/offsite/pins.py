"""Pins offsite: ``pins.json`` at a target's root, so a pin survives the loss of the
local repository (where the pin is the backup's ``pin`` sidecar).

The file is small and written whole (``FileTarget.write_file``: readers see the old or
the new file, never a mix); each write re-reads it first. Writers and offsite retention
run one at a time in the pool ``dbops_offsite_wal``, so a retention never reads pins
while they change. An unreadable ``pins.json`` is an error, never "no pins": retention
on that target deletes nothing until it is fixed.

Format::

    {"format": "dbops-offsite-pins", "version": 1,
     "pins": {"<store>[/<subject>]/<backup_id>": {"reason": ..., "by": ..., "at": ...}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dbops.backup.adapter import NotRetryable
from dbops.backup.repository import format_time, is_backup_id
from dbops.offsite.common import FileTarget, LogFn, OffsiteError, SeriesKey

PINS_REL = "pins.json"
PINS_FORMAT = "dbops-offsite-pins"
PINS_VERSION = 1
_MAX_PINS_BYTES = 4 * 1024 * 1024


class PinsUnreadable(OffsiteError, NotRetryable):
    """A target's pins.json exists but is not a pins file dbops can read."""


def pin_key(key: SeriesKey, backup_id: str) -> str:
    if not is_backup_id(backup_id):
        raise ValueError(f"{backup_id!r} is not a backup id")
    return f"{key.rel}/{backup_id}"


def parse_pins(data: bytes | None, where: str) -> dict[str, dict[str, Any]]:
    """The pins of a ``pins.json`` body (None: no file, no pins); PinsUnreadable otherwise."""
    if data is None:
        return {}
    try:
        if len(data) > _MAX_PINS_BYTES:
            raise ValueError(f"{len(data)} bytes, more than a pins file holds")
        body = json.loads(data.decode("utf-8"))
        if not isinstance(body, dict) or body.get("format") != PINS_FORMAT or body.get("version") != PINS_VERSION:
            raise ValueError(f"not a {PINS_FORMAT} version {PINS_VERSION} file")
        pins = body.get("pins")
        if not isinstance(pins, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("reason"), str) for v in pins.values()
        ):
            raise ValueError("'pins' must map '<series>/<backup_id>' to an entry with a reason")
    except (UnicodeDecodeError, ValueError) as exc:
        raise PinsUnreadable(
            f"{where}: {PINS_REL} is unreadable ({exc}); fix or remove it by hand, "
            "offsite retention there deletes nothing until then"
        ) from None
    return pins


def read_pins(target: FileTarget, log: LogFn) -> dict[str, dict[str, Any]]:
    """Every pin on the target (``"<series>/<backup_id>"`` -> entry)."""
    return parse_pins(target.read_file(PINS_REL, log), f"{target.name} ({target.location()})")


def series_pins(pins: Mapping[str, Mapping[str, Any]], key: SeriesKey) -> dict[str, str]:
    """The pins of one series: backup id -> reason (the policy's ``pins``)."""
    prefix = f"{key.rel}/"
    found = {}
    for name, entry in pins.items():
        rest = name[len(prefix) :] if name.startswith(prefix) else ""
        if rest and "/" not in rest:
            found[rest] = f"{entry['reason']} (pinned in {PINS_REL} of the target)"
    return found


def set_pin(
    target: FileTarget, key: SeriesKey, backup_id: str, entry: Mapping[str, Any] | None, *, now: datetime, log: LogFn
) -> bool:
    """Pin (``entry`` with a reason) or unpin (None) one backup in the target's pins.json.
    Returns whether the file changed (False: it already said so)."""
    name = pin_key(key, backup_id)
    pins = read_pins(target, log)
    if entry is None:
        if name not in pins:
            return False
        del pins[name]
    else:
        if not isinstance(entry.get("reason"), str) or not entry["reason"].strip():
            raise ValueError("a pin needs a reason")
        current = pins.get(name)
        if current is not None and current.get("reason") == entry["reason"]:
            return False
        pins[name] = {**entry, "at": format_time(now)}
    body = {"format": PINS_FORMAT, "version": PINS_VERSION, "pins": dict(sorted(pins.items()))}
    target.write_file(PINS_REL, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode(), log)
    return True
