"""Fair limits under concurrency, without a broker: which requests wait for which, and what the ingress
forgets once the views show it (their positions), without losing a request another check is counting."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from packager.adapters.kafka_log import Appended
from packager.adapters.view_queries import Usage, UsageAsked
from packager.core.errors import TooManyRequestsError
from packager.core.settings import Settings, load_settings
from packager.http.limits import Limits

pytestmark = pytest.mark.features

SECRET = "unit-test-secret-0123456789"
TOPIC = "packager.requests"


def settings(tmp_path: Path, **limits: int) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(tmp_path), **limits)


class Views:
    """Views whose answers a test decides: `positions` at the time of each query, optionally held back
    until a test lets them go (`gate`, per requester)."""

    def __init__(self) -> None:
        self.positions: dict[tuple[str, int], int] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.asked: list[UsageAsked] = []
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.counts: Callable[[UsageAsked], tuple[int, int, int]] = lambda asked: (0, 0, 0)

    async def usage(self, asked: UsageAsked) -> Usage:
        self.asked.append(asked)
        positions = dict(self.positions)  # the snapshot is taken when the query runs
        self.started[asked.who].set()
        if asked.who in self.gates:
            await self.gates[asked.who].wait()
        active, resource_active, requests = self.counts(asked)
        return Usage(active, resource_active, requests, [], positions)


def admit(limits: Limits, views: Views, job_id: str, who: str, resource_id: str = "r") -> Any:
    return limits.admit(views, job_id, who, resource_id)  # type: ignore[arg-type]


async def test_two_concurrent_requests_of_a_requester_at_the_limit_one_is_refused(tmp_path: Path) -> None:
    limits = Limits(settings(tmp_path, max_active_jobs_per_requester=1))
    views = Views()
    views.gates["ann"] = asyncio.Event()
    first = asyncio.create_task(admit(limits, views, "j1", "ann", "r1"))
    second = asyncio.create_task(admit(limits, views, "j2", "ann", "r2"))
    await views.started["ann"].wait()
    views.gates["ann"].set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    refused = [r for r in results if isinstance(r, TooManyRequestsError)]
    assert len(refused) == 1 and results.count(None) == 1
    assert limits.pending == 1


async def test_other_requesters_do_not_wait_for_a_check_under_way(tmp_path: Path) -> None:
    limits = Limits(settings(tmp_path, max_active_jobs_per_requester=1, max_active_jobs_per_resource=5))
    views = Views()
    views.gates["ann"] = asyncio.Event()  # ann's query does not come back until bob's check is done
    ann = asyncio.create_task(admit(limits, views, "j1", "ann", "r1"))
    await views.started["ann"].wait()
    await asyncio.wait_for(admit(limits, views, "j2", "bob", "r2"), 5)
    views.gates["ann"].set()
    await ann
    assert limits.pending == 2


async def test_a_resource_limit_holds_across_requesters(tmp_path: Path) -> None:
    limits = Limits(settings(tmp_path, max_active_jobs_per_resource=1))
    views = Views()
    views.gates["ann"] = asyncio.Event()
    ann = asyncio.create_task(admit(limits, views, "j1", "ann", "busy"))
    bob = asyncio.create_task(admit(limits, views, "j2", "bob", "busy"))
    await views.started["ann"].wait()
    views.gates["ann"].set()
    results = await asyncio.gather(ann, bob, return_exceptions=True)
    assert sum(isinstance(r, TooManyRequestsError) for r in results) == 1


async def test_what_the_views_show_is_forgotten_so_the_pending_set_stays_bounded(tmp_path: Path) -> None:
    limits = Limits(settings(tmp_path, max_requests_per_hour_per_requester=10**6))
    views = Views()
    for n in range(1000):
        await admit(limits, views, f"j{n}", "ann", f"r{n}")
        limits.appended(f"j{n}", TOPIC, Appended(n % 2, n // 2))
        # The views keep up to ten requests behind on each partition.
        views.positions = {(TOPIC, p): max(0, n // 2 - 10) for p in (0, 1)}
        assert limits.pending <= 24
    # What was passed to the query does not grow either: an upper bound of what is unseen, not job ids.
    assert max(asked.unseen_at_most for asked in views.asked) <= 24
    views.positions = {(TOPIC, p): 500 for p in (0, 1)}
    await admit(limits, views, "last", "ann")
    assert limits.pending == 1  # only the request just accepted, whose offset is not known yet


async def test_a_request_not_yet_in_the_views_stays_counted(tmp_path: Path) -> None:
    limits = Limits(settings(tmp_path, max_active_jobs_per_requester=2))
    views = Views()
    await admit(limits, views, "j1", "ann")
    limits.appended("j1", TOPIC, Appended(0, 7))
    views.positions = {(TOPIC, 0): 7}  # the views stop just before it
    await admit(limits, views, "j2", "ann")
    with pytest.raises(TooManyRequestsError, match="You already have 2 downloads"):
        await admit(limits, views, "j3", "ann")
    # Once the views show j1 (and count it), it is counted once, not twice.
    views.positions = {(TOPIC, 0): 8}
    views.counts = lambda asked: (1, 0, 1)
    with pytest.raises(TooManyRequestsError, match="You already have 2 downloads"):
        await admit(limits, views, "j3", "ann")
    assert limits.pending == 1  # j2


async def test_a_request_another_check_is_counting_is_not_forgotten_under_it(tmp_path: Path) -> None:
    """A check whose snapshot is older must still find the requests its snapshot does not show."""
    limits = Limits(settings(tmp_path, max_active_jobs_per_requester=1, max_active_jobs_per_resource=9))
    views = Views()
    await admit(limits, views, "j1", "ann", "r1")
    limits.appended("j1", TOPIC, Appended(0, 5))
    views.gates["ann"] = asyncio.Event()
    views.started["ann"].clear()
    ann = asyncio.create_task(admit(limits, views, "j2", "ann", "r2"))  # its snapshot: position 0
    await views.started["ann"].wait()
    views.positions = {(TOPIC, 0): 6}  # bob's snapshot, newer, shows j1 (ann's is held back)
    await admit(limits, views, "j3", "bob", "r3")
    assert limits.pending == 2  # j1 kept (ann's check counts it), and j3
    views.gates["ann"].set()
    with pytest.raises(TooManyRequestsError, match="You already have 1 download"):
        await ann
    await admit(limits, views, "j4", "carl", "r4")  # now nobody counts j1: forgotten
    assert limits.pending == 2  # j3, j4


async def test_requests_an_hour_old_are_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = Limits(settings(tmp_path, max_requests_per_hour_per_requester=2))
    clock = [1_000_000.0]
    monkeypatch.setattr("packager.http.limits.time.time", lambda: clock[0])
    await admit(limits, Views(), "j1", "ann")
    limits.appended("j1", TOPIC, Appended(0, 0))
    await admit(limits, Views(), "j2", "ann")
    with pytest.raises(TooManyRequestsError):
        await admit(limits, Views(), "j3", "ann")
    clock[0] += 3601
    await admit(limits, Views(), "j3", "ann")
    assert limits.pending == 1
