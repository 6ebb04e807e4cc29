"""Adapter: the database holding the read side's views, SQLite (embedded default) or PostgreSQL.

`ViewDatabase` is the project's one SQL layer: it opens DB-API connections (stdlib `sqlite3`, or psycopg 3's
synchronous driver), creates the tables of `projections.view_schema`, applies a batch of records in ONE
transaction together with the positions it consumed (the tracking records), and runs the ingress's reads.
Both databases get the same statements; the differences (parameter marks, `IN` lists, locking) are
handled here. Everything is synchronous and runs in a thread (`asyncio.to_thread`, or the reader pool of
`packager.adapters.viewreads`): a batch is CPU-bound Python plus one commit, so an async driver would buy
nothing but a second code path.

Exactly once: a batch's rows and its positions commit together, and the positions are read again inside
the transaction (under an exclusive write lock: SQLite's `BEGIN IMMEDIATE`, a PostgreSQL advisory lock),
so records already applied, by this projector before a crash or by another one, are dropped, never folded
twice; a crash before the commit loses rows and positions together, and they are read again. Positions
found lower than the projector last saw (views dropped by another, rebuilding) stop it: `ViewsRewound`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from packager.adapters import stat_resets, worker_views
from packager.adapters.view_apply import Decoded, apply_beside, check_not_rewound, pick
from packager.core.errors import ConfigurationError
from packager.core.logs import redacted_url as redacted
from packager.core.settings import Settings
from packager.domain.requesters import key_id_of
from projections import view_schema as schema
from projections.jobs import JobState
from projections.statistics import ALL
from projections.view_fold import Changes, Identity, Known, fold, job_from_row, job_row, needs, requester_of
from projections.worker_fold import WorkerParameters

_CHUNK = 10_000  # SQLite allows 32,766 parameters per statement
_PAGE = 5000  # rows per page when a whole table is read
_AUTOCHECKPOINT_PAGES = 25_000  # 100 MB of WAL
_LOCK_KEY = 0x636B616E  # PostgreSQL advisory lock serialising projectors that share a database
_JOB_NAMES = schema.JOBS.column_names


def views_path(settings: Settings) -> Path:
    """Where the embedded SQLite views live: next to where the ingress kept its read-model snapshot."""
    base = Path(settings.read_model_directory or Path(settings.store_directory) / ".readmodel")
    return base / f"{settings.topic_prefix}.views.sqlite3"


def worker_parameters(settings: Settings) -> WorkerParameters:
    """The settings the worker's views are folded with: the worker's CACHE_TIME and LEASE_TIME."""
    return WorkerParameters(cache_time=settings.cache_time, lease_time=settings.lease_time)


def database_url(settings: Settings) -> str:
    """The views' database: DATABASE_URL, or the embedded SQLite file of `views_path`."""
    return settings.database_url or f"sqlite:///{views_path(settings)}"


class ViewsUnavailable(Exception):
    """The views cannot be read: no database yet, no tables yet, or the server does not answer."""


