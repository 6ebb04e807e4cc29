"""The worker's views (cache index, builds in flight, waiting requests): the pure fold, then on SQLite.

What the steward keeps in its Faust tables, folded from the log on event time: which package serves hits
and until when, which build holds a key and its lease deadline, which requests wait behind it. Checked
against the worker's rules (`streams.cache`, `streams.leases`, `streams.steward`), and that the result does
not depend on how the two topics were interleaved or batched.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from packager.adapters.readside import identity_for
from packager.adapters.viewdb import ViewDatabase
from packager.core.settings import load_settings
from packager.domain.events import (
    CacheCleared,
    Envelope,
    Event,
    LeaseExpired,
    PackageBuilt,
    PackageExpired,
    PackageFailed,
    PackageProgress,
    PackageQueued,
    PackageReleased,
    PackageRequested,
    PackageStarted,
    envelope,
)
from projections import view_schema
from projections.view_fold import Known, fold, requester_of
from projections.worker_fold import Build, CacheEntry, Waiting, WorkerParameters
from tests.unit.samples import completed

IDENTITY = identity_for(load_settings({}, secret="unit-test-secret-0123456789"))
PARAMS = WorkerParameters(cache_time=3600, lease_time=30.0)


def at(seconds: int) -> str:
    """A time of the log, `seconds` after 10:00."""
    return f"2026-12-01T10:{seconds // 60:02d}:{seconds % 60:02d}.000Z"


def event(job: str, payload: Event, seconds: int) -> Envelope:
    return envelope(job, payload, occurred_at=at(seconds))


def requested(job: str, key: str, seconds: int) -> Envelope:
    payload = PackageRequested("url", key, "res", "a@example.org", "h", {"resource_url": "http://x/f.csv"})
    return event(job, payload, seconds)


def queued(job: str, key: str, seconds: int, attempt: int = 1) -> Envelope:
    return event(job, PackageQueued(cache_key=key, lane="fast", attempt=attempt), seconds)


def started(job: str, key: str, seconds: int, attempt: int = 1, lease_until: str = "") -> Envelope:
    payload = PackageStarted(
        cache_key=key, lane="fast", worker="w1", attempt=attempt, lease_until=lease_until
    )
    return event(job, payload, seconds)


def progress(job: str, key: str, seconds: int, attempt: int = 1) -> Envelope:
    return event(job, PackageProgress(key, 5, 10, 100, None, attempt), seconds)


def done(job: str, key: str, seconds: int, cached_from: str = "") -> Envelope:
    name = f"{cached_from or job}.zip"
    payload = completed(
        cache_key=key, zip_file_name=name, size=7, sha256="ab" * 32, rows=3, cached_from=cached_from
    )
    return event(job, payload, seconds)


def folded(history: list[tuple[int, Envelope]], params: WorkerParameters = PARAMS) -> Any:
    """The worker's rows after folding `history` ((partition, event), in order) from nothing."""
    events = [e for _, e in history]
    requesters = [requester_of(e, IDENTITY) for e in events]
    changes = fold(events, requesters, Known(), [p for p, _ in history], params)
    return changes.worker


def waiting(rows: Any) -> dict[str, Waiting]:
    """The requests left waiting (removals, None, aside)."""
    return {job: row for job, row in rows.waiting.items() if row is not None}


