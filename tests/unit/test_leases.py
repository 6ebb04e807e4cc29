"""Leases: the fold over a job's build events and what the steward does about each event."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from packager.domain.events import (
    Envelope,
    Event,
    LeaseExpired,
    PackageBuilt,
    PackageFailed,
    PackageProgress,
    PackageQueued,
    PackageReleased,
    PackageRequested,
    PackageStarted,
    envelope,
)
from streams import leases
from tests.unit.samples import completed

LEASE_TIME = 30.0
T0 = "2026-12-01T10:00:00.000Z"


def at(payload: Event, when: str = T0) -> Envelope:
    return envelope("job", payload, occurred_at=when)


def queued(attempt: int = 1) -> Envelope:
    return at(PackageQueued(cache_key="ck", lane="slow", attempt=attempt))


def started(attempt: int = 1, until: str = "2026-12-01T10:00:30.000Z") -> Envelope:
    return at(PackageStarted(cache_key="ck", lane="slow", worker="w1", attempt=attempt, lease_until=until))


def silent(attempt: int) -> LeaseExpired:
    """What the watchdog appends for a build that sent no heartbeat before the deadline it saw."""
    return LeaseExpired(cache_key="ck", attempt=attempt, worker="w1", lease_until="2026-12-01T10:00:30.000Z")


def passed_in_lane(attempt: int) -> LeaseExpired:
    """What the watchdog appends for a queued attempt whose lane record was passed with no start."""
    return LeaseExpired(cache_key="ck", attempt=attempt, worker="", lease_until="")


def built(attempt: int = 1, zip_name: str = "job.zip") -> Envelope:
    done = completed(zip_file_name=zip_name)
    return at(
        PackageBuilt(cache_key="ck", attempt=attempt, worker="w1", outcome=done.TYPE, result=asdict(done))
    )


def fold(*events: Envelope) -> dict[str, Any] | None:
    lease: dict[str, Any] | None = None
    for env in events:
        lease = leases.apply(lease, env, LEASE_TIME)
    return lease


def test_a_build_holds_its_lease_until_its_deadline_and_each_heartbeat_renews_it() -> None:
    lease = fold(queued(), started())
    assert lease is not None and lease["state"] == leases.BUILDING and lease["worker"] == "w1"
    deadline = leases.epoch("2026-12-01T10:00:30.000Z")
    assert not leases.expired(lease, deadline - 1) and leases.expired(lease, deadline + 1)
    beat = at(PackageProgress("ck", 10, 100, 0, None, attempt=1), "2026-12-01T10:00:20.000Z")
    renewed = leases.apply(lease, beat, LEASE_TIME)
    assert renewed is not None and not leases.expired(renewed, deadline + 1)
    assert leases.expired(renewed, leases.epoch("2026-12-01T10:00:50.000Z") + 1)


def test_the_proposal_of_the_lease_holder_ends_the_job_and_the_terminal_event_ends_the_lease() -> None:
    before = fold(queued(), started())
    action = leases.decide(before, built(), max_attempts=3)
    assert action == leases.End(completed(zip_file_name="job.zip"))
    after = leases.apply(before, built(), LEASE_TIME)
    assert after is not None and after["state"] == leases.BUILT
    assert leases.apply(after, at(completed()), LEASE_TIME) is None


def test_a_lost_build_is_dispatched_again_until_max_attempts_then_the_job_fails() -> None:
    lease = fold(queued(), started())
    expiry = at(silent(1))
    assert leases.decide(lease, expiry, max_attempts=2) == leases.Dispatch("slow", 2)
    lease = fold(queued(), started(), expiry, queued(2), started(2))
    assert lease is not None and (lease["attempt"], lease["lost"]) == (2, 1)
    second = at(silent(2))
    assert leases.decide(lease, second, max_attempts=2) == leases.GiveUp(2)
    request = PackageRequested("url", "ck", "r", "a@example.org", "h", {})
    failure = leases.gave_up(request, 2)
    assert (
        isinstance(failure, PackageFailed) and "2 times" in failure.error and failure.email == "a@example.org"
    )


def test_a_build_that_lost_its_lease_cannot_end_the_job_and_its_zip_is_dropped() -> None:
    expiry = at(silent(1))
    lease = fold(queued(), started(), expiry, queued(2))
    assert leases.decide(lease, built(1, "old.zip"), max_attempts=3) == leases.Discard("old.zip")
    assert leases.decide(lease, started(1), max_attempts=3) is None
    assert leases.apply(lease, started(1), LEASE_TIME) == lease  # its heartbeats renew nothing


def test_a_released_build_is_dispatched_again_at_once_without_counting_as_lost() -> None:
    lease = fold(queued(), started())
    release = at(PackageReleased(cache_key="ck", attempt=1, worker="w1", reason="stopping"))
    assert leases.decide(lease, release, max_attempts=1) == leases.Dispatch("slow", 2)
    after = fold(queued(), started(), release, queued(2))
    assert after is not None and (after["attempt"], after["lost"], after["state"]) == (2, 0, leases.QUEUED)


def test_an_event_read_again_after_a_crash_asks_for_the_same_action() -> None:
    """The steward may have recorded the lease and crashed before acting: acting again must be asked for."""
    holder = fold(queued(), started(), built())
    assert leases.decide(holder, built(), max_attempts=3) == leases.End(completed(zip_file_name="job.zip"))
    # A second build of the same attempt (a redelivered lane record) made another ZIP: dropped.
    assert leases.decide(holder, built(1, "job-1-ab.zip"), max_attempts=3) == leases.Discard("job-1-ab.zip")
    expiry = at(silent(1))
    lost = fold(queued(), started(), expiry)
    assert leases.decide(lost, expiry, max_attempts=3) == leases.Dispatch("slow", 2)


def test_a_malformed_proposal_fails_the_job_for_the_requester_without_internals() -> None:
    bad = at(PackageBuilt(cache_key="ck", attempt=1, worker="w", outcome="PackageCompleted", result={"x": 1}))
    action = leases.decide(fold(queued(), started()), bad, max_attempts=3)
    assert isinstance(action, leases.End) and isinstance(action.terminal, PackageFailed)
    assert action.terminal.error == "The service failed while preparing this package."


def test_a_proposal_read_again_after_the_job_ended_leaves_its_zip_alone() -> None:
    """The lease is gone once the terminal event is read: the proposal may be the one that ended the job."""
    ended = fold(queued(), started(), built(), at(completed(zip_file_name="job.zip")))
    assert ended is None
    assert leases.decide(ended, built(1, "job.zip"), max_attempts=3) is None


def test_an_expiry_decided_before_a_heartbeat_that_was_still_unread_is_ignored() -> None:
    """The watchdog saw the deadline of 10:00:30; a heartbeat at 10:00:25 read after it moved it on."""
    lease = fold(queued(), started())
    expiry = at(LeaseExpired(cache_key="ck", attempt=1, worker="w1", lease_until="2026-12-01T10:00:30.000Z"))
    beat = at(PackageProgress("ck", 10, 100, 0, None, attempt=1), "2026-12-01T10:00:25.000Z")
    renewed = leases.apply(lease, beat, LEASE_TIME)
    assert leases.decide(renewed, expiry, max_attempts=1) is None
    assert leases.apply(renewed, expiry, LEASE_TIME) == renewed
    assert leases.decide(lease, expiry, max_attempts=1) == leases.GiveUp(1)  # not renewed: it counts


def test_a_queued_attempt_passed_in_its_lane_is_queued_again_and_counts_as_lost() -> None:
    lease = fold(queued())
    assert lease is not None and lease["since"] == leases.epoch(T0)
    assert not leases.stalled_in_queue(lease, leases.epoch(T0) + 10, after=LEASE_TIME)
    assert leases.stalled_in_queue(lease, leases.epoch(T0) + 31, after=LEASE_TIME)
    expiry = at(passed_in_lane(1))
    assert leases.decide(lease, expiry, max_attempts=2) == leases.Dispatch("slow", 2)
    lost = leases.apply(lease, expiry, LEASE_TIME)
    assert lost is not None and (lost["state"], lost["lost"]) == (leases.LOST, 1)
    assert leases.apply(lost, started(1), LEASE_TIME) == lost  # a late start of that attempt takes nothing
    again = fold(queued(), expiry, queued(2))
    assert leases.decide(again, at(passed_in_lane(2)), max_attempts=2) == leases.GiveUp(2)


def test_a_queued_expiry_read_after_the_build_started_is_ignored() -> None:
    """The watchdog saw the record passed; the build's PackageStarted was already in the log, unread."""
    building = fold(queued(), started())
    assert building is not None
    expiry = at(passed_in_lane(1))
    assert leases.decide(building, expiry, max_attempts=1) is None
    assert leases.apply(building, expiry, LEASE_TIME) == building
    assert not leases.stalled_in_queue(building, leases.epoch(T0) + 3600, after=LEASE_TIME)


