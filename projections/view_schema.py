"""The read side's SQL views: their tables, columns and keys, and the DDL for SQLite and PostgreSQL.

One description serves three readers: the projector creates the tables from it, the ingress reads them, and
`packager replay verify` compares every table of it, row by row, in key order. Column types are abstract
(`text`, `int`, `float`) and rendered per dialect; every text column uses the C collation on PostgreSQL,
so both databases sort keys (job ids) the way Python does and two views can be merged in key order.
"""

from __future__ import annotations

from dataclasses import dataclass

# 2: requesters are always pseudonyms; sealed addresses; erased keys. 3: the worker's views (cache index,
# builds in flight, waiting requests) and `active_jobs`, which views of version 2 lack for the events they
# already folded.
SCHEMA_VERSION = "3"

SQLITE, POSTGRES = "sqlite", "postgres"


@dataclass(frozen=True, slots=True)
class Table:
    """One view table: its name, (column, type) pairs, and the columns of its primary key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    # (index name, columns): what keeps the ingress's queries fast at millions of rows.
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """The columns in declaration order."""
        return tuple(name for name, _ in self.columns)


# The fields of `projections.jobs.JobState`, in its order (`emailed` as 0/1).
JOB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "text"),
    ("state", "text"),
    ("kind", "text"),
    ("resource_id", "text"),
    ("lane", "text"),
    ("attempt", "int"),
    ("rows_done", "int"),
    ("rows_total", "int?"),
    ("bytes_done", "int"),
    ("bytes_total", "int?"),
    ("zip_file_name", "text"),
    ("size", "int?"),
    ("error", "text"),
    ("emailed", "int"),
    ("email_error", "text"),
    ("requested_at", "text"),
    ("started_at", "text"),
    ("finished_at", "text"),
    ("updated_at", "text"),
)

# What each job asked for (its format, the query's filters, text search, columns, sort and range, the file
# name of a URL), as JSON written once when the request is folded: what the job's page says in words.
# No address, no key, no portal URL: only what the requester chose.
JOB_REQUESTS = Table("job_requests", (("job_id", "text"), ("details", "text")), ("job_id",))
META = Table("meta", (("name", "text"), ("value", "text")), ("name",))
# Tracking records: the next offset to read of every topic partition folded in, written in the same
# transaction as the rows it produced.
POSITIONS = Table(
    "positions", (("topic", "text"), ("part", "int"), ("next_offset", "int")), ("topic", "part")
)
JOBS = Table(
    "jobs",
    JOB_COLUMNS,
    ("job_id",),
    # Per-resource history (the `resource_history` view below) reads jobs by resource, oldest first.
    (("jobs_by_resource", ("resource_id", "requested_at")),),
)
# `/statistics/requests` and `/statistics/errors` list newest first, optionally by resource or requester.
STAT_REQUESTS = Table(
    "stat_requests",
    # `email` is the requester's pseudonym; `sealed` the address sealed under their data key ("" for requests
    # logged before crypto-shredding), opened by the ingress only when ANONYMIZE_EMAILS is off.
    (
        ("job_id", "text"),
        ("ts", "float"),
        ("email", "text"),
        ("domain", "text"),
        ("resource_id", "text"),
        ("sealed", "text"),
    ),
    ("job_id",),
    (
        ("stat_requests_by_time", ("ts", "job_id")),
        ("stat_requests_by_resource", ("resource_id", "ts", "job_id")),
        ("stat_requests_by_email", ("email", "ts", "job_id")),
    ),
)
STAT_ERRORS = Table(
    "stat_errors",
    (("job_id", "text"), ("ts", "float"), ("email", "text"), ("message", "text"), ("resource_id", "text")),
    ("job_id",),
    (
        ("stat_errors_by_time", ("ts", "job_id")),
        ("stat_errors_by_resource", ("resource_id", "ts", "job_id")),
        ("stat_errors_by_email", ("email", "ts", "job_id")),
    ),
)
# Totals per resource id and `*`: requests, errors, unique requesters.
STAT_TOTALS = Table(
    "stat_totals",
    (("resource_id", "text"), ("requests", "int"), ("errors", "int"), ("emails", "int")),
    ("resource_id",),
)
# Who has asked at all, and for which resource: what makes `emails` count each requester once.
REQUESTERS = Table("requesters", (("who", "text"),), ("who",))
REQUESTER_RESOURCES = Table(
    "requester_resources", (("who", "text"), ("resource_id", "text")), ("who", "resource_id")
)
# Data keys destroyed by erasures (`RequesterErased`): the pages of jobs whose address was sealed under one
# say their requester was erased (a later request of the same person, under a new key, is not).
ERASED_KEYS = Table("erased_keys", (("key_id", "text"),), ("key_id",))
# Jobs queued or running, with their requester's pseudonym and resource: what the ingress's fair limits
# count (docs/http-api.md#limits). A row leaves when its job ends, so the table stays small.
ACTIVE_JOBS = Table(
    "active_jobs",
    (("job_id", "text"), ("who", "text"), ("resource_id", "text")),
    ("job_id",),
    (("active_jobs_by_who", ("who",)), ("active_jobs_by_resource", ("resource_id",))),
)

# The latest reset of the `requests` and `errors` statistics (`StatisticsReset`): the unix time of the cut.
# Entries at or before it stay in their tables (and in the log) but are no longer listed or counted.
STAT_RESETS = Table("stat_resets", (("which", "text"), ("cut", "float")), ("which",))
# `accepted` and `finished` jobs: `/status` answers queue_length = accepted - finished.
COUNTERS = Table("counters", (("name", "text"), ("value", "int")), ("name",))
# Every ZIP name a job completed with: a download gone but once built answers 410, not 404.
BUILT_ZIPS = Table("built_zips", (("zip_file_name", "text"),), ("zip_file_name",))

# The worker's own state as the log tells it, on event time (`projections.worker_fold` says how each
# mirrors the steward's Faust table): the package serving hits per cache key, and when it stops serving them.
CACHE_INDEX = Table(
    "cache_index",
    (
        ("cache_key", "text"),
        ("job_id", "text"),
        ("zip_file_name", "text"),
        ("size", "int"),
        ("sha256", "text"),
        ("rows", "int?"),
        ("completed_at", "text"),
        ("expires_at", "text"),
        ("part", "int"),
    ),
    ("cache_key",),
    # A CacheCleared empties one events partition's entries.
    (("cache_index_by_part", ("part", "cache_key")),),
)
# The build under way per cache key and its lease (`streams.leases`).
INFLIGHT_BUILDS = Table(
    "inflight_builds",
    (
        ("cache_key", "text"),
        ("job_id", "text"),
        ("lane", "text"),
        ("attempt", "int"),
        ("state", "text"),
        ("worker", "text"),
        ("queued_at", "text"),
        ("started_at", "text"),
        ("lease_carried", "text"),
        ("heartbeat_at", "text"),
        ("lease_until", "text"),
        ("lost", "int"),
    ),
    ("cache_key",),
)
# Requests not yet planned, built or ended; with a build of their key in flight, they are its waiters.
WAITING_REQUESTS = Table(
    "waiting_requests",
    (("job_id", "text"), ("cache_key", "text"), ("requested_at", "text")),
    ("job_id",),
    (("waiting_requests_by_key", ("cache_key", "requested_at")),),
)
WORKER_TABLES = (CACHE_INDEX, INFLIGHT_BUILDS, WAITING_REQUESTS)

TABLES: tuple[Table, ...] = (
    META,
    POSITIONS,
    JOBS,
    JOB_REQUESTS,
    STAT_REQUESTS,
    STAT_ERRORS,
    STAT_TOTALS,
    REQUESTERS,
    REQUESTER_RESOURCES,
    ERASED_KEYS,
    COUNTERS,
    BUILT_ZIPS,
    *WORKER_TABLES,
    ACTIVE_JOBS,
    STAT_RESETS,
)
# What `replay verify` compares row by row: every table but the tracking records (checked on their own) and
# `meta`, which describes the views (schema version, the log they were built from, the projector's status)
# rather than holding a fold's result.
COMPARED: tuple[Table, ...] = tuple(t for t in TABLES if t not in (POSITIONS, META))
# Rows of `meta`: the log the views were built from (`kafka_log.LogIdentity.to_dict()` as JSON), and what
# went wrong in the projector that writes them ("" when nothing did), which the ingress's readiness reports.
LOG_IDENTITY, PROJECTOR_STATUS = "log_identity", "projector_status"
# The settings the worker's views were folded with (`worker_fold.WorkerParameters.to_dict()` as JSON): a
# rebuild to compare with uses the same ones.
WORKER_FOLD = "worker_fold"

# Per-resource history: every job of a resource with its outcome (reads `jobs_by_resource`).
RESOURCE_HISTORY = (
    "CREATE VIEW IF NOT EXISTS resource_history AS SELECT resource_id, requested_at, job_id, kind, state, "
    "lane, size, error, finished_at FROM jobs WHERE requested_at <> ''"
)
# The worker's waiters: requests waiting while an identical build (another job's) is in flight.
WAITERS = (
    "CREATE VIEW IF NOT EXISTS waiters AS SELECT w.cache_key, w.job_id, w.requested_at, b.job_id AS builder "
    "FROM waiting_requests w JOIN inflight_builds b ON b.cache_key = w.cache_key AND b.job_id <> w.job_id"
)
VIEWS = {"resource_history": RESOURCE_HISTORY, "waiters": WAITERS}

_TYPES = {
    SQLITE: {"text": "TEXT NOT NULL", "int": "INTEGER NOT NULL", "int?": "INTEGER", "float": "REAL NOT NULL"},
    POSTGRES: {
        "text": 'TEXT COLLATE "C" NOT NULL',
        "int": "BIGINT NOT NULL",
        "int?": "BIGINT",
        "float": "DOUBLE PRECISION NOT NULL",
    },
}


def ddl(dialect: str) -> list[str]:
    """The statements creating every table, index and view (idempotent: IF NOT EXISTS)."""
    types = _TYPES[dialect]
    statements = []
    for table in TABLES:
        columns = ", ".join(f"{name} {types[kind]}" for name, kind in table.columns)
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {table.name} ({columns}, PRIMARY KEY ({', '.join(table.key)}))"
        )
        for index, on in table.indexes:
            statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {table.name} ({', '.join(on)})")
    for view in VIEWS.values():
        statements.append(
            view.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW")
            if dialect == POSTGRES
            else view
        )
    return statements


def drop(dialect: str) -> list[str]:
    """The statements removing every table and view (to rebuild an audit copy from nothing)."""
    cascade = " CASCADE" if dialect == POSTGRES else ""
    return [f"DROP VIEW IF EXISTS {view}" for view in VIEWS] + [
        f"DROP TABLE IF EXISTS {table.name}{cascade}" for table in TABLES
    ]