class ViewDatabase:
    """Connections to one views database and the statements run on them; `params`: the settings the
    worker's views are folded with (`worker_parameters`)."""

    def __init__(self, url: str, params: WorkerParameters | None = None) -> None:
        self.url = url
        self.params = params or WorkerParameters()
        if url.startswith("sqlite:///"):
            self.dialect = schema.SQLITE
            self.path = Path(url.removeprefix("sqlite:///"))
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = schema.POSTGRES
            self.path = None  # type: ignore[assignment]
        else:
            raise ConfigurationError(
                f"Unsupported views database {url!r} (sqlite:///... or postgresql://...)"
            )
        self.mark = "?" if self.dialect == schema.SQLITE else "%s"

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The driver's exceptions: the database failed, as opposed to a bug in the caller."""
        if self.dialect == schema.SQLITE:
            return (sqlite3.Error,)
        import psycopg

        return (psycopg.Error,)

    def __repr__(self) -> str:
        return f"ViewDatabase({redacted(self.url)!r})"

    # --- connections -------------------------------------------------------------------------------------

    def connect(self, *, create: bool = False) -> Any:
        """A new connection in autocommit mode (transactions are explicit); `create` makes the tables."""
        try:
            conn: Any
            if self.dialect == schema.SQLITE:
                conn = self._connect_sqlite(create)
            else:
                import psycopg

                conn = psycopg.connect(self.url, autocommit=True)
        except Exception as exc:
            raise ViewsUnavailable(f"cannot open the views database: {type(exc).__name__}: {exc}") from None
        if create:  # under the write lock: never beside a projector dropping and creating them (`reset`)
            with self.transaction(conn, write=True):
                self.create_tables(conn)
        return conn

    def create_tables(self, conn: Any) -> None:
        """The tables, and the `meta` rows of a new database, where missing."""
        for statement in schema.ddl(self.dialect):
            conn.execute(statement)
        params = worker_views.parameters_text(self.params)
        for row in (("schema_version", schema.SCHEMA_VERSION), (schema.WORKER_FOLD, params)):
            conn.execute(self.sql("INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO NOTHING"), row)

    def _connect_sqlite(self, create: bool) -> sqlite3.Connection:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # The projector's connection: 64 MB of page cache for inserts at random places of large indexes
            # (readers keep the 2 MB default, so an ingress's memory does not grow with the views).
            conn.execute("PRAGMA cache_size=-65536")
            # Checkpoints (copying the WAL into the file, with an fsync) were half the time of a commit: the
            # projector runs them beside the writer (`checkpoint`); this bound is only a fallback.
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        else:  # a reader never creates the file: no file means no views yet
            uri = f"file:{self.path}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        # NORMAL in WAL mode: a crash of the process loses nothing committed; a power cut may lose the last
        # transactions, rows and positions together, and they are folded again.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def reset(self, for_log: str | None = None) -> bool:
        """Drop and create every table: an empty database for a rebuild; True when dropped. With `for_log` (a
        log identity's `meta` text), not when the views already are that log's at this schema version, checked
        in the same write transaction, which records the log: shares finding the views of another log at the
        same moment drop them only once, not each after the others folded again (`ViewsRewound`: wasted)."""
        conn = self.connect(create=False) if self._exists() else self.connect(create=True)
        try:
            with self.transaction(conn, write=True):
                if for_log is not None:
                    held = (self.meta(conn, schema.LOG_IDENTITY), self.meta(conn, "schema_version"))
                    if held == (for_log, schema.SCHEMA_VERSION):
                        return False
                for statement in schema.drop(self.dialect):
                    conn.execute(statement)
                self.create_tables(conn)
                if for_log is not None:
                    self._put_meta(conn, schema.LOG_IDENTITY, for_log)
            if self.dialect == schema.SQLITE:
                # Dropped rows stay in SQLite's free pages until a VACUUM: views of an older version may
                # have held addresses (docs/privacy.md, "Upgrading a log written before").
                conn.execute("VACUUM")
            return True
        finally:
            conn.close()

    def checkpoint(self, conn: Any) -> None:
        """Copy the WAL into the SQLite file without blocking the writer (nothing to do on PostgreSQL)."""
        if self.dialect == schema.SQLITE:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _exists(self) -> bool:
        return self.dialect != schema.SQLITE or self.path.exists()

    def sql(self, text: str) -> str:
        """The statement with this database's parameter marks (written with `?`)."""
        return text if self.mark == "?" else text.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self, conn: Any, *, write: bool) -> Iterator[None]:
        """One transaction; a writing one holds the database's write lock from its start."""
        if self.dialect == schema.SQLITE:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        else:
            conn.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if write:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- writing -----------------------------------------------------------------------------------------

    def apply(
        self,
        conn: Any,
        records: Sequence[Decoded],
        identity: Identity,
        *,
        until: str = "",
        expected: dict[tuple[str, int], int] | None = None,
        beside: bool = False,
    ) -> int:
        """Fold `records` in and store their positions, in one transaction; return the events folded.

        Records before a partition's stored position were applied already and are skipped; undecodable
        ones (None) and, with `until`, events that occurred after it only advance the position (`pick`).
        `expected`: the positions the caller last saw in the views, raised to the new ones on commit; a
        partition whose stored position is below it raises ViewsRewound (folding on from the caller's
        place would leave a gap), and nothing is written. `beside`: fold outside the write lock, beside
        projectors of other shares (`view_apply.apply_beside`).
        """
        if beside:
            return apply_beside(self, conn, records, identity, until=until, expected=expected)
        with self.transaction(conn, write=True):
            stored = self.positions(conn)
            advanced, events, parts = pick(records, stored, until)
            check_not_rewound(advanced, stored, expected)
            if not advanced:
                return 0
            requesters = [requester_of(e, identity) for e in events]
            known = self.known(conn, needs(events, requesters, parts))
            changes = fold(events, requesters, known, parts, self.params)
            self.write(conn, changes, advanced)
        if expected is not None:
            expected.update(advanced)
        return changes.folded

    def known(self, conn: Any, wanted: Any) -> Known:
        """The rows of the views a batch depends on (`view_fold.needs`)."""
        known = Known()
        columns = ", ".join(_JOB_NAMES)
        for row in self.where_in(conn, f"SELECT {columns} FROM jobs", "job_id", wanted.job_ids):
            job = job_from_row(row)
            known.jobs[job.job_id] = job
        for (job_id,) in self.where_in(
            conn, "SELECT job_id FROM stat_errors", "job_id", wanted.failed_job_ids
        ):
            known.failed_job_ids.add(job_id)
        for (who,) in self.where_in(conn, "SELECT who FROM requesters", "who", wanted.requesters):
            known.requesters.add(who)
        sql = "SELECT who, resource_id FROM requester_resources"
        whos = {who for who, _ in wanted.pairs}
        known.pairs.update(
            (who, res) for who, res in self.where_in(conn, sql, "who", whos) if (who, res) in wanted.pairs
        )
        known.worker = worker_views.load(self, conn, wanted.worker)
        known.cuts = stat_resets.cuts(conn)
        return known

    def where_in(self, conn: Any, select: str, column: str, values: set[str]) -> Iterator[Sequence[Any]]:
        """The rows of `select` whose `column` is one of `values` (in chunks on SQLite)."""
        if not values:
            return
        if self.dialect == schema.POSTGRES:
            yield from conn.execute(f"{select} WHERE {column} = ANY(%s)", (list(values),))
            return
        items = list(values)
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            yield from conn.execute(f"{select} WHERE {column} IN ({','.join('?' * len(chunk))})", chunk)

    def _many(self, conn: Any) -> Any:
        return conn.executemany if self.dialect == schema.SQLITE else conn.cursor().executemany

    def write(self, conn: Any, changes: Changes, advanced: dict[tuple[str, int], int]) -> None:
        """Write a batch's changes and the positions it advanced to (inside the caller's transaction)."""
        many = self._many(conn)
        if changes.jobs:
            marks = ", ".join("?" * len(_JOB_NAMES))
            updates = ", ".join(f"{c} = excluded.{c}" for c in _JOB_NAMES[1:])
            many(
                self.sql(
                    f"INSERT INTO jobs ({', '.join(_JOB_NAMES)}) VALUES ({marks}) "
                    f"ON CONFLICT (job_id) DO UPDATE SET {updates}"
                ),
                [job_row(job) for job in changes.jobs.values()],
            )
        if changes.details:
            many(
                self.sql("INSERT INTO job_requests VALUES (?, ?) ON CONFLICT (job_id) DO NOTHING"),
                changes.details,
            )
        if changes.requests:
            many(self.sql("INSERT INTO stat_requests VALUES (?, ?, ?, ?, ?, ?)"), changes.requests)
        if changes.errors:
            many(self.sql("INSERT INTO stat_errors VALUES (?, ?, ?, ?, ?)"), changes.errors)
        if changes.requesters:
            many(self.sql("INSERT INTO requesters VALUES (?)"), [(w,) for w in changes.requesters])
        if changes.pairs:
            many(self.sql("INSERT INTO requester_resources VALUES (?, ?)"), changes.pairs)
        if changes.totals:
            many(
                self.sql(
                    "INSERT INTO stat_totals VALUES (?, ?, ?, ?) ON CONFLICT (resource_id) DO UPDATE SET "
                    "requests = stat_totals.requests + excluded.requests, "
                    "errors = stat_totals.errors + excluded.errors, "
                    "emails = stat_totals.emails + excluded.emails"
                ),
                [(res, *deltas) for res, deltas in changes.totals.items()],
            )
        for which, cut in changes.resets.items():
            stat_resets.record(self, conn, which, cut)
        if changes.erased:
            many(
                self.sql("INSERT INTO erased_keys VALUES (?) ON CONFLICT (key_id) DO NOTHING"),
                [(w,) for w in sorted(changes.erased)],
            )
        counters = [(n, v) for n, v in (("accepted", changes.accepted), ("finished", changes.finished)) if v]
        if counters:
            many(
                self.sql(
                    "INSERT INTO counters VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
                ),
                counters,
            )
        if changes.active:
            ended = [(job_id,) for job_id, row in changes.active.items() if row is None]
            if ended:
                many(self.sql("DELETE FROM active_jobs WHERE job_id = ?"), ended)
            started = [(job_id, *row) for job_id, row in changes.active.items() if row is not None]
            if started:
                many(
                    self.sql("INSERT INTO active_jobs VALUES (?, ?, ?) ON CONFLICT (job_id) DO NOTHING"),
                    started,
                )
        if changes.zips:
            many(
                self.sql("INSERT INTO built_zips VALUES (?) ON CONFLICT (zip_file_name) DO NOTHING"),
                [(z,) for z in sorted(changes.zips)],
            )
        worker_views.write(self, conn, many, changes.worker)
        many(
            self.sql(
                "INSERT INTO positions VALUES (?, ?, ?) "
                "ON CONFLICT (topic, part) DO UPDATE SET next_offset = excluded.next_offset"
            ),
            [(topic, partition, offset) for (topic, partition), offset in advanced.items()],
        )

    def update_worker_parameters(self, conn: Any) -> bool:
        """Bring the worker's views to this database's `params` when they were folded with others (CACHE_TIME
        or LEASE_TIME changed): expiries and lease deadlines recomputed, in one transaction. True if so."""
        with self.transaction(conn, write=True):
            saved = self.meta(conn, schema.WORKER_FOLD)
            if worker_views.parameters_of(saved) == self.params:
                return False
            worker_views.refold(self, conn, self._many(conn), self.params)
            self._put_meta(conn, schema.WORKER_FOLD, worker_views.parameters_text(self.params))
        return True

    def set_meta(self, conn: Any, name: str, value: str) -> None:
        """Write one row of `meta` (the log identity, the projector's status) in its own transaction."""
        with self.transaction(conn, write=True):
            self._put_meta(conn, name, value)

    def _put_meta(self, conn: Any, name: str, value: str) -> None:
        sql = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        conn.execute(self.sql(sql), (name, value))

    # --- reading -----------------------------------------------------------------------------------------

    def meta(self, conn: Any, name: str) -> str | None:
        """One row of `meta`, or None."""
        row = conn.execute(self.sql("SELECT value FROM meta WHERE name = ?"), (name,)).fetchone()
        return None if row is None else str(row[0])

    def positions(self, conn: Any) -> dict[tuple[str, int], int]:
        """The tracking records: (topic, partition) -> next offset to fold."""
        return {(t, p): o for t, p, o in conn.execute("SELECT topic, part, next_offset FROM positions")}

    def worker_parameters(self, conn: Any) -> WorkerParameters | None:
        """The settings the worker's views were folded with (None: views that do not say)."""
        return worker_views.parameters_of(self.meta(conn, schema.WORKER_FOLD))

    def worker_counts(self, conn: Any) -> dict[str, int]:
        """Entries of the cache index, builds in flight, and their waiters."""
        return worker_views.counts(conn)

    def job(self, conn: Any, job_id: str) -> JobState | None:
        """One job's state, or None."""
        sql = self.sql(f"SELECT {', '.join(_JOB_NAMES)} FROM jobs WHERE job_id = ?")
        row = conn.execute(sql, (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def job_request(self, conn: Any, job_id: str) -> dict[str, Any] | None:
        """What the job asked for (`view_fold.request_details`), or None (a job folded before the views
        kept it, or none of that id)."""
        sql = self.sql("SELECT details FROM job_requests WHERE job_id = ?")
        row = conn.execute(sql, (job_id,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def counters(self, conn: Any) -> tuple[int, int]:
        """(accepted, finished) jobs."""
        found = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        return int(found.get("accepted", 0)), int(found.get("finished", 0))

    def totals(self, conn: Any, resource_id: str | None = None) -> dict[str, dict[str, int]]:
        """`/statistics`: every resource and `*`, or only the one asked for (zeros when unknown)."""
        sql = "SELECT resource_id, requests, errors, emails FROM stat_totals"  # reset columns are recounted
        if resource_id:
            rows = conn.execute(self.sql(sql + " WHERE resource_id = ?"), (resource_id,)).fetchall()
            found = {r[0]: {"requests": r[1], "errors": r[2], "emails": r[3]} for r in rows}
            return {resource_id: found.get(resource_id, {"requests": 0, "errors": 0, "emails": 0})}
        rows = conn.execute(sql + " ORDER BY resource_id").fetchall()
        result = {r[0]: {"requests": r[1], "errors": r[2], "emails": r[3]} for r in rows}
        result.setdefault(ALL, {"requests": 0, "errors": 0, "emails": 0})
        return result

    def listing(
        self,
        conn: Any,
        kind: str,
        *,
        offset: int = 0,
        limit: int = 100,
        resource_id: str | None = None,
        email: str | None = None,
        sealed: bool = False,
    ) -> list[dict[str, Any]]:
        """`/statistics/requests` or `/statistics/errors`: filtered, newest first, paged.

        `email` is a pseudonym; with `sealed`, each entry also has the request's sealed address (`sealed`).
        """
        if kind == "requests":
            select = "SELECT x.domain, x.email, x.resource_id, x.ts, x.sealed FROM stat_requests x"
        else:
            select = (
                "SELECT x.email, x.message, x.resource_id, x.ts, COALESCE(r.sealed, '') FROM stat_errors x "
                "LEFT JOIN stat_requests r ON r.job_id = x.job_id"
            )
        where = ["x.ts > ?"]
        params: list[object] = [stat_resets.cuts(conn).get(kind, -1.0)]
        if resource_id:
            where.append("x.resource_id = ?")
            params.append(resource_id)
        if email:
            where.append("x.email = ?")
            params.append(email)
        sql = f"{select} WHERE {' AND '.join(where)} ORDER BY x.ts DESC, x.job_id DESC LIMIT ? OFFSET ?"
        rows = conn.execute(self.sql(sql), (*params, limit, offset)).fetchall()
        if kind == "requests":
            found = [
                {"count": 1, "domain": d, "email": e, "resource_id": r, "timestamp": t, "sealed": s}
                for d, e, r, t, s in rows
            ]
        else:
            found = [
                {"email": e, "message": m, "resource_id": r, "timestamp": t, "sealed": s}
                for e, m, r, t, s in rows
            ]
        if not sealed:
            for entry in found:
                del entry["sealed"]
        return found

    def requester(self, conn: Any, job_id: str) -> tuple[str, str, bool] | None:
        """(pseudonym, domain, erased) of a job's requester, or None for a job not (yet) requested.

        Erased: the data key its address was sealed under was destroyed.
        """
        sql = self.sql("SELECT email, domain, sealed FROM stat_requests WHERE job_id = ?")
        row = conn.execute(sql, (job_id,)).fetchone()
        if row is None:
            return None
        key_id = key_id_of(str(row[2]))
        erased = self.sql("SELECT 1 FROM erased_keys WHERE key_id = ?")
        destroyed = bool(key_id) and conn.execute(erased, (key_id,)).fetchone() is not None
        return str(row[0]), str(row[1]), destroyed

    def zip_was_built(self, conn: Any, name: str) -> bool:
        """True when a job completed with a ZIP of this name."""
        sql = self.sql("SELECT 1 FROM built_zips WHERE zip_file_name = ?")
        return conn.execute(sql, (name,)).fetchone() is not None

    def rows(self, conn: Any, table: schema.Table) -> Iterator[tuple[Any, ...]]:
        """Every row of a table, in key order (for comparisons), a page at a time: memory stays flat
        however large the table (keyset paging, so no server-side cursor is needed)."""
        columns, key = ", ".join(table.column_names), ", ".join(table.key)
        first = f"SELECT {columns} FROM {table.name} ORDER BY {key} LIMIT {_PAGE}"
        marks = ", ".join("?" * len(table.key))
        after = self.sql(
            f"SELECT {columns} FROM {table.name} WHERE ({key}) > ({marks}) ORDER BY {key} LIMIT {_PAGE}"
        )
        page = conn.execute(first).fetchall()
        width = len(table.key)
        while page:
            yield from (tuple(row) for row in page)
            if len(page) < _PAGE:
                return
            page = conn.execute(after, tuple(page[-1][:width])).fetchall()