def test_a_build_expiry_does_not_apply_to_an_attempt_still_queued() -> None:
    lease = fold(queued())
    expiry = at(silent(1))
    assert leases.decide(lease, expiry, max_attempts=1) is None
    assert leases.apply(lease, expiry, LEASE_TIME) == lease


async def test_the_worker_appends_through_an_idempotent_producer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A produce retried after a lost acknowledgement must not store a terminal event twice."""
    from faust.transport.consumer import Consumer

    from packager.core.settings import load_settings
    from streams import offsets
    from streams.app import create_app, roles_for

    monkeypatch.setattr(Consumer, "_new_offset", Consumer._new_offset)  # create_app patches these
    monkeypatch.setattr(offsets, "_resume_points", offsets._resume_points)
    settings = load_settings({}, secret="unit-test-secret-0123456789abcdef", store_directory=str(tmp_path))
    app = create_app(settings, roles_for(["fast"]))
    producer = app.producer._new_producer()  # type: ignore[attr-defined]  # not started: nothing connects
    try:
        assert producer._txn_manager is not None, "the producer is not idempotent"
        assert producer.client._bootstrap_servers == [settings.kafka_bootstrap_servers]
    finally:
        await producer.stop()


def test_a_job_that_ended_keeps_the_zip_it_ended_with() -> None:
    failed = PackageFailed(
        cache_key="ck", resource_id="r", email="e@example.org", ckan_host="h", error="no", error_type="X"
    )
    assert leases.ended_zip(at(completed(zip_file_name="job-1.zip"))) == "job-1.zip"
    assert leases.ended_zip(at(failed)) == ""
