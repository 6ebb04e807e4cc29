"""A public resource URL that redirects into private address space fails the job and never connects there.

The validation at the ingress only sees the URL the requester gave; the packer checks every redirect hop with
the same rules. Real HTTP servers on 127.0.0.1 play both parts: `files.example.org` (which the job's resolver
calls public, and the HTTP client's resolver sends to 127.0.0.1) answers with redirects, and a bare TCP server
stands for the private target and counts every connection it gets.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from packager.adapters.store import FileStore
from packager.core.settings import load_settings
from packager.dev.kafka import free_port
from packager.domain.events import Event, PackageCompleted, PackageFailed, PackageRequested, envelope
from packager.service.packaging import JobContext, run_job
from tests.integration.conftest import PrivateTarget

SECRET = "redirect-test-secret-0123456789"
PUBLIC_NAMES = {"files.example.org": ["93.184.216.34"], "other.example.org": ["93.184.216.35"]}
PRIVATE_NAMES = {"localhost": ["127.0.0.1"], "internal.example.org": ["10.0.0.7"]}


async def job_resolver(host: str) -> list[str]:
    """What the packer's SSRF check believes each name resolves to."""
    if host in PUBLIC_NAMES:
        return PUBLIC_NAMES[host]
    if host in PRIVATE_NAMES:
        return PRIVATE_NAMES[host]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class LoopbackResolver(AbstractResolver):
    """Where the HTTP client really connects: every test name is served on 127.0.0.1."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0)
        ]

    async def close(self) -> None:
        return None


@pytest.fixture
async def public_server() -> AsyncIterator[int]:
    """`files.example.org`: `/to?url=...` redirects there (302), `/data.csv` is a file."""

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["url"])

    async def data(request: web.Request) -> web.Response:
        return web.Response(body=b"id,name\n1,x\n", content_type="text/csv")

    app = web.Application()
    app.router.add_get("/to", redirect)
    app.router.add_get("/data.csv", data)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def run_url_job(url: str, store_dir: Path) -> tuple[Event, list[Event]]:
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir), allow_private_urls=False)
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    request = envelope(
        "0b7d3c1e-7a1f-4c55-9d1e-2f3a4b5c6d7e",
        PackageRequested(
            kind="url",
            cache_key="redirect-test",
            resource_id="r1",
            email="someone@example.org",
            ckan_host="files.example.org",
            request={"resource_id": "r1", "resource_url": url, "key_sealed": ""},
        ),
    )
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        ctx = JobContext(
            settings=settings,
            session=session,
            store=FileStore(store_dir, settings.partial_directory),
            resolve=job_resolver,
            emit=emit,
            worker="test",
        )
        outcome = await run_job(request, "fast", ctx)
    return outcome, emitted


async def test_a_redirect_to_a_public_host_is_followed(public_server: int, store_dir: Path) -> None:
    """The control: the same setup with an allowed target packages the file."""
    target = f"http://other.example.org:{public_server}/data.csv"
    url = str(URL(f"http://files.example.org:{public_server}/to").with_query({"url": target}))
    outcome, _ = await run_url_job(url, store_dir)
    assert isinstance(outcome, PackageCompleted), outcome
    assert (store_dir / outcome.zip_file_name).is_file()


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{port}/admin",
        "http://localhost:{port}/admin",
        "http://internal.example.org:{port}/admin",
        "http://[::ffff:127.0.0.1]:{port}/admin",
        "http://[::1]:{port}/admin",
        "http://[fe80::1]:{port}/admin",
        "http://169.254.169.254/latest/meta-data/",
        "//127.0.0.1:{port}/admin",  # scheme-relative
        # two hops: first to another public host, which then points inside
        "http://other.example.org:{public}/to?url=http://127.0.0.1:{port}/admin",
    ],
)
async def test_a_redirect_into_private_space_fails_the_job_without_connecting(
    public_server: int, private_target: PrivateTarget, store_dir: Path, location: str
) -> None:
    target = location.format(port=private_target.port, public=public_server)
    url = str(URL(f"http://files.example.org:{public_server}/to").with_query({"url": target}))
    outcome, emitted = await run_url_job(url, store_dir)
    assert isinstance(outcome, PackageFailed), outcome
    assert outcome.error_type == "PackagingError"
    assert "private, loopback or link-local" in outcome.error
    assert outcome.error.startswith("The file cannot be fetched")
    assert private_target.connections == []
    assert not await asyncio.to_thread(lambda: list(store_dir.glob("*.zip")))
    assert not [e for e in emitted if isinstance(e, PackageCompleted)]
