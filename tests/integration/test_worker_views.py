"""The worker's views (cache index, builds in flight, waiters) on real Kafka, on SQLite and PostgreSQL.

The projector folds a synthetic history (`test_views.write_history`: built jobs, every tenth failed) and a
build still under way with an identical request waiting behind it. Checked: what the views hold, `replay
verify` rebuilding them with the CACHE_TIME they were folded with, catching a row of the cache index and of
the builds in flight changed by hand, and `replay rebuild --into` copying them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from packager.adapters.kafka_log import Topics
from packager.adapters.projector import run_projector
from packager.adapters.viewdb import ViewDatabase
from packager.cli import replay
from packager.core.settings import Settings
from packager.domain.events import (
    PackageProgress,
    PackageQueued,
    PackageRequested,
    PackageStarted,
    encode,
    envelope,
)
from projections import view_schema
from tests.integration.test_views import read, settings_for, write_history

pytestmark = pytest.mark.kafka

KEY = "ck-in-flight"


async def write_build_in_flight(settings: Settings) -> None:
    """Job `builder` queued, started and heartbeating on KEY; job `waiter` asked for the same, later."""
    topics = Topics(settings.topic_prefix)
    request = PackageRequested("datastore", KEY, "res-x", "w@example.org", "h", {"resource_id": "res-x"})
    records = [
        (topics.requests, "builder", request, "2026-11-26T11:00:00.000Z"),
        (topics.events, "builder", PackageQueued(KEY, "slow", 1), "2026-11-26T11:00:00.100Z"),
        (
            topics.events,
            "builder",
            PackageStarted(KEY, "slow", "worker-1", 1, "2026-11-26T11:00:31.000Z"),
            "2026-11-26T11:00:01.000Z",
        ),
        (topics.events, "builder", PackageProgress(KEY, 50, 100, 900, None, 1), "2026-11-26T11:00:20.000Z"),
        (topics.requests, "waiter", request, "2026-11-26T11:00:05.000Z"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for topic, job_id, payload, at in records:
            value = encode(envelope(job_id, payload, occurred_at=at))
            await producer.send_and_wait(topic, value=value, key=KEY.encode())
    finally:
        await producer.stop()


def worker_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return read(url, lambda db, c: {t.name: list(db.rows(c, t)) for t in view_schema.WORKER_TABLES})


async def test_replay_verify_catches_a_row_of_the_worker_cache_index_changed_by_hand(
    kafka_bootstrap: str,
    topic_prefix: str,
    views_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 30)  # 30 keys, jobs 9, 19 and 29 failed
    await write_build_in_flight(settings)
    await run_projector(settings, until_caught_up=True)

    counts = read(views_url, lambda db, c: db.worker_counts(c))
    assert counts == {"cache_entries": 27, "builds_in_flight": 1, "waiters": 1}
    # Job 3 completed at 10:00:00.003 (its event time): its package serves hits for CACHE_TIME (a day).
    entry = read(
        views_url, lambda db, c: c.execute("SELECT * FROM cache_index WHERE cache_key = 'ck3'").fetchone()
    )
    assert tuple(entry)[6:8] == ("2026-11-26T10:00:00.003Z", "2026-11-27T10:00:00.003Z")
    build = read(views_url, lambda db, c: c.execute("SELECT * FROM inflight_builds").fetchone())
    # The heartbeat at 11:00:20 moved the deadline PackageStarted carried (11:00:31) to 11:00:50 (LEASE_TIME).
    assert (build[1], build[4], build[5], build[10]) == (
        "builder",
        "building",
        "worker-1",
        "2026-11-26T11:00:50.000Z",
    )
    waiters = read(views_url, lambda db, c: c.execute("SELECT job_id, builder FROM waiters").fetchall())
    assert [tuple(w) for w in waiters] == [("waiter", "builder")]

    assert await replay.verify(settings) == 0
    # Rebuilt with the CACHE_TIME the live views were folded with, not the one of the process verifying.
    assert await replay.verify(dataclasses.replace(settings, cache_time=60)) == 0
    before = worker_rows(views_url)
    capsys.readouterr()

    def tamper(db: ViewDatabase, conn: Any) -> None:
        sql = "UPDATE cache_index SET expires_at = '2099-01-01T00:00:00.000Z' WHERE cache_key = ?"
        conn.execute(sql.replace("?", db.mark), ("ck3",))
        conn.execute("DELETE FROM inflight_builds")

    read(views_url, tamper)
    assert await replay.verify(settings) == 1
    out = capsys.readouterr()
    assert (
        "cache_index cache_key='ck3': expires_at live '2099-01-01T00:00:00.000Z' "
        "!= rebuilt '2026-11-27T10:00:00.003Z'"
    ) in out.out
    assert f"inflight_builds cache_key='{KEY}': only in the rebuilt views" in out.out
    assert "DIFFERENT" in out.out and "2 difference(s)" in out.out

    copy = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    assert await replay.rebuild_copy(settings, copy) == 0
    assert worker_rows(copy) == before
