"""Fold of the log into the original service's statistics: totals per resource, requests and errors.

Totals have one entry per resource id and `*` for all: `requests`, `errors` and `emails` (unique requesters;
a requester counts once overall and once per resource, errors do not add requesters), as the original
counted them. With `ANONYMIZE_EMAILS` the identity kept is a keyed hash (HMAC under a key derived from the
shared secret) and the domain, never the address.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from packager.domain.events import Envelope, PackageFailed, PackageRequested

Identity = Callable[[str], str]

ALL = "*"


def unix_time(iso: str) -> float:
    """An ISO 8601 timestamp of the log as a UNIX timestamp (what the original API returned)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def email_domain(email: str) -> str:
    """The part after the first `@`, lower-cased."""
    return email.split("@", 1)[1].lower() if "@" in email else ""


@dataclass
class Statistics:
    """What `/statistics*` answer from."""

    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)  # oldest first (time, then job id)
    errors: list[dict[str, Any]] = field(default_factory=list)  # oldest first (time, then job id)
    identities: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    counted_jobs: set[str] = field(default_factory=set)
    failed_jobs: set[str] = field(default_factory=set)

    def _total(self, resource_id: str) -> dict[str, int]:
        return self.totals.setdefault(resource_id, {"requests": 0, "errors": 0, "emails": 0})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for snapshots and comparisons)."""
        return {
            "totals": self.totals,
            "requests": self.requests,
            "errors": self.errors,
            "identities": sorted(self.identities),
            "pairs": sorted([list(p) for p in self.pairs]),
            "counted_jobs": sorted(self.counted_jobs),
            "failed_jobs": sorted(self.failed_jobs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Statistics:
        """Inverse of `to_dict`."""
        return cls(
            totals=data["totals"],
            requests=data["requests"],
            errors=data["errors"],
            identities=set(data["identities"]),
            pairs={(a, b) for a, b in data["pairs"]},
            counted_jobs=set(data["counted_jobs"]),
            failed_jobs=set(data["failed_jobs"]),
        )


def apply(stats: Statistics, event: Envelope, identity: Identity) -> Statistics:
    """Fold one event in (mutating and returning `stats`). Replayed events of a job count once.

    All or nothing: everything that can raise (the identity, the timestamp) is computed before `stats`
    changes, so a failing event leaves it as it was.
    """
    p = event.payload
    if isinstance(p, PackageRequested):
        if event.job_id in stats.counted_jobs:
            return stats
        who = identity(p.email)
        entry = {
            "count": 1,
            "domain": email_domain(p.email),
            "email": who,
            "resource_id": p.resource_id,
            "timestamp": unix_time(event.occurred_at),
            "job_id": event.job_id,
        }
        stats.counted_jobs.add(event.job_id)
        stats._total(p.resource_id)["requests"] += 1
        stats._total(ALL)["requests"] += 1
        if who not in stats.identities:
            stats.identities.add(who)
            stats._total(ALL)["emails"] += 1
        if (who, p.resource_id) not in stats.pairs:
            stats.pairs.add((who, p.resource_id))
            stats._total(p.resource_id)["emails"] += 1
        _insert(stats.requests, entry)
    elif isinstance(p, PackageFailed):
        if event.job_id in stats.failed_jobs:
            return stats
        entry = {
            "email": identity(p.email),
            "message": p.error,
            "resource_id": p.resource_id,
            "timestamp": unix_time(event.occurred_at),
            "job_id": event.job_id,
        }
        stats.failed_jobs.add(event.job_id)
        stats._total(p.resource_id)["errors"] += 1
        stats._total(ALL)["errors"] += 1
        _insert(stats.errors, entry)
    return stats


def _order(entry: dict[str, Any]) -> tuple[float, str]:
    return entry["timestamp"], entry["job_id"]


def _insert(entries: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Keep entries in (time, job id) order, so the result never depends on which topic was read first."""
    bisect.insort(entries, entry, key=_order)


def totals(stats: Statistics, resource_id: str | None = None) -> dict[str, dict[str, int]]:
    """`/statistics`: every resource and `*`, or only the one asked for."""
    empty = {"requests": 0, "errors": 0, "emails": 0}
    if resource_id:
        return {resource_id: dict(stats.totals.get(resource_id, empty))}
    result = {k: dict(v) for k, v in stats.totals.items()}
    result.setdefault(ALL, dict(empty))
    return result


def newest_first(
    entries: list[dict[str, Any]],
    *,
    offset: int = 0,
    limit: int = 100,
    resource_id: str | None = None,
    email: str | None = None,
) -> list[dict[str, Any]]:
    """`/statistics/requests` and `/statistics/errors`: filtered, newest first, paged."""
    selected = (
        e
        for e in reversed(entries)  # kept oldest first, in (time, job id) order
        if (not resource_id or e["resource_id"] == resource_id) and (not email or e["email"] == email)
    )
    page = itertools.islice(selected, offset, offset + limit)
    return [{k: v for k, v in e.items() if k != "job_id"} for e in page]
