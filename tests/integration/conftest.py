"""Fixtures for integration tests: a local HTTP file server, an SMTP server, and the service's env."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from packager.dev.kafka import free_port
from tests.integration.support import SmtpSink, smtp_sink

SECRET = "integration-test-secret-0123456789"


@pytest.fixture
async def file_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder: (base URL, folder)."""
    folder = tmp_path / "files"
    folder.mkdir()
    app = web.Application()
    app.router.add_static("/files", folder)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/files", folder
    finally:
        await runner.cleanup()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """A real SMTP server collecting messages."""
    with smtp_sink(free_port()) as sink:
        yield sink


@pytest.fixture
def service_env(kafka_bootstrap: str, topic_prefix: str, store_dir: Path, smtp: SmtpSink) -> dict[str, str]:
    """Environment for `python -m packager ...` children of one test."""
    return {
        "PACKAGER_SECRET": SECRET,
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PACKAGER_TOPIC_PREFIX": topic_prefix,
        "PACKAGER_PARTITIONS": "4",
        "PACKAGER_STORE_DIRECTORY": str(store_dir),
        "PACKAGER_ALLOW_PRIVATE_URLS": "true",
        "PACKAGER_SMTP_HOST": "127.0.0.1",
        "PACKAGER_SMTP_PORT": str(smtp.port),
        "PACKAGER_PORT": str(free_port()),
        "PACKAGER_LOG_LEVEL": "INFO",
        # Several workers may run at once (in one test, or in parallel test runs): each takes a free port.
        "PACKAGER_METRICS_PORT": "0",
        # Workers stopped at the end of a test drain their builds briefly (ServiceProcess.stop waits 20 s).
        "PACKAGER_DRAIN_TIMEOUT": "5",
    }


@dataclass
class PrivateTarget:
    """A TCP server standing for a private service: it counts connections and answers nothing useful."""

    port: int
    connections: list[Any] = field(default_factory=list)


@pytest.fixture
async def private_target() -> AsyncIterator[PrivateTarget]:
    target = PrivateTarget(port=free_port())

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target.connections.append(writer.get_extra_info("peername"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", target.port)
    try:
        yield target
    finally:
        server.close()
        await server.wait_closed()
