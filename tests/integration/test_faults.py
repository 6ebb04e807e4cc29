"""The fault suite: the service as processes on a real broker, broken on purpose, counted afterwards.

Each case checks the invariants of DESIGN.md by counting events and emails, not by the absence of an error:
every accepted request reaches exactly one terminal event and its requester exactly one email, except
inside the documented windows (README, "Delivery guarantees"), where a duplicate is counted and bounded.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller

from packager.dev.kafka import free_port
from packager.events import TERMINAL_TYPES, Envelope
from packager.kafka_log import Topics
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, end_offsets, read_events, service, wait_for_port

pytestmark = pytest.mark.kafka


class SlowSink(SmtpSink):
    """Takes its time over each message, so a batch is still being mailed when the worker is killed."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


async def post(port: int, **params: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/package_url", data={"secret": SECRET, **params}) as resp,
    ):
        body = await resp.json()
    assert resp.status == 200, body
    return str(body["job_id"])


def emailed_jobs(sink: SmtpSink) -> Counter[str]:
    """How many emails each job id got (from the download links in the plain-text parts)."""
    text = "".join(m.get_body(("plain",)).get_content() for m in sink.messages)  # type: ignore[union-attr]
    return Counter(re.findall(r"/downloads/([0-9a-f-]{36})\.zip", text))


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def explain_missing(bootstrap: str, prefix: str, missing: set[str]) -> str:
    """Where the records of un-emailed jobs sit, against the worker group's committed offsets."""
    topics = Topics(prefix)
    lines = []
    for topic in (topics.lane("fast"), topics.lane("slow"), topics.events):
        ends = await end_offsets(bootstrap, topic)
        committed = await committed_offsets(bootstrap, f"{prefix}-worker", topic, len(ends))
        lines.append(f"{topic}: ends {ends} committed {committed}")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in ends]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            done = 0
            while done < sum(ends.values()):
                for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                    for m in batch:
                        done += 1
                        if any(job.encode() in m.value for job in missing):
                            lines.append(f"  p{tp.partition}@{m.offset}: {m.value[:110]!r}")
        finally:
            await consumer.stop()
    return "\n".join(lines)


def terminal_counts(events: list[Envelope], jobs: list[str]) -> Counter[str]:
    return Counter(e.job_id for e in events if e.type in TERMINAL_TYPES and e.job_id in jobs)


async def test_a_worker_killed_mid_batch_loses_nothing_and_mails_each_job_once(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    """kill -9 while 20 jobs of mixed sizes are packaged and mailed; start it again; count."""
    base_url, folder = file_server
    smtp_port = free_port()
    sink = SlowSink(port=smtp_port)
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    env = {**service_env, "PACKAGER_SMTP_PORT": str(smtp_port), "PACKAGER_SESSION_TIMEOUT": "8"}
    port = int(env["PACKAGER_PORT"])
    count = 20
    for n in range(count):
        size = (n % 5) * 4_000_000 + 100  # 100 bytes to 16 MB
        (folder / f"k{n}.bin").write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    try:
        with service(["ingress"], env, tmp_path / "logs"):
            wait_for_port(port)
            with service(["worker"], env, tmp_path / "logs") as worker:
                await worker.wait_for_output("[^Worker]: Ready")
                jobs = [
                    await post(
                        port,
                        resource_id=f"k{n}",
                        resource_url=f"{base_url}/k{n}.bin",
                        email=f"k{n}@example.org",
                    )
                    for n in range(count)
                ]
                await sink.wait_for(3, timeout=120)
                worker.stop(sig_kill=True)  # kill -9 in the middle of the batch
                first_log = worker.log_file
            sent_before_restart = len(sink.messages)
            with service(["worker"], env, tmp_path / "logs") as restarted:
                try:
                    await sink.wait_for(count, timeout=180)
                except TimeoutError:
                    missing = set(jobs) - set(emailed_jobs(sink))
                    where = await explain_missing(kafka_bootstrap, topic_prefix, missing)
                    (tmp_path / "diagnosis.txt").write_text(where)
                    pytest.fail(
                        f"emails missing after the restart: {missing}\n{where}\n"
                        f"first worker: {first_log}\nrestarted: {restarted.log_file}"
                    )
                await asyncio.sleep(5)  # let any duplicate arrive
    finally:
        controller.stop()
    assert sent_before_restart < count, "the kill came too late to test anything"

    per_job = emailed_jobs(sink)
    assert set(per_job) == set(jobs), "a job was never emailed"
    duplicates = sum(n - 1 for n in per_job.values())
    # The documented window: an email the SMTP server accepted while its record was not yet flushed. One
    # mailer sends one message at a time, so one kill repeats at most one email.
    assert duplicates <= 1, f"{duplicates} duplicate emails ({per_job})"

    events = await read_events(kafka_bootstrap, Topics(topic_prefix).events)
    terminal = terminal_counts(events, jobs)
    assert set(terminal) == set(jobs), "a job never reached a terminal event"
    # A job whose terminal event was acknowledged just before the kill but whose table record was not yet
    # flushed runs again: one packer runs one job at a time, so at most one per lane.
    assert sum(n - 1 for n in terminal.values()) <= 2, terminal
    assert {e.job_id for e in events if e.type == "EmailSent"} == set(jobs)
