"""Deadlines and caps on real HTTP servers: a build that outlives JOB_TIMEOUT, a silent server, a file or a
CKAN page over its cap. Each must end the job with `PackageFailed` in words a requester understands, and
leave no partial file behind.

The jobs run through `run_job` with the workers' own HTTP client (`http_session`) against servers on
127.0.0.1; no Kafka is needed to show what the packer does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from packager.adapters.http_client import http_session
from packager.adapters.store import FileStore
from packager.core.settings import Settings, load_settings
from packager.dev.ckan_server import SyntheticTable, serve_ckan
from packager.dev.kafka import free_port
from packager.domain.events import (
    Event,
    PackageCompleted,
    PackageFailed,
    PackageProgress,
    PackageRequested,
    envelope,
)
from packager.service.packaging import JobContext, run_job
from streams.handlers import plan_lane

SECRET = "deadline-test-secret-0123456789"
JOB_ID = "5f0c2d8e-0e55-4d3b-8f7e-0a1b2c3d4e5f"
TABLE = SyntheticTable("t-caps", 1_000, seed=3)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """Serve `handler` for every path on 127.0.0.1; yield the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    # A short shutdown timeout: a handler still trickling must not hold up the cleanup.
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def trickle(request: web.Request, body: bytes, every: float, sent: list[int]) -> web.StreamResponse:
    """Answer 200 and send `body` one byte every `every` seconds (counting what was sent)."""
    resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
    await resp.prepare(request)
    for i in range(len(body)):
        await resp.write(body[i : i + 1])
        sent.append(1)
        await asyncio.sleep(every)
    return resp


def settings_for(store_dir: Path, **overrides: Any) -> Settings:
    return load_settings(
        {}, secret=SECRET, store_directory=str(store_dir), allow_private_urls=True, **overrides
    )


def url_request(url: str) -> PackageRequested:
    return PackageRequested(
        kind="url",
        cache_key="caps-url",
        resource_id="r1",
        email="someone@example.org",
        ckan_host="127.0.0.1",
        request={"resource_id": "r1", "resource_url": url, "key_sealed": ""},
    )


def datastore_request(api_url: str) -> PackageRequested:
    return PackageRequested(
        kind="datastore",
        cache_key="caps-ds",
        resource_id=TABLE.resource_id,
        email="someone@example.org",
        ckan_host="127.0.0.1",
        request={"api_url": api_url, "resource_id": TABLE.resource_id, "format": "csv", "key_sealed": ""},
    )


async def loopback(host: str) -> list[str]:
    return ["127.0.0.1"]


async def run(req: PackageRequested, settings: Settings) -> tuple[Event, list[Event], float]:
    """Run one job; return its terminal event, what it emitted, and how long it took."""
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    store = FileStore(Path(settings.store_directory), settings.partial_directory)
    started = time.monotonic()
    async with http_session(settings) as session:
        ctx = JobContext(
            settings=settings, session=session, store=store, resolve=loopback, emit=emit, worker="test"
        )
        outcome = await run_job(envelope(JOB_ID, req), "fast", ctx)
    return outcome, emitted, time.monotonic() - started


def leftovers(settings: Settings) -> list[Path]:
    """Partial files and ZIPs a job left in the store."""
    return [*settings.partial_directory.iterdir(), *Path(settings.store_directory).glob("*.zip")]


async def test_a_file_server_trickling_bytes_fails_the_job_at_job_timeout(store_dir: Path) -> None:
    """A byte every 0.5 s never trips the 2 s idle-read timeout; JOB_TIMEOUT (3 s) stops the build."""
    sent: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        return await trickle(request, b"x" * 10_000, 0.5, sent)

    settings = settings_for(store_dir, job_timeout=3.0, fetch_read_timeout=2.0)
    async with serving(handler) as base:
        outcome, _, took = await run(url_request(f"{base}/slow.csv"), settings)

    assert isinstance(outcome, PackageFailed), outcome
    assert outcome.error.startswith("The package took longer than the service allows (3 seconds)")
    assert 3.0 <= took < 8.0, took
    assert len(sent) >= 4, "the server was trickling when the job was stopped"
    assert leftovers(settings) == []


async def test_a_ckan_page_trickling_bytes_fails_the_job_at_job_timeout(store_dir: Path) -> None:
    """CKAN answers the row count at once, then trickles the first page: JOB_TIMEOUT stops the build."""
    sent: list[int] = []
    page = orjson.dumps({"success": True, "result": {"records": [], "fields": [], "limit": 5000}})

    async def handler(request: web.Request) -> web.StreamResponse:
        params = await request.json()
        if params.get("limit") == 0:
            fields = [{"id": name, "type": "text"} for name in ("_id", "name")]
            return web.json_response({"success": True, "result": {"fields": fields, "total": 10}})
        return await trickle(request, page, 0.5, sent)

    settings = settings_for(store_dir, job_timeout=3.0, fetch_read_timeout=2.0)
    async with serving(handler) as base:
        outcome, _, took = await run(datastore_request(f"{base}/api/3/action/datastore_search"), settings)

    assert isinstance(outcome, PackageFailed), outcome
    assert "took longer than the service allows (3 seconds)" in outcome.error
    assert 3.0 <= took < 8.0, took
    assert len(sent) >= 4
    assert leftovers(settings) == []