def test_a_build_holds_its_key_and_identical_requests_wait_until_they_end() -> None:
    history = [
        (0, requested("A", "ck", 0)),
        (0, queued("A", "ck", 1)),
        (0, requested("B", "ck", 2)),
        (0, started("A", "ck", 3)),
        (0, progress("A", "ck", 20)),
    ]
    rows = folded(history)
    # The lease as the steward folds it: started at 10:00:03 with no deadline carried (+30 s), moved on by
    # the heartbeat at 10:00:20 (+30 s).
    assert rows.inflight["ck"] == Build(
        "ck", "A", "fast", 1, "building", "w1", at(1), at(3), "", at(20), at(50), 0
    )
    assert waiting(rows) == {"B": Waiting("B", "ck", at(2))}  # A waited for the planner, then was queued
    assert rows.cache == {}

    rows = folded([*history, (0, done("A", "ck", 60))])
    # The build ended: the key is no longer in flight, its package serves hits for CACHE_TIME.
    assert rows.inflight == {}
    assert rows.cache["ck"] == CacheEntry(
        "ck", "A", "A.zip", 7, "ab" * 32, 3, at(60), "2026-12-01T11:01:00.000Z", 0
    )
    assert waiting(rows) == {"B": Waiting("B", "ck", at(2))}  # until its own end, as the worker's waiter

    rows = folded([*history, (0, done("A", "ck", 60)), (0, done("B", "ck", 61, cached_from="A"))])
    assert "B" not in waiting(rows)  # ended: removed
    assert rows.cache["ck"].job_id == "A"  # a package served from the cache does not replace the entry


def test_a_planned_request_does_not_wait_and_a_failed_build_frees_its_key() -> None:
    failure = PackageFailed("ck", "res", "a@example.org", "h", "CKAN said no", "CkanError")
    rows = folded([(0, requested("A", "ck", 0)), (0, queued("A", "ck", 1)), (0, event("A", failure, 5))])
    assert waiting(rows) == {}  # it waited for the planner, then was queued
    assert rows.inflight == {} and rows.cache == {}


def test_the_lease_follows_the_watchdogs_rules() -> None:
    carried = at(40)
    history = [
        (0, requested("A", "ck", 0)),
        (0, queued("A", "ck", 1)),
        (0, started("A", "ck", 2, lease_until=carried)),
    ]
    assert folded(history).inflight["ck"].lease_until == carried  # the deadline PackageStarted carried
    # A LeaseExpired that saw an older deadline than a heartbeat read since does not end the attempt.
    renewed = [*history, (0, progress("A", "ck", 30)), (0, event("A", _expired(1, carried), 41))]
    build = folded(renewed).inflight["ck"]
    assert (build.state, build.lost, build.lease_until) == ("building", 0, at(60))
    # One that saw the current deadline does; the next attempt is queued with the lost build counted.
    lost = [*history, (0, event("A", _expired(1, carried), 41))]
    assert (folded(lost).inflight["ck"].state, folded(lost).inflight["ck"].lost) == ("lost", 1)
    build = folded([*lost, (0, queued("A", "ck", 42, attempt=2))]).inflight["ck"]
    assert (build.attempt, build.state, build.lost, build.lease_until) == (2, "queued", 1, "")
    # A start read again sets the deadline afresh, as the steward's lease does.
    again = [*renewed, (0, started("A", "ck", 35, lease_until=at(45)))]
    assert folded(again).inflight["ck"].lease_until == at(45)
    # A heartbeat of the lost attempt changes nothing.
    late = [*lost, (0, queued("A", "ck", 42, attempt=2)), (0, progress("A", "ck", 43, attempt=1))]
    assert folded(late).inflight["ck"].heartbeat_at == ""


def _expired(attempt: int, lease_until: str) -> LeaseExpired:
    return LeaseExpired(cache_key="ck", attempt=attempt, worker="w1", lease_until=lease_until)


def test_packages_leave_the_index_when_their_builder_expires_them_or_their_partition_is_cleared() -> None:
    built = [
        (0, queued("A", "k0", 0)),
        (0, done("A", "k0", 1)),
        (1, queued("B", "k1", 0)),
        (1, done("B", "k1", 1)),
    ]
    # Only the builder's PackageExpired removes an entry (an older package of the key does not).
    assert set(folded([*built, (0, event("X", PackageExpired("k0", "X.zip"), 5))]).cache) == {"k0", "k1"}
    assert set(folded([*built, (0, event("A", PackageExpired("k0", "A.zip"), 5))]).cache) == {"k1"}
    # A CacheCleared empties the entries of the partition it was read from, as that partition's steward does.
    assert set(folded([*built, (1, event("op", CacheCleared("*", 1), 5))]).cache) == {"k0"}
    assert set(folded([*built, (0, event("op", CacheCleared("*", 1), 5))]).cache) == {"k0", "k1"}


