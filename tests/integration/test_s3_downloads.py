"""`/downloads/...` over an S3-compatible store (s3proxy): the emailed link still names the service, which
streams the object (with Range) or redirects to a short-lived presigned URL, and answers 404/410/416 as it
does over the folder store (tests/unit/test_ingress.py)."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.s3_store import S3Store
from packager.core.settings import Settings, load_settings
from packager.http.ingress import create_app
from tests.unit.samples import SECRET

DATA = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def settings(s3proxy_server: Any, store_dir: Path) -> Settings:
    env = s3proxy_server.settings_env(prefix=f"downloads-{uuid.uuid4().hex[:12]}")
    return load_settings(env, secret=SECRET, store_directory=str(store_dir))


@pytest.fixture
async def published(settings: Settings) -> str:
    store = S3Store.from_settings(settings)
    partial = store.partial_path("job", ".zip.partial")
    partial.write_bytes(DATA)
    return (await store.publish(partial, "job.zip")).name


async def client_for(settings: Settings) -> AsyncIterator[TestClient]:
    app = create_app(settings, event_log=InMemoryEventLog())
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
async def streaming(settings: Settings) -> AsyncIterator[TestClient]:
    async for client in client_for(settings):
        yield client


@pytest.fixture
async def redirecting(settings: Settings) -> AsyncIterator[TestClient]:
    async for client in client_for(dataclasses.replace(settings, s3_downloads="redirect")):
        yield client


async def test_the_ingress_streams_the_object_whole_and_in_ranges(
    streaming: TestClient, published: str
) -> None:
    resp = await streaming.get(f"/downloads/{published}")
    assert resp.status == 200 and await resp.read() == DATA
    assert resp.headers["Content-Type"] == "application/zip"
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{published}"'
    assert resp.headers["Accept-Ranges"] == "bytes"

    resp = await streaming.get(f"/downloads/{published}", headers={"Range": "bytes=100-199"})
    assert resp.status == 206 and await resp.read() == DATA[100:200]
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    resp = await streaming.get(f"/downloads/{published}", headers={"Range": "bytes=-10"})
    assert resp.status == 206 and await resp.read() == DATA[-10:]
    resp = await streaming.get(f"/downloads/{published}", headers={"Range": f"bytes={len(DATA) - 5}-"})
    assert resp.status == 206 and await resp.read() == DATA[-5:]
    resp = await streaming.get(f"/downloads/{published}", headers={"Range": f"bytes={len(DATA)}-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(DATA)}"

    # A resumed download whose copy changed meanwhile gets the whole file again (If-Range).
    resp = await streaming.get(
        f"/downloads/{published}", headers={"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert resp.status == 200 and len(await resp.read()) == len(DATA)
    resp = await streaming.head(f"/downloads/{published}")
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(DATA))


async def test_a_redirect_goes_to_a_short_lived_presigned_url(
    redirecting: TestClient, published: str
) -> None:
    resp = await redirecting.get(f"/downloads/{published}", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Cache-Control"] == "no-store"
    location = resp.headers["Location"]
    assert "X-Amz-Expires=300" in location and "X-Amz-Signature=" in location
    async with aiohttp.ClientSession() as http:
        async with http.get(location, headers={"Range": "bytes=5-14"}) as direct:
            assert direct.status == 206 and await direct.read() == DATA[5:15]
        async with http.get(location) as direct:
            assert direct.status == 200 and await direct.read() == DATA


async def test_expired_gone_and_unknown_links(settings: Settings, published: str) -> None:
    async for client in client_for(dataclasses.replace(settings, cache_time=0)):
        resp = await client.get(f"/downloads/{published}")
        assert resp.status == 410  # past CACHE_TIME: the object may still be there, the link is not
    await S3Store.from_settings(settings).remove(published)
    async for client in client_for(settings):
        assert (await client.get(f"/downloads/{published}")).status == 404  # no views here to say "built"
        assert (await client.get("/downloads/never-built.zip")).status == 404