async def test_a_server_that_goes_silent_fails_the_download_at_the_idle_read_timeout(store_dir: Path) -> None:
    """Headers and a few bytes, then nothing: FETCH_READ_TIMEOUT catches it long before JOB_TIMEOUT."""
    stop = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"id,name\n")
        await stop.wait()  # never set: the server goes silent until the test stops it
        return resp

    settings = settings_for(store_dir, job_timeout=60.0, fetch_read_timeout=0.3)
    async with serving(handler) as base:
        outcome, _, took = await run(url_request(f"{base}/silent.csv"), settings)

    assert isinstance(outcome, PackageFailed), outcome
    assert "the server sent nothing for 0.3 seconds" in outcome.error
    assert took < 20.0
    assert leftovers(settings) == []


async def test_a_file_announced_over_max_download_bytes_fails_before_any_byte_is_stored(
    store_dir: Path,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 50_000)

    settings = settings_for(store_dir, max_download_bytes=10_000)
    async with serving(handler) as base:
        outcome, emitted, _ = await run(url_request(f"{base}/big.bin"), settings)

    assert isinstance(outcome, PackageFailed), outcome
    assert "(48.8 KiB) is larger than this service packages (9.8 KiB)" in outcome.error
    assert not [e for e in emitted if isinstance(e, PackageProgress) and e.bytes_done]
    assert leftovers(settings) == []


async def test_a_file_without_content_length_fails_once_its_body_passes_max_download_bytes(
    store_dir: Path,
) -> None:
    sent: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: the size is announced nowhere
        await resp.prepare(request)
        for _ in range(1_000):
            await resp.write(b"x" * 4096)
            sent.append(4096)
        await resp.write_eof()
        return resp

    settings = settings_for(store_dir, max_download_bytes=100_000)
    async with serving(handler) as base:
        outcome, _, _ = await run(url_request(f"{base}/stream.bin"), settings)

    assert isinstance(outcome, PackageFailed), outcome
    assert "is larger than this service packages (97.7 KiB)" in outcome.error
    assert leftovers(settings) == []


async def test_a_file_of_exactly_max_download_bytes_is_packaged(store_dir: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"y" * 10_000)
        await resp.write_eof()
        return resp

    settings = settings_for(store_dir, max_download_bytes=10_000)
    async with serving(handler) as base:
        outcome, _, _ = await run(url_request(f"{base}/exact.bin"), settings)

    assert isinstance(outcome, PackageCompleted), outcome
    assert list(settings.partial_directory.iterdir()) == []


async def test_a_ckan_page_over_max_page_bytes_fails_the_job(store_dir: Path) -> None:
    settings = settings_for(store_dir, page_size=500, max_page_bytes=20_000)
    async with serve_ckan({TABLE.resource_id: TABLE}) as api_url:
        outcome, _, _ = await run(datastore_request(api_url), settings)

    assert isinstance(outcome, PackageFailed), outcome
    assert outcome.error.startswith("One page of CKAN's answer (500 rows at most) is larger than this")
    assert "(19.5 KiB)" in outcome.error
    assert leftovers(settings) == []


async def test_ckan_pages_under_max_page_bytes_are_packaged(store_dir: Path) -> None:
    """The control: the same query with a cap the pages fit under."""
    settings = settings_for(store_dir, page_size=500, max_page_bytes=2_000_000)
    async with serve_ckan({TABLE.resource_id: TABLE}) as api_url:
        outcome, _, _ = await run(datastore_request(api_url), settings)

    assert isinstance(outcome, PackageCompleted), outcome
    assert outcome.rows == TABLE.rows
    assert list(settings.partial_directory.iterdir()) == []


async def test_a_ckan_trickling_its_row_count_does_not_hold_the_planner(store_dir: Path) -> None:
    """Planning gives CKAN one connect and one idle-read timeout in all, then picks the fast lane."""
    sent: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        return await trickle(request, b'{"success": true, "result": {"total": 999999}}', 0.2, sent)

    settings = settings_for(store_dir, fetch_connect_timeout=0.5, fetch_read_timeout=1.0, slow_request=10)
    async with serving(handler) as base, http_session(settings) as session:
        started = time.monotonic()
        lane = await plan_lane(
            envelope(JOB_ID, datastore_request(f"{base}/api/3/action/datastore_search")), settings, session
        )
        took = time.monotonic() - started

    assert lane == "fast"
    assert 1.5 <= took < 5.0, took
    assert len(sent) >= 5
