"""Adapter: the SQL of the worker's views (`cache_index`, `inflight_builds`, `waiting_requests`).

`projections.worker_fold` folds events into these rows; this module reads the rows a batch needs, writes
what it changed (inside the batch's transaction, opened by `packager.adapters.viewdb.ViewDatabase.apply`),
brings derived deadlines up to date when CACHE_TIME or LEASE_TIME changed, and counts the rows for status.
It runs the same statements on SQLite and PostgreSQL through the database's `sql` and `where_in`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import orjson

from projections import view_schema as schema
from projections.worker_fold import (
    Build,
    CacheEntry,
    WorkerNeeds,
    WorkerParameters,
    WorkerRows,
    expiry,
    lease_deadline,
)

_CACHE = schema.CACHE_INDEX.column_names
_BUILDS = schema.INFLIGHT_BUILDS.column_names
_WAITING = schema.WAITING_REQUESTS.column_names


class Statements(Protocol):
    """What this module needs of `ViewDatabase`."""

    def sql(self, text: str) -> str: ...

    def where_in(self, conn: Any, select: str, column: str, values: set[str]) -> Iterator[Sequence[Any]]: ...


def load(db: Statements, conn: Any, wanted: WorkerNeeds) -> WorkerRows:
    """The cache entries and builds in flight of the keys a batch touches, and every cache entry of the
    partitions it clears."""
    rows = WorkerRows()
    cache_select = f"SELECT {', '.join(_CACHE)} FROM cache_index"
    for row in db.where_in(conn, cache_select, "cache_key", wanted.cache_keys):
        entry = CacheEntry(*row)
        rows.cache[entry.cache_key] = entry
    for part in sorted(wanted.cleared):
        for row in conn.execute(db.sql(cache_select + " WHERE part = ?"), (part,)).fetchall():
            entry = CacheEntry(*row)
            rows.cache[entry.cache_key] = entry
    rows.stored_cache.update(rows.cache)
    build_select = f"SELECT {', '.join(_BUILDS)} FROM inflight_builds"
    for row in db.where_in(conn, build_select, "cache_key", wanted.cache_keys):
        build = Build(*row)
        rows.inflight[build.cache_key] = build
    rows.stored_inflight.update(rows.inflight)
    return rows


def write(db: Statements, conn: Any, many: Callable[[str, Any], Any], rows: WorkerRows) -> None:
    """Write what a batch changed: rows upserted or deleted by their key."""
    cache = {k: rows.cache.get(k) for k in rows.touched_cache if k in rows.cache or k in rows.stored_cache}
    _upsert_or_delete(db, many, "cache_index", _CACHE, cache)
    builds = {
        k: rows.inflight.get(k)
        for k in rows.touched_inflight
        if k in rows.inflight or k in rows.stored_inflight
    }
    _upsert_or_delete(db, many, "inflight_builds", _BUILDS, builds)
    _upsert_or_delete(db, many, "waiting_requests", _WAITING, dict(rows.waiting))


def _upsert_or_delete(
    db: Statements,
    many: Callable[[str, Any], Any],
    table: str,
    columns: tuple[str, ...],
    rows: dict[str, Any],
) -> None:
    gone = [(key,) for key, row in sorted(rows.items()) if row is None]
    kept = [tuple(row) for _, row in sorted(rows.items()) if row is not None]
    if gone:
        many(db.sql(f"DELETE FROM {table} WHERE {columns[0]} = ?"), gone)
    if kept:
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        marks = ", ".join("?" * len(columns))
        many(
            db.sql(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
                f"ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}"
            ),
            kept,
        )


def parameters_text(params: WorkerParameters) -> str:
    """The parameters as the `meta` row `worker_fold` holds them."""
    return orjson.dumps(params.to_dict(), option=orjson.OPT_SORT_KEYS).decode()


def parameters_of(text: str | None) -> WorkerParameters | None:
    """Inverse of `parameters_text` (None for no row)."""
    if not text:
        return None
    found = orjson.loads(text)
    return WorkerParameters(cache_time=int(found["cache_time"]), lease_time=float(found["lease_time"]))


def refold(db: Statements, conn: Any, many: Callable[[str, Any], Any], params: WorkerParameters) -> int:
    """Recompute every expiry and lease deadline with new parameters (the worker applies its current
    CACHE_TIME and LEASE_TIME to entries it already holds too); return the rows rewritten. Runs inside
    the caller's transaction."""
    entries = [CacheEntry(*r) for r in conn.execute(f"SELECT {', '.join(_CACHE)} FROM cache_index")]
    builds = [Build(*r) for r in conn.execute(f"SELECT {', '.join(_BUILDS)} FROM inflight_builds")]
    expiries = [(expiry(e.completed_at, params), e.cache_key) for e in entries]
    deadlines = [(lease_deadline(b, params), b.cache_key) for b in builds]
    if expiries:
        many(db.sql("UPDATE cache_index SET expires_at = ? WHERE cache_key = ?"), expiries)
    if deadlines:
        many(db.sql("UPDATE inflight_builds SET lease_until = ? WHERE cache_key = ?"), deadlines)
    return len(expiries) + len(deadlines)


def counts(conn: Any) -> dict[str, int]:
    """How many packages the cache index holds, builds are in flight, and requests wait behind one."""
    found = {}
    for name, sql in (
        ("cache_entries", "SELECT COUNT(*) FROM cache_index"),
        ("builds_in_flight", "SELECT COUNT(*) FROM inflight_builds"),
        ("waiters", "SELECT COUNT(*) FROM waiters"),
    ):
        found[name] = int(conn.execute(sql).fetchone()[0])
    return found