def test_expiry_is_cache_time_after_the_completion_and_at_least_a_second() -> None:
    history = [(0, queued("A", "ck", 0)), (0, done("A", "ck", 10))]
    assert folded(history, WorkerParameters(cache_time=0)).cache["ck"].expires_at == at(11)
    assert folded(history, WorkerParameters(cache_time=50)).cache["ck"].expires_at == at(60)


# --- on SQLite ---------------------------------------------------------------------------------------------

REQUESTS, EVENTS = "p.requests", "p.events"
# Two keys on two partitions: A builds k1 while B waits, C is refused a lease once and built again; D built
# k2 and its package expired; E asked for k2 again later and is still waiting for the planner.
LOG: list[tuple[str, int, Envelope]] = [
    (REQUESTS, 0, requested("A", "k1", 0)),
    (REQUESTS, 0, requested("B", "k1", 2)),
    (REQUESTS, 0, requested("C", "k3", 3)),
    (EVENTS, 0, queued("A", "k1", 1)),
    (EVENTS, 0, started("A", "k1", 3)),
    (EVENTS, 0, queued("C", "k3", 4)),
    (EVENTS, 0, started("C", "k3", 5)),
    (EVENTS, 0, event("C", LeaseExpired("k3", 1, "w1", at(35)), 40)),
    (EVENTS, 0, queued("C", "k3", 41, attempt=2)),
    (EVENTS, 0, progress("A", "k1", 30)),
    (REQUESTS, 1, requested("D", "k2", 0)),
    (EVENTS, 1, queued("D", "k2", 1)),
    (EVENTS, 1, done("D", "k2", 9)),
    (EVENTS, 1, queued("F", "k4", 10)),
    (EVENTS, 1, done("F", "k4", 11)),
    (EVENTS, 1, event("D", PackageExpired("k2", "D.zip"), 50)),
    (REQUESTS, 1, requested("E", "k2", 51)),
]


def views(
    tmp_path: Path, records: list[tuple[str, int, Envelope]], batch: int, params: WorkerParameters = PARAMS
) -> Any:
    """The worker's tables after folding `records` in batches of `batch`, each partition in log order."""
    db = ViewDatabase(f"sqlite:///{tmp_path / f'views-{uuid.uuid4().hex[:6]}.sqlite3'}", params)
    conn = db.connect(create=True)
    offsets: dict[tuple[str, int], int] = {}
    numbered = []
    for topic, part, env in records:
        offset = offsets.get((topic, part), 0)
        offsets[(topic, part)] = offset + 1
        numbered.append((topic, part, offset, env))
    for start in range(0, len(numbered), batch):
        db.apply(conn, numbered[start : start + batch], IDENTITY)
    return db, conn


def interleaved(records: list[tuple[str, int, Envelope]], seed: int) -> list[tuple[str, int, Envelope]]:
    """The records in another order that keeps each partition's own (as a reader of both topics may)."""
    queues: dict[tuple[str, int], list[tuple[str, int, Envelope]]] = {}
    for record in records:
        queues.setdefault(record[:2], []).append(record)
    chooser = random.Random(seed)
    out = []
    while queues:
        where = chooser.choice(sorted(queues))
        out.append(queues[where].pop(0))
        if not queues[where]:
            del queues[where]
    return out


