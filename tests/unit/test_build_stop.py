"""A build stopped because its job was cancelled leaves no ZIP in the store, however late the stop comes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from packager.domain.events import Envelope, Event, PackageRequested, envelope
from streams.builds import BuildPool
from tests.unit.samples import completed

JOB = "job-1"


def request() -> PackageRequested:
    return PackageRequested(
        kind="url", cache_key="ck", resource_id="r1", email="a@example.org", ckan_host="h", request={}
    )


class Store:
    def __init__(self) -> None:
        self.removed: list[str] = []

    async def remove(self, name: str) -> None:
        self.removed.append(name)


async def build_stuck_appending(pool: BuildPool) -> tuple[asyncio.Task[None], Store]:
    """A finished build (its ZIP `job-1-1.zip` stored) whose append of its proposal is under way."""
    appending = asyncio.Event()

    async def emit(request: Envelope, payload: Event) -> None:
        appending.set()
        await asyncio.Event().wait()

    async def run() -> Any:
        return completed(zip_file_name="job-1-1.zip")

    pool._emit = emit
    store = Store()
    build = SimpleNamespace(run=run, ctx=SimpleNamespace(store=store))
    job = envelope(JOB, request())
    task = asyncio.create_task(pool._run(build, job, 1))  # type: ignore[arg-type]
    pool._running[task] = (job, 1)
    await asyncio.wait_for(appending.wait(), 1.0)
    return task, store


def a_pool() -> BuildPool:
    return BuildPool("fast", 1, 1.0, "w", None, lambda *_: None, lambda: None)  # type: ignore[arg-type, return-value]


async def test_a_build_stopped_after_its_zip_was_stored_but_before_its_proposal_removes_the_zip() -> None:
    # Seen in CI: the cancel's PackageCancelled arrived while the finished build was appending its
    # PackageBuilt; the build was stopped there, no proposal named the ZIP, and it stayed in the store.
    pool = a_pool()
    task, store = await build_stuck_appending(pool)

    assert pool.stop(JOB) == 1
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.removed == ["job-1-1.zip"]


async def test_a_build_released_by_a_drain_keeps_its_zip_for_the_steward() -> None:
    # Not a cancellation: a task cancelled for another reason (the drain's release) removes nothing.
    task, store = await build_stuck_appending(a_pool())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.removed == []
