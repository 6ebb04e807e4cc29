"""The job-state fold and lane planning."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

from packager.adapters.kafka_log import ANSWER_DEADLINE_HEADER, LOG_APPEND_TIME
from packager.core.settings import load_settings
from packager.domain.events import (
    EmailSent,
    PackageFailed,
    PackageProgress,
    PackageQueued,
    PackageRequested,
    PackageStarted,
    RequestAbandoned,
    envelope,
)
from projections.jobs import ABANDONED, COMPLETED, RUNNING, JobState, apply
from streams.handlers import abandoned, lane_for_rows, plan_lane
from tests.unit.samples import completed

REQ = PackageRequested(
    kind="url", cache_key="ck", resource_id="r", email="a@example.org", ckan_host="h", request={}
)
DONE = completed(
    resource_id="r", ckan_host="h", zip_file_name="j.zip", size=5, started_at="a", finished_at="b"
)


def fold(*payloads: object) -> JobState:
    state = None
    for p in payloads:
        state = apply(state, envelope("j", p))  # type: ignore[arg-type]
    assert state is not None
    return state


def test_a_job_moves_from_queued_to_completed_and_emailed() -> None:
    state = fold(REQ, PackageQueued(cache_key="ck", lane="fast", attempt=1))
    assert (state.state, state.lane) == ("queued", "fast")
    state = fold(
        REQ,
        PackageStarted(cache_key="ck", lane="fast", worker="w", attempt=1, lease_until=""),
        PackageProgress(
            cache_key="ck", rows_done=0, rows_total=None, bytes_done=10, bytes_total=20, attempt=1
        ),
    )
    assert (state.state, state.bytes_done) == (RUNNING, 10)
    state = fold(REQ, DONE, EmailSent(cache_key="ck", about="PackageCompleted", message_id="m", attempts=1))
    assert (state.state, state.zip_file_name, state.emailed) == (COMPLETED, "j.zip", True)


def test_terminal_states_are_never_left_on_redelivery() -> None:
    failed = PackageFailed(
        cache_key="ck", resource_id="r", email="a@example.org", ckan_host="h", error="x", error_type="E"
    )
    state = fold(
        REQ, DONE, PackageStarted(cache_key="ck", lane="fast", worker="w", attempt=1, lease_until=""), failed
    )
    assert state.state == COMPLETED
    assert JobState.from_dict(state.to_dict()) == state


def test_an_abandoned_request_is_terminal_and_never_packaged() -> None:
    late = RequestAbandoned(cache_key="ck", appended_at="2026-11-26T10:00:05.000Z", answer_deadline="x")
    state = fold(
        REQ, late, PackageStarted(cache_key="ck", lane="fast", worker="w", attempt=1, lease_until="")
    )
    assert (state.state, state.terminal) == (ABANDONED, True)
    assert "503" in state.error


def record(timestamp: float | None, timestamp_type: int, deadline_ms: int | None) -> SimpleNamespace:
    headers = [] if deadline_ms is None else [(ANSWER_DEADLINE_HEADER, str(deadline_ms).encode())]
    return SimpleNamespace(timestamp=timestamp, timestamp_type=timestamp_type, headers=headers)


def test_a_request_stored_after_the_ingress_deadline_is_recognised() -> None:
    deadline = 1_790_000_000_000
    assert abandoned(record(deadline / 1000 + 0.5, LOG_APPEND_TIME, deadline)) == (
        "2026-09-21T14:13:20.500Z",
        "2026-09-21T14:13:20.000Z",
    )
    assert abandoned(record(deadline / 1000, LOG_APPEND_TIME, deadline)) is None  # in time
    assert abandoned(record(deadline / 1000 + 5, 0, deadline)) is None  # a producer's clock: no verdict
    assert abandoned(record(deadline / 1000 + 5, LOG_APPEND_TIME, None)) is None  # not from the ingress


async def test_url_jobs_take_the_fast_lane() -> None:
    async with aiohttp.ClientSession() as session:
        assert await plan_lane(envelope("j", REQ), load_settings({}), session) == "fast"


def test_queries_over_slow_request_rows_take_the_slow_lane() -> None:
    settings = load_settings({"PACKAGER_SLOW_REQUEST": "1000"})
    assert lane_for_rows(1000, settings) == "fast"
    assert lane_for_rows(1001, settings) == "slow"
