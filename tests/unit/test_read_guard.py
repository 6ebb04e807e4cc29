"""The read side's boundary without a broker: bad records skipped and counted, a fold that raises changes
nothing and is reported as degraded, the reading loop restarted when it fails, and log identities compared.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from packager.adapters import read_guard
from packager.adapters.kafka_log import LogIdentity, identity_mismatch
from packager.adapters.read_guard import FoldHealth, supervise
from packager.adapters.readside import ReadSide
from packager.core.retrying import Backoff
from packager.core.settings import Settings, load_settings
from packager.domain.events import PackageRequested, encode, envelope
from packager.http import health
from packager.http.app_keys import READ_SIDE, SETTINGS
from projections import jobs as job_fold
from projections.readmodel import ReadModel
from tests.unit.samples import SECRET, completed

TOPIC = "t.events"


def requested(resource_id: str = "r1", email: str = "a@example.org") -> PackageRequested:
    return PackageRequested("url", "ck", resource_id, email, "h", {"resource_url": "https://h/f.csv"})


def rejected_count(topic: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("packager_records_rejected_total", {"topic": topic, "reason": reason})
    return value or 0.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(tmp_path))


def test_a_fold_that_raises_leaves_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    model = ReadModel(identity=str.lower)
    model.apply(TOPIC, 0, 0, envelope("job-1", requested()))
    before = (model.state(), dict(model.positions))

    def broken_identity(email: str) -> str:
        raise ValueError("no identity today")

    model.identity = broken_identity  # the statistics fold fails after the job fold succeeded
    with pytest.raises(ValueError):
        model.apply(TOPIC, 0, 1, envelope("job-2", requested(resource_id="r2")))
    assert (model.state(), dict(model.positions)) == before

    def broken_fold(state: Any, event: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(job_fold, "apply", broken_fold)
    with pytest.raises(RuntimeError):
        model.apply(TOPIC, 0, 1, envelope("job-1", completed()))
    assert (model.state(), dict(model.positions)) == before


async def test_bad_records_are_skipped_and_counted_and_later_jobs_still_fold(settings: Settings) -> None:
    side = ReadSide(settings)
    tp = _tp()
    good = orjson.loads(encode(envelope("job-1", requested())))
    wrong = {**good, "job_id": "job-bad", "occurred_at": "yesterday"}
    null_email = {**good, "job_id": "job-null", "payload": {**good["payload"], "email": None}}
    counted = rejected_count(TOPIC, "bad_envelope"), rejected_count(TOPIC, "bad_payload")

    side._fold(tp, 0, orjson.dumps(wrong))
    side._fold(tp, 1, orjson.dumps(null_email))
    side._fold(tp, 2, b"\xff not json")
    side._fold(tp, 3, orjson.dumps(good))

    assert set(side.model.jobs) == {"job-1"}
    assert side.model.positions == {f"{TOPIC}:0": 4}
    assert (rejected_count(TOPIC, "bad_envelope"), rejected_count(TOPIC, "bad_payload")) == (
        counted[0] + 1,
        counted[1] + 1,
    )
    assert side.health.problem() is None  # rejected records are the workers' to dead-letter, not a fault


async def test_a_fold_that_raises_is_logged_with_its_event_and_readiness_says_degraded(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    side = ReadSide(settings)
    tp = _tp()
    side._fold(tp, 0, encode(envelope("job-1", requested())))
    real_fold = job_fold.apply

    def fold_failing_on_job_2(state: Any, event: Any) -> Any:
        if event.job_id == "job-2":
            raise KeyError("surprise")
        return real_fold(state, event)

    monkeypatch.setattr(job_fold, "apply", fold_failing_on_job_2)
    with caplog.at_level(logging.ERROR, logger="packager.adapters.read_guard"):
        side._fold(tp, 1, encode(envelope("job-2", requested(resource_id="r2"))))
    side._fold(tp, 2, encode(envelope("job-3", requested(resource_id="r3"))))

    assert set(side.model.jobs) == {"job-1", "job-3"}  # job 2 skipped, the ones after it folded
    assert side.model.positions == {f"{TOPIC}:0": 3}
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

    monkeypatch.setattr(health, "broker_reachable", broker_answers)
    app = web.Application()
    app[SETTINGS] = settings
    app[READ_SIDE] = side
    side.caught_up.set()
    ready, details = await health.readiness(app)
    assert ready
    assert details["status"] == "degraded"
    assert "PackageRequested of job job-2 at t.events:0@1" in str(details["reason"])


async def test_the_reading_loop_is_restarted_with_a_log_line_when_it_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(read_guard, "RESTART_BACKOFF", Backoff(first=0.01, cap=0.02))
    health_now = FoldHealth()
    runs: list[str] = []
    reading = asyncio.Event()

    async def run() -> None:
        runs.append("run")
        if len(runs) < 3:
            raise RuntimeError(f"bug number {len(runs)}")
        health_now.running()
        reading.set()
        await asyncio.Event().wait()  # reads for ever

    with caplog.at_level(logging.ERROR, logger="packager.adapters.read_guard"):
        task = asyncio.create_task(supervise("the test's loop", run, health_now))
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


def test_the_snapshot_keeps_the_log_identity(tmp_path: Path) -> None:
    model = ReadModel(identity=str)
    model.log_identity = LogIdentity("c", {"t.events": "5" * 32}).to_dict()
    model.apply(TOPIC, 0, 0, envelope("job-1", requested()))
    (tmp_path / "snap.json").write_bytes(model.snapshot())
    assert ReadModel.load(tmp_path / "snap.json", str).log_identity == model.log_identity


def _tp() -> TopicPartition:
    return TopicPartition(TOPIC, 0)
