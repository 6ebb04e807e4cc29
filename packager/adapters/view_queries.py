"""Adapter: the views' queries that are not a view of their own: statistics per day, and what the fair
limits count. Each is a grouping or a count over indexed tables the projector writes (`viewdb`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packager.adapters.viewdb import ViewDatabase
from projections import view_schema as schema


@dataclass(frozen=True, slots=True)
class UsageAsked:
    """What the fair limits ask the views about one request: a count is asked only for a limit that is set
    (its most, else 0), and the times of the requester's newest requests only when they may be refused."""

    who: str  # the requester's pseudonym
    resource_id: str
    since: float  # the hour's start
    most_active: int
    most_per_hour: int
    most_for_resource: int
    unseen_at_most: int  # the requester's requests the views may not show yet (what the ingress holds)


@dataclass(frozen=True, slots=True)
class Usage:
    """A requester's and a resource's use of the service as the views know it, and how far they know."""

    active: int  # the requester's jobs queued or running
    resource_active: int  # the resource's jobs queued or running
    requests: int  # the requester's requests in the window
    recent: list[float]  # unix times of the newest of them (up to the hourly most), oldest first
    positions: dict[tuple[str, int], int]  # (topic, partition) -> next offset the views will fold


def daily(
    db: ViewDatabase, conn: Any, *, since: float, resource_id: str | None = None
) -> dict[int, tuple[int, int, int]]:
    """Per UTC day (days since 1970-01-01) from `since` on: (requests, errors, unique requesters); days
    with neither are absent. A grouping of the statistics' rows by their indexed time."""
    day = "CAST(ts / 86400 AS INTEGER)" if db.dialect == schema.SQLITE else "FLOOR(ts / 86400)"
    where = "ts >= ?"
    params: list[object] = [since]
    if resource_id:
        where, params = "resource_id = ? AND ts >= ?", [resource_id, since]
    found: dict[int, tuple[int, int, int]] = {}
    requests = f"SELECT {day} AS d, COUNT(*), COUNT(DISTINCT email) FROM stat_requests WHERE {where}"
    for d, count, unique in conn.execute(db.sql(requests + " GROUP BY d"), params).fetchall():
        found[int(d)] = (int(count), 0, int(unique))
    errors = f"SELECT {day} AS d, COUNT(*) FROM stat_errors WHERE {where}"
    for d, count in conn.execute(db.sql(errors + " GROUP BY d"), params).fetchall():
        count_requests, _, unique = found.get(int(d), (0, 0, 0))
        found[int(d)] = (count_requests, int(count), unique)
    return found


def usage(db: ViewDatabase, conn: Any, asked: UsageAsked) -> Usage:
    """What the fair limits count (`packager.http.limits`), in one snapshot with the views' positions: one
    statement for the counts, and the newest request times only when the hourly limit may be reached."""
    parts: list[tuple[int, str, list[Any]]] = [  # a count no limit needs is a constant 0
        (asked.most_active, "SELECT count(*) FROM active_jobs WHERE who = ?", [asked.who]),
        (
            asked.most_for_resource,
            "SELECT count(*) FROM active_jobs WHERE resource_id = ?",
            [asked.resource_id],
        ),
        (
            asked.most_per_hour,
            "SELECT count(*) FROM stat_requests WHERE email = ? AND ts >= ?",
            [asked.who, asked.since],
        ),
    ]
    counts = db.sql("SELECT " + ", ".join(f"({sql})" if most else "0" for most, sql, _ in parts))
    params = [value for most, _, values in parts if most for value in values]
    newest = db.sql("SELECT ts FROM stat_requests WHERE email = ? AND ts >= ? ORDER BY ts DESC LIMIT ?")
    with db.transaction(conn, write=False):  # one snapshot: a job is not counted twice, or missed
        active, resource_active, requests = (int(n) for n in conn.execute(counts, params).fetchone())
        recent: list[float] = []
        if asked.most_per_hour and requests + asked.unseen_at_most >= asked.most_per_hour:
            rows = conn.execute(newest, (asked.who, asked.since, asked.most_per_hour)).fetchall()
            recent = sorted(float(row[0]) for row in rows)
        return Usage(active, resource_active, requests, recent, db.positions(conn))