def tables(db: ViewDatabase, conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    found = {t.name: list(db.rows(conn, t)) for t in view_schema.WORKER_TABLES}
    found["waiters"] = conn.execute("SELECT * FROM waiters ORDER BY job_id").fetchall()
    return found


def test_the_tables_hold_what_the_worker_holds(tmp_path: Path) -> None:
    db, conn = views(tmp_path, LOG, batch=len(LOG))
    found = tables(db, conn)
    assert [(r[0], r[1], r[7]) for r in found["cache_index"]] == [("k4", "F", "2026-12-01T11:00:11.000Z")]
    assert [(r[0], r[1], r[3], r[4], r[11]) for r in found["inflight_builds"]] == [
        ("k1", "A", 1, "building", 0),
        ("k3", "C", 2, "queued", 1),
    ]
    assert found["waiting_requests"] == [("B", "k1", at(2)), ("E", "k2", at(51))]
    assert found["waiters"] == [("k1", "B", at(2), "A")]  # E waits for the planner, not behind a build
    assert db.worker_counts(conn) == {"cache_entries": 1, "builds_in_flight": 2, "waiters": 1}


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_the_tables_do_not_depend_on_how_the_topics_were_interleaved_or_batched(
    tmp_path: Path, batch: int
) -> None:
    expected = tables(*views(tmp_path, LOG, batch=len(LOG)))
    # Every events record before any request: each partition keeps its order, the topics do not.
    events_first = [r for r in LOG if r[0] == EVENTS] + [r for r in LOG if r[0] == REQUESTS]
    assert tables(*views(tmp_path, events_first, batch=batch)) == expected
    for seed in range(3):
        assert tables(*views(tmp_path, interleaved(LOG, seed), batch=batch)) == expected
    requests_first = [r for r in LOG if r[0] == REQUESTS] + [r for r in LOG if r[0] == EVENTS]
    assert tables(*views(tmp_path, requests_first, batch=batch)) == expected


def test_views_folded_with_another_cache_time_are_brought_to_the_new_one(tmp_path: Path) -> None:
    db, conn = views(tmp_path, LOG, batch=5)
    longer = WorkerParameters(cache_time=7200, lease_time=10.0)
    moved = ViewDatabase(db.url, longer)
    assert moved.update_worker_parameters(conn) is True
    assert moved.update_worker_parameters(conn) is False  # once
    assert moved.worker_parameters(conn) == longer
    assert tables(moved, conn) == tables(*views(tmp_path, LOG, batch=len(LOG), params=longer))
    assert tables(moved, conn)["cache_index"][0][7] == "2026-12-01T12:00:11.000Z"


@pytest.mark.parametrize("seed", range(20))
def test_builds_in_flight_agree_with_the_stewards_leases(seed: int) -> None:
    """Random lifecycles of one job, folded by `streams.leases.apply` (what the steward keeps) and here."""
    from streams import leases  # the worker's own fold, to compare with (tests may import any layer)

    chooser = random.Random(seed)
    history: list[tuple[int, Envelope]] = [(0, requested("A", "ck", 0))]
    lease: dict[str, Any] | None = None
    attempt, clock = 1, 1
    for _ in range(12):
        clock += chooser.randint(1, 20)
        pick = chooser.choice(["queued", "started", "progress", "expired", "released", "built", "stale"])
        if pick == "queued":
            attempt += chooser.choice([0, 1])
            env = queued("A", "ck", clock, attempt=attempt)
        elif pick == "started":
            env = started(
                "A",
                "ck",
                clock,
                attempt,
                lease_until=chooser.choice(["", at(clock + chooser.randint(1, 40))]),
            )
        elif pick == "progress":
            env = progress("A", "ck", clock, attempt)
        elif pick == "expired":
            seen = chooser.choice(["", at(clock - chooser.randint(0, 30))])
            env = event("A", LeaseExpired("ck", attempt, "w1", seen), clock)
        elif pick == "released":
            env = event("A", PackageReleased("ck", attempt, "w1", "stopping"), clock)
        elif pick == "built":
            env = event("A", PackageBuilt("ck", attempt, "w1", "PackageFailed", {}), clock)
        else:  # an event of an attempt that already lost the lease
            env = progress("A", "ck", clock, max(1, attempt - 1))
        history.append((0, env))
        lease = leases.apply(lease, env, PARAMS.lease_time)
        build = folded(history).inflight.get("ck")
        if lease is None:
            assert build is None
            continue
        assert build is not None
        assert (build.attempt, build.state, build.lost) == (lease["attempt"], lease["state"], lease["lost"])
        if lease["state"] != "queued" and build.started_at:
            assert build.lease_until == _iso_of(lease["until"])


def _iso_of(epoch: float) -> str:
    return (
        datetime.fromtimestamp(round(epoch * 1000) / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
