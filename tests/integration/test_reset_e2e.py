"""`ckanpackager reset requests` on the real service: ingress and projector as processes, a real broker.

One request is counted; the operator resets the requests statistics with the command line; the totals and
the listing then count and list only the request made after it, while the log keeps both.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from packager.adapters.kafka_log import Topics
from tests.integration.conftest import SECRET
from tests.integration.support import ROOT, read_events, service, submit, wait_for_port

pytestmark = [pytest.mark.kafka, pytest.mark.features]


async def statistics(port: int, path: str = "/statistics") -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}{path}", data={"secret": SECRET}) as resp,
    ):
        assert resp.status in (200, 503), await resp.text()
        return dict(await resp.json()) if resp.status == 200 else {}


async def requests_counted(port: int, expected: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while True:
        totals = (await statistics(port)).get("totals") or {}
        if totals.get("*", {}).get("requests") == expected:
            return
        assert time.monotonic() < deadline, f"requests counted: {totals}"
        await asyncio.sleep(0.2)


async def test_a_reset_counts_requests_from_then_on_and_keeps_the_log(
    kafka_bootstrap: str, topic_prefix: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    port = int(service_env["PACKAGER_PORT"])
    asked = {"resource_id": "res-1", "resource_url": "http://127.0.0.1:9/a.csv"}
    with (
        service(["projector"], service_env, tmp_path / "logs"),
        service(["ingress"], service_env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        await submit(port, "package_url", SECRET, **asked, email="before@example.org")
        await requests_counted(port, 1)
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "packager.cli.operator", "-D", "-p", f"127.0.0.1:{port}"),
            *("-s", SECRET, "reset", "requests", "--yes"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=str(ROOT),
        )
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, err.decode()
        assert "The requests statistics count from" in out.decode()
        await requests_counted(port, 0)
        after = await submit(port, "package_url", SECRET, **asked, email="after@example.org")
        await requests_counted(port, 1)
        listed = (await statistics(port, "/statistics/requests"))["requests"]
        totals = (await statistics(port))["totals"]
    assert len(listed) == 1 and totals["res-1"]["requests"] == 1
    assert totals["*"]["emails"] == 2  # unique requesters are about people: both still counted
    requests = await read_events(kafka_bootstrap, Topics(topic_prefix).requests)
    assert len(requests) == 2 and requests[-1].job_id == after  # nothing left the log
    resets = [
        e
        for e in await read_events(kafka_bootstrap, Topics(topic_prefix).events)
        if e.type == "StatisticsReset"
    ]
    assert [e.payload.which for e in resets] == ["requests"]  # type: ignore[attr-defined]
