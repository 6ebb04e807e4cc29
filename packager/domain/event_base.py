"""The base of every event payload, and the clock events are stamped with (re-exported by `events`)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import ClassVar


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp with milliseconds, e.g. 2026-11-26T14:21:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """Base of every payload type. `TYPE` is the wire name, `VERSION` the current schema version."""

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
