"""Erasing a requester on real Kafka, with the service as separate processes (worker, projector, ingress).

The requester asks twice (one job emailed, one left pending while the worker is away), another requester
once; the operator erases the first with `ckanpackager erase`. Then: the pending job completes but its
email is not sent and its page says the requester was erased; the statistics are what they were, and a
replay of the whole log gives them again; no topic's records, no raw segment file of the broker, no log of
the processes, no view and no stored file holds the address, in clear, hex or base64; and the same address
asking again gets its download emailed, under a new data key.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from packager.adapters.kafka_log import Topics
from packager.domain.requesters import pseudonym
from streams.handlers import ERASED_REQUESTER
from tests.integration.conftest import SECRET
from tests.integration.support import ROOT, SmtpSink, read_topic, service, submit, wait_for_port
from tests.privacy_search import contains, files_under, leaks, search_files

pytestmark = [pytest.mark.kafka, pytest.mark.privacy]


async def post(port: int, path: str, **params: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}{path}", data={"secret": SECRET, **params}) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


async def job_page(port: int, job_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/jobs/{job_id}") as resp:
        return await resp.json() if resp.status == 200 else {}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 90) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def statistics(port: int) -> dict[str, Any]:
    """Every statistics answer, as an operator sees them."""
    return {
        "totals": (await post(port, "/statistics"))["totals"],
        "requests": (await post(port, "/statistics/requests"))["requests"],
        "errors": (await post(port, "/statistics/errors"))["errors"],
    }


async def topics_of(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()


async def run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, *argv], env=full, capture_output=True, text=True, timeout=180
    )


async def test_an_erased_requester_cannot_be_read_anywhere_and_statistics_and_replay_hold(
    kafka_bootstrap: str,
    kafka_data_dir: Path | None,
    service_env: dict[str, str],
    topic_prefix: str,
    store_dir: Path,
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "a.csv").write_bytes(b"a,b\n1,2\n")
    (folder / "b.csv").write_bytes(b"x\n" * 100)
    token = uuid.uuid4().hex[:12]
    email = f"Erase.Me-{token}@Example.org"
    other = f"keep-{token}@example.net"
    port = int(service_env["PACKAGER_PORT"])
    logs = tmp_path / "logs"

    def url_request(address: str, resource: str, name: str) -> dict[str, str]:
        return {"resource_id": resource, "resource_url": f"{base_url}/{name}", "email": address}

    async def emailed(job_id: str) -> bool:
        return bool((await job_page(port, job_id)).get("emailed"))

    with service(["projector"], service_env, logs), service(["ingress"], service_env, logs):
        wait_for_port(port)
        with service(["worker"], service_env, logs) as worker:
            first = await submit(port, "package_url", SECRET, **url_request(email, "res-a", "a.csv"))
            kept = await submit(port, "package_url", SECRET, **url_request(other, "res-a", "a.csv"))
            try:
                await smtp.wait_for(2, timeout=120)
            except TimeoutError:
                pytest.fail(f"not every job emailed.\nworker log:\n{worker.log()}")
            await eventually(lambda: emailed(first), "the first job's page to say emailed")
            await eventually(lambda: emailed(kept), "the other job's page to say emailed")
        assert {m["To"] for m in smtp.messages} == {email, other}

        # The worker is away: this request waits, and its email is pending when the requester is erased.
        pending = await submit(port, "package_url", SECRET, **url_request(email, "res-b", "b.csv"))

        async def counted() -> bool:
            return (await post(port, "/statistics"))["totals"]["*"]["requests"] == 3

        await eventually(counted, "the pending request to be counted")
        before = await statistics(port)
        assert before["totals"]["*"] == {"requests": 3, "errors": 0, "emails": 2}
        assert all("@" not in entry["email"] for entry in before["requests"])  # pseudonyms by default

        operator = ("-m", "packager.cli.operator", "-D", "-p", f"http://127.0.0.1:{port}", "-s", SECRET)
        erase = await run(*operator, "erase", email, env={})
        assert erase.returncode == 0, erase.stdout + erase.stderr
        assert "1 data key(s) destroyed" in erase.stdout and email.lower() not in erase.stdout.lower()

        async def shown_erased() -> bool:
            return bool((await job_page(port, first)).get("requester_erased"))

        await eventually(shown_erased, "the first job's page to show its requester erased")

        with service(["worker"], service_env, logs) as worker:

            async def settled_unsent() -> bool:
                page = await job_page(port, pending)
                return page.get("state") == "completed" and page.get("email_error") == ERASED_REQUESTER

            await eventually(settled_unsent, "the pending job to complete without an email")
            assert len(smtp.messages) == 2, "an email went to an erased requester"
            page = await job_page(port, pending)
            assert page["requester_erased"] is True and page["emailed"] is False
            assert not (await job_page(port, kept))["requester_erased"]

            after = await statistics(port)
            assert after == before

            # The same address asks again: a new key, and the email goes out.
            again = await submit(port, "package_url", SECRET, **url_request(email, "res-c", "a.csv"))
            await smtp.wait_for(3, timeout=120)
            assert smtp.messages[-1]["To"] == email
            await eventually(lambda: emailed(again), "the new job's page to say emailed")
            assert not (await job_page(port, again))["requester_erased"]
            later = await post(port, "/statistics")
            # One request more; the same person under the same pseudonym: no new requester.
            assert later["totals"]["*"] == {"requests": 4, "errors": 0, "emails": 2}

    env = {**service_env}
    # A replay from the start of the log: the views it builds equal the live ones, statistics included.
    audit = await run("-m", "packager", "replay", "verify", env=env)
    assert audit.returncode == 0 and "identical" in audit.stdout, audit.stdout + audit.stderr
    replayed = await run("-m", "packager", "replay", "stats", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert orjson.loads(replayed.stdout)["totals"] == later["totals"]

    # Every topic's records (requests, events, lanes, analytics, dead letters, keys, table changelogs).
    topics = await topics_of(kafka_bootstrap, topic_prefix)
    assert Topics(topic_prefix).requester_keys in topics and len(topics) >= 7, topics
    for topic in topics:
        for key, value in await read_topic(kafka_bootstrap, topic):
            assert not leaks((key or b"") + b"\n" + (value or b""), email), f"the address is in {topic}"
    requests = [orjson.loads(v) for _, v in await read_topic(kafka_bootstrap, Topics(topic_prefix).requests)]
    who = {r["payload"]["requester"] for r in requests}
    assert who == {pseudonym(SECRET, email), pseudonym(SECRET, other)}

    # Raw files: the broker's segments of this test's topics (and consumer offsets) and its log, every
    # process's log, the views database (with its WAL), the store (ZIPs, partial files, Faust's data).
    roots = [logs, store_dir]
    if kafka_data_dir is not None:
        roots += segment_directories(kafka_data_dir, topic_prefix)
        assert contains(roots, first.encode()), "the search did not read the broker's segments"
    assert list(files_under([store_dir / ".readmodel"])), "the search did not find the views"
    found = await asyncio.to_thread(search_files, roots, email)
    assert not found, f"the address is readable in {found[:5]}"


def segment_directories(data_dir: Path, prefix: str) -> list[Path]:
    """The broker's partition directories of the test's topics and of the consumer offsets, and the
    broker's own log files (beside its data directory)."""
    own_logs = [p for p in data_dir.parent.iterdir() if p.is_file()]
    return own_logs + [p for p in data_dir.iterdir() if p.name.startswith((prefix, "__consumer_offsets"))]
