"""JOB_TIMEOUT and the partial-file sweep on the real service: ingress and worker as processes, a real broker.

A local server trickles a file one byte every 0.5 s (never silent long enough for the idle-read timeout);
the worker runs with JOB_TIMEOUT at 4 s. The job must end with one `PackageFailed` saying the package took
too long, the requester must get the failure email, and the partial directory must be empty: the job's own
download removed, and an old file a killed build left there swept when the worker started.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import web

from packager.adapters.kafka_log import Topics
from packager.dev.kafka import free_port
from tests.integration.conftest import SECRET
from tests.integration.support import (
    SmtpSink,
    read_events,
    service,
    submit,
    wait_for_event,
    wait_for_port,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
async def trickling_server() -> AsyncIterator[tuple[str, list[float]]]:
    """(URL of a file sent one byte every 0.5 s, the times bytes were sent)."""
    sent: list[float] = []

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100000"})
        await resp.prepare(request)
        try:
            for _ in range(100_000):
                await resp.write(b"x")
                sent.append(time.monotonic())
                await asyncio.sleep(0.5)
        except ConnectionError:
            pass  # the worker gave up: exactly what the test wants
        return resp

    app = web.Application()
    app.router.add_get("/slow.csv", trickle)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}/slow.csv", sent
    finally:
        await runner.cleanup()


async def test_a_trickling_file_fails_at_job_timeout_and_leaves_no_partial_file(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    trickling_server: tuple[str, list[float]],
    smtp: SmtpSink,
    tmp_path: Path,
    store_dir: Path,
) -> None:
    url, sent = trickling_server
    partial = store_dir / ".partial"
    partial.mkdir()
    left_by_a_kill = partial / "0c1d2e3f-dead-4bee-8f00-000000000000.download"
    left_by_a_kill.write_bytes(b"x" * 1_600_000)
    an_hour_ago = time.time() - 3600
    os.utime(left_by_a_kill, (an_hour_ago, an_hour_ago))
    env = {
        **service_env,
        "PACKAGER_JOB_TIMEOUT": "4",
        "PACKAGER_FETCH_READ_TIMEOUT": "3",
        "PACKAGER_JANITOR_INTERVAL": "3600",  # so only the sweep at start can remove the old file
    }
    port = int(env["PACKAGER_PORT"])

    with (
        service(["worker"], env, tmp_path / "logs") as worker,
        service(["ingress"], env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        job_id = await submit(
            port,
            "package_url",
            SECRET,
            resource_id="res-slow",
            resource_url=url,
            email="requester@example.org",
        )
        try:
            failed = await wait_for_event(
                kafka_bootstrap, topic_prefix, lambda e: e.job_id == job_id and e.type == "PackageFailed"
            )
            [message] = await smtp.wait_for(1, timeout=60)
        except TimeoutError:
            pytest.fail(f"the job did not fail and email.\nworker log:\n{worker.log()}")

    error = failed.payload.error  # type: ignore[attr-defined]
    assert error.startswith("The package took longer than the service allows (4 seconds)"), error
    assert "could not be prepared" in message["Subject"]
    assert "Preparing the data took too long." in message.get_content()
    assert len(sent) >= 5, "the file was trickling (so the idle-read timeout alone could not stop it)"
    assert list(partial.iterdir()) == [], "partial files were left behind"
    assert "removed 1 partial file(s)" in worker.log_file.read_text()

    events = [
        e for e in await read_events(kafka_bootstrap, Topics(topic_prefix).events) if e.job_id == job_id
    ]
    counts = Counter(e.type for e in events)
    assert (counts["PackageFailed"], counts["PackageCompleted"], counts["EmailSent"]) == (1, 0, 1)
    started = next(e for e in events if e.type == "PackageStarted")
    took = (at(failed.occurred_at) - at(started.occurred_at)).total_seconds()
    assert 4 <= took < 8, took


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
