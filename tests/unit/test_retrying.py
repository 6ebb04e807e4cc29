"""The one retry policy: jittered backoff, `Retry-After` honoured (CKAN, URL fetches), deadlines."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from packager.adapters.ckan import DatastoreClient
from packager.adapters.fetch import download_file
from packager.adapters.store import FileStore
from packager.core import retrying
from packager.core.errors import PackagingError
from packager.core.retrying import Backoff, GaveUp, Retryable, retry_after_seconds
from packager.core.settings import load_settings
from packager.dev.ckan_server import ACTION_PATH, serve_app
from packager.domain.events import Event, PackageFailed, PackageRequested, envelope
from packager.service.packaging import JobContext, run_job

CKAN_OK = {"success": True, "result": {"fields": [{"id": "_id", "type": "int"}], "total": 0, "records": []}}


def test_each_wait_is_drawn_between_half_and_all_of_the_capped_exponential() -> None:
    backoff = Backoff(first=0.5, cap=4.0)
    assert [backoff.bounds(n) for n in (1, 2, 3, 4, 5, 60)] == [
        (0.25, 0.5),
        (0.5, 1.0),
        (1.0, 2.0),
        (2.0, 4.0),
        (2.0, 4.0),
        (2.0, 4.0),
    ]
    for attempt in (1, 3, 10):
        low, high = backoff.bounds(attempt)
        draws = [backoff.delay(attempt) for _ in range(200)]
        assert all(low <= d <= high for d in draws)
        assert len(set(draws)) > 150, "waits are jittered, not all alike"


async def waits_of_one_failing_call() -> list[float]:
    """The waits the policy chose between four failed tries."""
    waits: list[float] = []

    async def failing() -> None:
        raise Retryable("HTTP 503")

    with pytest.raises(GaveUp):
        await retrying.call(
            "test",
            failing,
            backoff=Backoff(first=0.01, cap=0.04),
            max_attempts=4,
            on_retry=lambda exc, n, wait: waits.append(wait),
        )
    return waits


async def test_two_runs_of_the_same_failing_call_wait_differently() -> None:
    first, second = await waits_of_one_failing_call(), await waits_of_one_failing_call()
    assert len(first) == len(second) == 3
    assert first != second
    assert all(0.005 <= w <= 0.04 for w in first + second)


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert retry_after_seconds("7", now=now) == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert retry_after_seconds("Fri, 02 Jan 2026 03:04:00 GMT", now=now) == 0.0  # in the past: at once
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds("-3", now=now) is None
    assert retry_after_seconds(None) is None


async def test_other_errors_and_cancellation_are_not_retried() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await retrying.call("test", broken, backoff=Backoff(first=0.01, cap=0.01), max_attempts=5)
    assert calls == 1


async def test_retries_give_up_before_a_wait_would_pass_the_deadline() -> None:
    calls: list[float] = []

    async def failing() -> None:
        calls.append(time.monotonic())
        raise Retryable("HTTP 502")

    started = time.monotonic()
    with pytest.raises(GaveUp) as caught:
        await retrying.call(
            "test", failing, backoff=Backoff(first=0.2, cap=0.4), deadline=started + 1.0, max_attempts=None
        )
    took = time.monotonic() - started
    assert caught.value.at_deadline and caught.value.attempts == len(calls) >= 2
    assert "no time left" in caught.value.reason
    assert took <= 1.0, "it never sleeps past the deadline"
    assert str(caught.value.last) == "HTTP 502"


@pytest.fixture
async def busy_then_ok() -> AsyncIterator[tuple[str, list[float]]]:
    """A server answering each path with 503 and `Retry-After: 1` once, then 200; records request times."""
    seen: list[float] = []
    asked: set[str] = set()

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(time.monotonic())
        await request.read()
        if request.path not in asked:
            asked.add(request.path)
            return web.Response(status=503, text="busy", headers={"Retry-After": "1"})
        if request.method == "POST":
            return web.json_response(CKAN_OK)
        return web.Response(body=b"x" * 1000)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_app(app) as url:
        yield url.removesuffix(ACTION_PATH), seen


async def test_the_ckan_client_waits_as_long_as_retry_after_asks(
    busy_then_ok: tuple[str, list[float]],
) -> None:
    base, seen = busy_then_ok
    async with aiohttp.ClientSession() as session:
        client = DatastoreClient(session, backoff=0.01)
        result = await client.call(base + ACTION_PATH, {"resource_id": "r", "limit": 0})
    assert result["total"] == 0 and client.retries == 1
    assert len(seen) == 2 and seen[1] - seen[0] >= 1.0, "the retry came before Retry-After's second"


async def test_a_url_fetch_waits_as_long_as_retry_after_asks(
    busy_then_ok: tuple[str, list[float]], tmp_path: Path
) -> None:
    base, seen = busy_then_ok

    async def resolve(host: str) -> list[str]:
        return ["127.0.0.1"]

    async with aiohttp.ClientSession() as session:
        got = await download_file(
            session, base + "/file.csv", tmp_path / "f", key="", resolve=resolve, allow_private=True
        )
    assert got.size == 1000
    assert len(seen) == 2 and seen[1] - seen[0] >= 1.0


async def test_a_retry_after_past_the_jobs_deadline_fails_the_job_at_once() -> None:
    async def maintenance(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance", headers={"Retry-After": "600"})

    app = web.Application()
    app.router.add_post(ACTION_PATH, maintenance)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        client = DatastoreClient(session, backoff=0.01)
        started = time.monotonic()
        with retrying.job_deadline(30.0), pytest.raises(PackagingError) as caught:
            await client.call(url, {"resource_id": "r", "limit": 0})
    assert time.monotonic() - started < 5.0
    assert "asked to be retried after 600 seconds" in caught.value.message
    assert "HTTP 503" in caught.value.message


async def test_a_build_gives_up_at_once_when_ckan_asks_to_wait_past_job_timeout(tmp_path: Path) -> None:
    async def maintenance(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance", headers={"Retry-After": "120"})

    settings = load_settings(
        {},
        secret="retry-test-secret-0123456789",
        store_directory=str(tmp_path),
        allow_private_urls=True,
        job_timeout=60,
    )
    store = FileStore(Path(settings.store_directory), settings.partial_directory)
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    async def loopback(host: str) -> list[str]:
        return ["127.0.0.1"]

    app = web.Application()
    app.router.add_post(ACTION_PATH, maintenance)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        req = PackageRequested(
            kind="datastore",
            cache_key="retry-after-ds",
            resource_id="r1",
            email="someone@example.org",
            ckan_host="127.0.0.1",
            request={"api_url": url, "resource_id": "r1", "format": "csv", "key_sealed": ""},
        )
        ctx = JobContext(
            settings=settings, session=session, store=store, resolve=loopback, emit=emit, worker="test"
        )
        started = time.monotonic()
        outcome = await run_job(envelope("6a0f5b52-1f7e-4d0c-9a43-3d2b7c1e0f11", req), "fast", ctx)
    assert time.monotonic() - started < 10.0, "it did not sit out the wait it could never finish"
    assert isinstance(outcome, PackageFailed)
    assert outcome.error.startswith(f"CKAN at {url} kept failing (HTTP 503)")
    assert "asked to be retried after 120 seconds, past the time allowed" in outcome.error
