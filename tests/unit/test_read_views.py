"""The ingress's read endpoints on SQLite views: answers, the live job stream, and views not there yet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters import viewreads
from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.resolver import system_resolver
from packager.core.settings import Settings, load_settings
from packager.domain.events import EmailSent, PackageQueued, PackageRequested, envelope
from packager.domain.requesters import pseudonym
from packager.http.ingress import AccessLog, create_app
from tests.unit.samples import SECRET, attach_views, completed, fill_views

JOB = "0b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d70"


def requested() -> PackageRequested:
    return PackageRequested(
        kind="url", cache_key="ck", resource_id="r1", email="Ann@Example.org", ckan_host="h", request={}
    )


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(store_dir))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    app = create_app(settings, event_log=InMemoryEventLog(), resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_the_endpoints_answer_from_the_views(settings: Settings, client: TestClient) -> None:
    fill_views(
        settings,
        [
            ("t.requests", 0, 0, envelope(JOB, requested(), occurred_at="2026-01-01T00:00:01.000Z")),
            ("t.events", 0, 0, envelope(JOB, PackageQueued(cache_key="ck", lane="fast", attempt=1))),
        ],
    )
    resp = await client.get(f"/jobs/{JOB}")
    # One URL answers a page or JSON by the Accept header: caches must keep them apart.
    assert (resp.headers["Vary"], resp.headers["Cache-Control"]) == ("Accept", "no-store")
    page = await client.get(f"/jobs/{JOB}", headers={"Accept": "text/html"})
    assert page.content_type == "text/html" and page.headers["Vary"] == "Accept"
    job = await resp.json()
    assert (job["state"], job["lane"], job["resource_id"], job["download_url"]) == (
        "queued",
        "fast",
        "r1",
        None,
    )
    # A pseudonym and the domain, never the address (the page needs no secret).
    assert job["requester"].startswith("requester-") and job["requester_domain"] == "example.org"
    assert job["requester_erased"] is False and "ann@" not in orjson.dumps(job).decode().lower()
    totals = await (await client.post("/statistics", data={"secret": SECRET})).json()
    one = {"requests": 1, "errors": 0, "emails": 1}
    assert totals["totals"] == {"*": one, "r1": one}
    listed = await (
        await client.post("/statistics/requests", data={"secret": SECRET, "email": "ANN@example.org"})
    ).json()
    # Pseudonyms by default (ANONYMIZE_EMAILS); the filter takes the address, normalised.
    assert [r["email"] for r in listed["requests"]] == [pseudonym(SECRET, "ann@example.org")]
    assert (await client.get("/jobs/00000000-0000-0000-0000-000000000000")).status == 404


async def test_the_event_stream_follows_the_job_until_it_is_finished(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(viewreads, "WATCH_HEARTBEAT", 0.3)
    fill_views(settings, [("t.requests", 0, 0, envelope(JOB, requested()))])
    resp = await client.get(f"/jobs/{JOB}/events")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
    assert orjson.loads(first.split(b"data: ", 1)[1])["state"] == "queued"
    assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10) == b": still waiting\n\n"
    # The projector folds the completion: the stream shows it, and follows on until the email is sent
    # (a page that stopped at the completion would say "not sent yet" for ever).
    (Path(settings.store_directory) / f"{JOB}.zip").write_bytes(b"PK")
    fill_views(settings, [("t.events", 0, 0, envelope(JOB, completed(zip_file_name=f"{JOB}.zip")))])
    done = orjson.loads((await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)).split(b"data: ", 1)[1])
    assert (done["state"], done["emailed"], done["display"]["state"]) == ("completed", False, "completed")
    assert done["display"]["email"] == "Being sent…"
    assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10) == b": still waiting\n\n"
    sent = EmailSent(cache_key="ck", about="PackageCompleted", message_id="<m@x>", attempts=1)
    fill_views(settings, [("t.events", 0, 1, envelope(JOB, sent))])
    rest = await asyncio.wait_for(resp.content.read(), 10)
    events = [block for block in rest.split(b"\n\n") if block.startswith(b"event:")]
    assert orjson.loads(events[0].split(b"data: ", 1)[1])["emailed"] is True
    assert events[-1] == b"event: end\ndata: {}"


async def test_before_any_projector_ran_the_read_endpoints_answer_503(client: TestClient) -> None:
    resp = await client.post("/statistics", data={"secret": SECRET})
    assert resp.status == 503
    assert "views cannot be read" in (await resp.json())["message"]
    assert (await client.get(f"/jobs/{JOB}")).status == 503
    assert (await client.get("/downloads/never-built.zip")).status == 404


async def test_a_page_closed_during_a_job_is_logged_at_debug_never_as_an_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(viewreads, "WATCH_HEARTBEAT", 0.2)
    fill_views(settings, [("t.requests", 0, 0, envelope(JOB, requested()))])
    app = create_app(settings, event_log=InMemoryEventLog(), resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    caplog.set_level(logging.DEBUG)
    # Served as `packager ingress` serves it (a TestServer cancels handlers when their client goes).
    runner = web.AppRunner(app, access_log_class=AccessLog)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /jobs/{JOB}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        assert b"event: job" in await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        writer.close()  # the tab is closed: the next heartbeat finds no one
        await writer.wait_closed()
        deadline = asyncio.get_running_loop().time() + 10
        while f"/jobs/{JOB}/events" not in caplog.text:  # the access line, written once the handler ended
            assert asyncio.get_running_loop().time() < deadline, caplog.text
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert [r.levelno for r in gone] == [logging.DEBUG]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    [access] = [r for r in caplog.records if f"/jobs/{JOB}/events" in r.getMessage()]
    assert access.status == 200  # type: ignore[attr-defined]
