"""The projector's boundary without a broker, on SQLite views: bad records skipped and counted, a fold that
raises leaves the views at their last good state (never half a batch) and readiness says degraded, the
following loop restarted when it fails, and views from another log dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from packager.adapters import projector, read_guard, viewreads
from packager.adapters.kafka_log import LogIdentity, identity_mismatch
from packager.adapters.projector_shares import WHOLE
from packager.adapters.read_guard import FoldHealth, supervise
from packager.adapters.readside import identity_for
from packager.adapters.viewdb import ViewDatabase, database_url
from packager.core.retrying import Backoff
from packager.core.settings import Settings, load_settings
from packager.domain.events import PackageRequested, encode, envelope
from packager.http import health
from packager.http.app_keys import SETTINGS
from projections import jobs as job_fold
from projections.view_schema import JOBS, LOG_IDENTITY, PROJECTOR_STATUS, STAT_TOTALS
from tests.unit.samples import SECRET, attach_views, completed

TOPIC = "t.events"


def requested(resource_id: str = "r1", email: str = "a@example.org") -> PackageRequested:
    return PackageRequested("url", "ck", resource_id, email, "h", {"resource_url": "https://h/f.csv"})


def rejected_count(topic: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("packager_records_rejected_total", {"topic": topic, "reason": reason})
    return value or 0.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(tmp_path))


@pytest.fixture
def views(settings: Settings) -> Iterator[tuple[ViewDatabase, Any]]:
    db = ViewDatabase(database_url(settings))
    conn = db.connect(create=True)
    try:
        yield db, conn
    finally:
        conn.close()


def project(
    views: tuple[ViewDatabase, Any], settings: Settings, health_now: FoldHealth, first: int, *values: bytes
) -> int:
    """Hand the projector one run of raw records of TOPIC partition 0, offsets from `first`."""
    db, conn = views
    run = [SimpleNamespace(offset=first + i, value=v) for i, v in enumerate(values)]
    return projector._decode_and_apply(
        db, conn, [(TOPIC, 0, run)], identity_for(settings), "", health_now, {}, WHOLE
    )


def table(views: tuple[ViewDatabase, Any], which: Any) -> list[tuple[Any, ...]]:
    db, conn = views
    return list(db.rows(conn, which))


def test_a_fold_that_raises_leaves_the_views_as_they_were_never_half_a_batch(
    settings: Settings, views: tuple[ViewDatabase, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    health_now = FoldHealth()
    project(views, settings, health_now, 0, encode(envelope("job-1", requested())))
    before_jobs, before_totals = table(views, JOBS), table(views, STAT_TOTALS)
    real_fold = job_fold.apply

    def fold_failing_on_job_2(state: Any, event: Any) -> Any:
        if event.job_id == "job-2":
            raise RuntimeError("a bug")
        return real_fold(state, event)

    monkeypatch.setattr(job_fold, "apply", fold_failing_on_job_2)
    # One batch: job 1 completes, job 2's fold raises, job 3 is requested. The batch is applied again a
    # record at a time: job 1's completion and job 3 once each, job 2 not at all.
    applied = project(
        views,
        settings,
        health_now,
        1,
        encode(envelope("job-1", completed())),
        encode(envelope("job-2", requested(resource_id="r2"))),
        encode(envelope("job-3", requested(resource_id="r3"))),
    )
    assert applied == 2
    jobs = {row[0]: row[1] for row in table(views, JOBS)}
    assert set(jobs) == {"job-1", "job-3"}
    assert jobs["job-1"] == "completed" and before_jobs[0][1] != "completed"
    totals = {row[0]: row[1:] for row in table(views, STAT_TOTALS)}
    assert totals["*"][0] == 2 and "r2" not in totals and "r3" in totals
    assert before_totals != table(views, STAT_TOTALS)
    db, conn = views
    assert db.positions(conn) == {(TOPIC, 0): 4}
    assert health_now.fold_failures == 1


def test_bad_records_are_skipped_and_counted_and_later_jobs_still_fold(
    settings: Settings, views: tuple[ViewDatabase, Any]
) -> None:
    health_now = FoldHealth()
    good = orjson.loads(encode(envelope("job-1", requested())))
    wrong = {**good, "job_id": "job-bad", "occurred_at": "yesterday"}
    null_email = {**good, "job_id": "job-null", "payload": {**good["payload"], "email": None}}
    counted = rejected_count(TOPIC, "bad_envelope"), rejected_count(TOPIC, "bad_payload")

    project(
        views,
        settings,
        health_now,
        0,
        orjson.dumps(wrong),
        orjson.dumps(null_email),
        b"\xff",
        orjson.dumps(good),
    )

    assert [row[0] for row in table(views, JOBS)] == ["job-1"]
    db, conn = views
    assert db.positions(conn) == {(TOPIC, 0): 4}
    assert (rejected_count(TOPIC, "bad_envelope"), rejected_count(TOPIC, "bad_payload")) == (
        counted[0] + 1,
        counted[1] + 1,
    )
    assert health_now.problem() is None  # rejected records are the workers' to dead-letter, not a fault
    assert not db.meta(conn, PROJECTOR_STATUS)


async def test_a_fold_that_raises_is_logged_with_its_event_and_readiness_says_degraded(
    settings: Settings,
    views: tuple[ViewDatabase, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    health_now = FoldHealth()
    project(views, settings, health_now, 0, encode(envelope("job-1", requested())))
    real_fold = job_fold.apply

    def fold_failing_on_job_2(state: Any, event: Any) -> Any:
        if event.job_id == "job-2":
            raise KeyError("surprise")
        return real_fold(state, event)

    monkeypatch.setattr(job_fold, "apply", fold_failing_on_job_2)
    with caplog.at_level(logging.ERROR, logger="packager.adapters.read_guard"):
        project(views, settings, health_now, 1, encode(envelope("job-2", requested(resource_id="r2"))))
    project(views, settings, health_now, 2, encode(envelope("job-3", requested(resource_id="r3"))))

    assert [row[0] for row in table(views, JOBS)] == ["job-1", "job-3"]  # job 2 skipped, later ones folded
    line = caplog.records[-1]
    assert (line.topic, line.partition, line.offset, line.type, line.job_id) == (  # type: ignore[attr-defined]
        TOPIC,
        0,
        1,
        "PackageRequested",
        "job-2",
    )
    assert line.exc_info is not None

    async def broker_answers(bootstrap: str) -> None:
        return None

    async def log_ends(settings: Settings) -> dict[tuple[str, int], int]:
        return {(TOPIC, 0): 3}

    monkeypatch.setattr(health, "broker_reachable", broker_answers)
    monkeypatch.setattr(viewreads, "log_end_offsets", log_ends)
    app = web.Application()
    app[SETTINGS] = settings
    attach_views(app, settings)
    try:
        ready, details = await health.readiness(app)
    finally:
        await app.cleanup()
    assert ready
    assert details["status"] == "degraded"
    assert "PackageRequested of job job-2 at t.events:0@1" in str(details["reason"])


async def test_the_reading_loop_is_restarted_with_a_log_line_when_it_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(read_guard, "RESTART_BACKOFF", Backoff(first=0.01, cap=0.02))
    health_now = FoldHealth()
    runs: list[str] = []
    published: list[str | None] = []
    reading = asyncio.Event()

    async def run() -> None:
        runs.append("run")
        if len(runs) < 3:
            raise RuntimeError(f"bug number {len(runs)}")
        health_now.running()
        reading.set()
        await asyncio.Event().wait()  # reads for ever

    async def publish() -> None:
        published.append(health_now.problem())
        if len(published) == 1:
            raise OSError("the status cannot be written either")  # only logged

    with caplog.at_level(logging.ERROR, logger="packager.adapters.read_guard"):
        task = asyncio.create_task(supervise("the test's loop", run, health_now, on_stop=publish))
        try:
            async with asyncio.timeout(10):
                await reading.wait()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(runs) == 3
    assert health_now.restarts == 2
    assert health_now.problem() is None  # running again
    assert len(published) == 2 and "bug number 2" in str(published[1])
    stops = [r.getMessage() for r in caplog.records if "stopped" in r.getMessage()]
    assert len(stops) == 2 and "RuntimeError: bug number 2" in stops[1]


def test_a_log_is_told_apart_by_its_cluster_and_topic_ids() -> None:
    built = LogIdentity("cluster-a", {"p.requests": "1" * 32, "p.events": "2" * 32})
    assert identity_mismatch(None, built) is None  # nothing recorded: nothing to compare
    assert identity_mismatch(built, built) is None
    assert (
        identity_mismatch(built, LogIdentity("cluster-a", {**built.topic_ids, "p.other": "3" * 32})) is None
    )
    assert "cluster id" in str(identity_mismatch(built, LogIdentity("cluster-b", built.topic_ids)))
    recreated = LogIdentity("cluster-a", {**built.topic_ids, "p.events": "4" * 32})
    assert "p.events was recreated" in str(identity_mismatch(built, recreated))
    gone = LogIdentity("cluster-a", {"p.requests": "1" * 32})
    assert "p.events no longer exists" in str(identity_mismatch(built, gone))
    assert LogIdentity.from_dict(built.to_dict()) == built


async def test_views_record_their_log_and_are_dropped_for_another(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    db = ViewDatabase(database_url(settings))
    first = LogIdentity("c1", {TOPIC: "5" * 32})
    progress = projector.Progress()
    conn = await projector._same_log(db, db.connect(create=True), first, progress, WHOLE)
    try:
        views = (db, conn)
        project(views, settings, progress.health, 0, encode(envelope("job-1", requested())))
        assert orjson.loads(db.meta(conn, LOG_IDENTITY) or "") == first.to_dict()
        conn = await projector._same_log(db, conn, first, progress, WHOLE)
        assert progress.rebuilds == 0 and table((db, conn), JOBS)  # the same log: kept

        rebuilds = REGISTRY.get_sample_value("packager_read_model_rebuilds_total") or 0.0
        second = LogIdentity("c2", {TOPIC: "6" * 32})
        with caplog.at_level(logging.WARNING, logger="packager.adapters.projector"):
            conn = await projector._same_log(db, conn, second, progress, WHOLE)
        assert progress.rebuilds == 1
        assert REGISTRY.get_sample_value("packager_read_model_rebuilds_total") == rebuilds + 1
        assert "cluster id changed" in caplog.text
        assert table((db, conn), JOBS) == [] and db.positions(conn) == {}  # read again from the start
        assert orjson.loads(db.meta(conn, LOG_IDENTITY) or "") == second.to_dict()
    finally:
        conn.close()
