"""`packager dev up` prints "ckanpackager is up" only once a request would succeed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from packager.dev.kafka import free_port
from tests.integration.conftest import SECRET
from tests.integration.support import ROOT

pytestmark = pytest.mark.kafka


async def test_up_is_printed_only_when_status_and_requests_succeed(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, file_server: tuple[str, Path]
) -> None:
    base_url, folder = file_server
    (folder / "f.csv").write_bytes(b"a,b\n1,2\n")
    port = free_port()
    env = {
        **os.environ,
        "PACKAGER_SECRET": SECRET,
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,  # the session's broker: dev up starts none
        "PACKAGER_TOPIC_PREFIX": topic_prefix,
        "PACKAGER_PARTITIONS": "2",
        "PACKAGER_PORT": str(port),
        "PACKAGER_METRICS_PORT": str(free_port()),
        "PACKAGER_DRAIN_TIMEOUT": "3",
    }
    proc, printed = await _start_up(tmp_path / "var", env)
    try:
        # Right after "up", as a new user would: the status and a package request both succeed.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/status", params={"secret": SECRET}) as resp:
                status_body = await resp.json()
                assert resp.status == 200, status_body
            assert status_body["worker_count"] >= 1
            data = {
                "secret": SECRET,
                "resource_id": "r1",
                "resource_url": f"{base_url}/f.csv",
                "email": "a@example.org",
            }
            async with http.post(f"http://127.0.0.1:{port}/package_url", data=data) as resp:
                assert resp.status == 200, await resp.text()
        assert any("Starting the projector, the ingress and the worker" in line for line in printed)

        # The audit and the operator command on the running stack, from the stack's folder, with no
        # setting exported by hand: both read var/stack.toml.
        async def from_the_stacks_folder(*argv: str) -> tuple[int, str]:
            bare = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith("PACKAGER_") and k != "CKANPACKAGER_SECRET"
            }
            run = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *argv,
                cwd=tmp_path,
                env={**bare, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(run.communicate(), 120)
            return run.returncode or 0, out.decode()

        code, out = await from_the_stacks_folder("packager", "replay", "verify")
        assert code == 0 and "identical" in out, out
        code, out = await from_the_stacks_folder("packager.cli.operator", "--no-defaults", "status")
        assert code == 0 and f"service             http://127.0.0.1:{port}" in out, out

        # A second `dev up` on the same folder is refused at once, and the first stack keeps working.
        second = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "packager", "dev", "up", "--var", str(tmp_path / "var")),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        said, _ = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 2, said.decode()
        assert "a stack is already running from" in said.decode()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/status", params={"secret": SECRET}) as resp,
        ):
            assert resp.status == 200, await resp.text()
    finally:
        rest = await _stop_up(proc)
    assert "ckanpackager stopped" in rest, rest


async def _start_up(var: Path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, list[str]]:
    """`packager dev up --var VAR`, read until it says it is up."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "packager",
        "dev",
        "up",
        "--var",
        str(var),
        "--mail-port",
        str(free_port()),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    printed: list[str] = []
    deadline = time.monotonic() + 240
    while "ckanpackager is up" not in printed:
        if time.monotonic() >= deadline:
            await _stop_up(proc)
            raise AssertionError("dev up never said it was up:\n" + "\n".join(printed))
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        if not line:
            raise AssertionError("dev up ended:\n" + "\n".join(printed))
        printed.append(line.decode().rstrip())
    return proc, printed


async def _stop_up(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM, as Ctrl-C: dev up stops its children and its broker (data kept), then itself."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 120)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.stdout is not None
    return (await proc.stdout.read()).decode()


async def test_a_restart_on_a_wiped_broker_with_the_same_var_answers_from_the_new_log(
    tmp_path: Path, file_server: tuple[str, Path]
) -> None:
    """The views outlive the broker in `var/`: after a wipe they are rebuilt from the new, empty log."""
    base_url, folder = file_server
    (folder / "f.csv").write_bytes(b"a,b\n1,2\n")
    port = free_port()
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("PACKAGER_", "KAFKA_"))}
    env = {
        **bare,
        "PACKAGER_SECRET": SECRET,  # no bootstrap servers: dev up starts its own broker in var/kafka
        "PACKAGER_PARTITIONS": "2",
        "PACKAGER_PORT": str(port),
        "PACKAGER_METRICS_PORT": str(free_port()),
        "PACKAGER_DRAIN_TIMEOUT": "3",
    }
    var = tmp_path / "var"

    async def package(http: aiohttp.ClientSession, email: str) -> str:
        data = {"secret": SECRET, "resource_id": "r1", "resource_url": f"{base_url}/f.csv", "email": email}
        async with http.post(f"http://127.0.0.1:{port}/package_url", data=data) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return str(body["job_id"])

    async def page(http: aiohttp.ClientSession, job_id: str) -> tuple[int, dict[str, object]]:
        async with http.get(f"http://127.0.0.1:{port}/jobs/{job_id}") as resp:
            return resp.status, await resp.json()

    async def until_emailed(http: aiohttp.ClientSession, job_id: str) -> None:
        deadline = time.monotonic() + 120
        while True:
            status, body = await page(http, job_id)
            if status == 200 and body["state"] == "completed" and body["emailed"]:
                return
            assert time.monotonic() < deadline, f"job {job_id}: {status} {body}"
            await asyncio.sleep(0.5)

    async def answers(http: aiohttp.ClientSession) -> tuple[dict[str, Any], dict[str, Any]]:
        async with http.get(f"http://127.0.0.1:{port}/status", params={"secret": SECRET}) as resp:
            status = await resp.json()
        async with http.post(f"http://127.0.0.1:{port}/statistics", data={"secret": SECRET}) as resp:
            statistics = await resp.json()
        return status, statistics

    proc, _ = await _start_up(var, env)
    try:
        async with aiohttp.ClientSession() as http:
            first = await package(http, "ann@example.org")
            await until_emailed(http, first)
            await package(http, "bob@example.org")
    finally:
        out = await _stop_up(proc)
    assert "ckanpackager stopped" in out, out
    wipe = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "packager", "dev", "kafka", "stop", "--wipe", "--state-dir", str(var / "kafka")),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    wiped, _ = await asyncio.wait_for(wipe.communicate(), 60)
    assert wipe.returncode == 0 and b"data removed" in wiped, wiped

    proc, _ = await _start_up(var, env)
    try:
        async with aiohttp.ClientSession() as http:
            second = await package(http, "cat@example.org")
            await until_emailed(http, second)
            # Only what the new log holds: the old jobs and counts went with the old log.
            assert (await page(http, first))[0] == 404
            status, statistics = await answers(http)
            assert (status["processed_requests"], status["queue_length"]) == (1, 0), status
            assert statistics["totals"]["*"] == {"requests": 1, "errors": 0, "emails": 1}, statistics
    finally:
        out = await _stop_up(proc)
    assert "ckanpackager stopped" in out, out
