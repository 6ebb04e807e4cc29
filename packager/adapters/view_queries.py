"""Adapter: the views' queries that are not a view of their own: statistics per day, and what the fair
limits count. Each is a grouping or a count over indexed tables the projector writes (`viewdb`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packager.adapters.viewdb import ViewDatabase
from projections import view_schema as schema


@dataclass(frozen=True, slots=True)
class Usage:
    """A requester's and a resource's use of the service as the views know it."""

    active: int  # the requester's jobs queued or running
    resource_active: int  # the resource's jobs queued or running
    recent: list[float]  # unix times of the requester's requests in the window, oldest first
    known: set[str]  # the job ids asked about whose request the views have folded


def daily(
    db: ViewDatabase, conn: Any, *, since: float, resource_id: str | None = None
) -> dict[int, tuple[int, int, int]]:
    """Per UTC day (days since 1970-01-01) from `since` on: (requests, errors, unique requesters); days
    with neither are absent. A grouping of the statistics' rows by their indexed time."""
    day = "CAST(ts / 86400 AS INTEGER)" if db.dialect == schema.SQLITE else "FLOOR(ts / 86400)"
    where, params = "ts >= ?", [since]
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


def usage(db: ViewDatabase, conn: Any, who: str, resource_id: str, since: float, pending: set[str]) -> Usage:
    """What the fair limits count of a requester (pseudonym) and a resource (`packager.http.limits`);
    `known`: those of the `pending` job ids whose request the views have folded."""
    one = db.sql("SELECT count(*) FROM active_jobs WHERE who = ?")
    by_resource = db.sql("SELECT count(*) FROM active_jobs WHERE resource_id = ?")
    recent = db.sql("SELECT ts FROM stat_requests WHERE email = ? AND ts >= ? ORDER BY ts")
    known = "SELECT job_id FROM stat_requests"
    with db.transaction(conn, write=False):  # one snapshot: a job is not counted twice, or missed
        return Usage(
            active=int(conn.execute(one, (who,)).fetchone()[0]),
            resource_active=int(conn.execute(by_resource, (resource_id,)).fetchone()[0]),
            recent=[float(row[0]) for row in conn.execute(recent, (who, since))],
            known={str(row[0]) for row in db.where_in(conn, known, "job_id", pending)},
        )
