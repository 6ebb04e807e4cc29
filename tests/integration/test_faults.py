"""The fault suite: the service as processes on a real broker, broken on purpose, counted afterwards.

Each case checks the invariants of DESIGN.md by counting events and emails, not by the absence of an error:
every accepted request reaches exactly one terminal event and its requester exactly one email, except
inside the documented windows (docs/delivery.md, "Windows left"), where a duplicate is counted and bounded.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from packager.adapters.kafka_log import LANES, Topics
from packager.dev import kafka as dev_kafka
from packager.dev.ckan_server import Faults, SyntheticTable, serve_ckan
from packager.dev.kafka import free_port
from packager.domain.events import TERMINAL_TYPES, Envelope
from tests.integration.conftest import SECRET
from tests.integration.support import (
    SmtpSink,
    end_offsets,
    read_events,
    read_topic,
    service,
    serving,
    submit,
    wait_for_event,
    wait_for_port,
    wait_until_consumers_caught_up,
    wait_until_group_settled,
)

pytestmark = pytest.mark.kafka


class SlowSink(SmtpSink):
    """Takes its time over each message, so a batch is still being mailed when the worker is killed."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


async def post(port: int, **params: str) -> str:
    return await submit(port, "package_url", SECRET, **params)


async def every_job_emailed(sink: SmtpSink, jobs: list[str], timeout: float) -> None:  # noqa: ASYNC109
    """Wait until each of `jobs` got an email (a count of messages would be fooled by a duplicate)."""
    deadline = time.monotonic() + timeout
    while not set(jobs) <= set(emailed_jobs(sink)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(set(jobs) - set(emailed_jobs(sink)))} jobs not emailed")
        await asyncio.sleep(0.3)


def emailed_jobs(sink: SmtpSink) -> Counter[str]:
    """How many emails each job id got (from the download links in the plain-text parts)."""
    text = "".join(m.get_body(("plain",)).get_content() for m in sink.messages)  # type: ignore[union-attr]
    return Counter(re.findall(r"/downloads/([0-9a-f-]{36})(?:-[0-9a-f-]+)?\.zip", text))


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


async def nothing_left_to_repeat(bootstrap: str, prefix: str) -> None:
    """Wait until the worker and mailer groups have handled everything on the log.

    A duplicate terminal event could only come from the worker group (planner, packers, steward) and a
    duplicate email from the mailer group, each re-handling a record it has not committed past yet. Once
    both committed the end of every topic they read, with nothing appended meanwhile, any duplicate is
    already on the log or in the mailbox to be counted.
    """
    topics = Topics(prefix)
    work = [topics.requests, topics.events, *(topics.lane(lane) for lane in LANES)]
    await wait_until_consumers_caught_up(
        bootstrap, {f"{prefix}-worker": work, f"{prefix}-mailer": [topics.events]}
    )


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
    sink = SlowSink(port=free_port())
    env = {
        **service_env,
        "PACKAGER_SMTP_PORT": str(sink.port),
        "PACKAGER_SESSION_TIMEOUT": "8",
        # One email at a time, so one kill can repeat at most one (the window is MAIL_CONCURRENCY).
        "PACKAGER_MAIL_CONCURRENCY": "1",
    }
    port = int(env["PACKAGER_PORT"])
    count = 20
    for n in range(count):
        size = (n % 5) * 4_000_000 + 100  # 100 bytes to 16 MB
        (folder / f"k{n}.bin").write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    with serving(sink), service(["ingress"], env, tmp_path / "logs"):
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
                await every_job_emailed(sink, jobs, timeout=180)
            except TimeoutError:
                missing = set(jobs) - set(emailed_jobs(sink))
                where = await explain_missing(kafka_bootstrap, topic_prefix, missing)
                (tmp_path / "diagnosis.txt").write_text(where)
                pytest.fail(
                    f"emails missing after the restart: {missing}\n{where}\n"
                    f"first worker: {first_log}\nrestarted: {restarted.log_file}"
                )
            try:
                await nothing_left_to_repeat(kafka_bootstrap, topic_prefix)
            except TimeoutError as exc:
                pytest.fail(f"the restarted worker never caught up: {exc}\n{restarted.log()}")
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
    # Terminal events are appended by the job's steward only, once, whatever was killed (streams.leases).
    assert terminal == Counter(dict.fromkeys(jobs, 1)), terminal
    assert {e.job_id for e in events if e.type == "EmailSent"} == set(jobs)


async def submit_datastore(port: int, api_url: str, resource_id: str, email: str) -> str:
    return await submit(
        port, "package_datastore", SECRET, api_url=api_url, resource_id=resource_id, email=email
    )


async def test_two_workers_one_killed_mid_job_the_other_finishes_its_jobs(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    tables = {f"t{n}": SyntheticTable(f"t{n}", 3_000, seed=n) for n in range(8)}
    env = {**service_env, "PACKAGER_PAGE_SIZE": "500", "PACKAGER_SESSION_TIMEOUT": "8"}
    port = int(env["PACKAGER_PORT"])
    async with serve_ckan(tables, faults=Faults(slow_page_delay=0.25)) as api_url:
        with (
            service(["worker"], env, tmp_path / "logs") as worker_a,
            service(["worker"], env, tmp_path / "logs") as worker_b,
            service(["ingress"], env, tmp_path / "logs"),
        ):
            wait_for_port(port)
            await worker_a.wait_for_output("[^Worker]: Ready")
            await worker_b.wait_for_output("[^Worker]: Ready")
            await wait_until_group_settled(kafka_bootstrap, f"{topic_prefix}-worker", members=2)
            jobs = [await submit_datastore(port, api_url, rid, f"{rid}@example.org") for rid in tables]
            victim = f":{worker_a.proc.pid}"
            started = await wait_for_event(
                kafka_bootstrap,
                topic_prefix,
                lambda e: e.type == "PackageStarted" and e.payload.worker.endswith(victim),  # type: ignore[attr-defined]
            )
            worker_a.stop(sig_kill=True)  # kill -9 while it builds `started.job_id`
            try:
                await smtp.wait_for(len(jobs), timeout=180)
            except TimeoutError:
                pytest.fail(f"jobs did not finish after the kill.\nB:\n{worker_b.log()}")
            try:
                await nothing_left_to_repeat(kafka_bootstrap, topic_prefix)
            except TimeoutError as exc:
                pytest.fail(f"the surviving worker never caught up: {exc}\nB:\n{worker_b.log()}")

    events = await read_events(kafka_bootstrap, Topics(topic_prefix).events)
    taken_over = started.job_id
    starts = [e.payload.worker for e in events if e.type == "PackageStarted" and e.job_id == taken_over]  # type: ignore[attr-defined]
    assert starts[0].endswith(victim) and starts[-1].endswith(f":{worker_b.proc.pid}"), starts
    assert terminal_counts(events, jobs) == Counter(dict.fromkeys(jobs, 1))
    [completed] = [e for e in events if e.type == "PackageCompleted" and e.job_id == taken_over]
    assert completed.payload.rows == 3_000  # type: ignore[attr-defined]
    assert Counter(e.job_id for e in events if e.type == "EmailSent") == Counter(jobs)
    assert sorted(m["To"] for m in smtp.messages) == sorted(f"{rid}@example.org" for rid in tables)


class DroppingSink(SmtpSink):
    """Accepts the envelope, then drops the connection instead of answering DATA, `drops` times."""

    drops: int = 3

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.drops > 0:
            self.drops -= 1
            server.transport.abort()  # no reply: the client sees the connection vanish
            return "421 gone"
        return await super().handle_DATA(server, session, envelope)


async def test_smtp_that_drops_the_connection_mid_message_still_delivers_each_email_once(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    sink = DroppingSink(port=free_port())
    env = {**service_env, "PACKAGER_SMTP_PORT": str(sink.port)}
    port = int(env["PACKAGER_PORT"])
    for n in range(4):
        (folder / f"d{n}.csv").write_bytes(f"d\n{n}\n".encode())
    with (
        serving(sink),
        service(["worker"], env, tmp_path / "logs"),
        service(["ingress"], env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        jobs = [
            await post(
                port, resource_id=f"d{n}", resource_url=f"{base_url}/d{n}.csv", email=f"d{n}@example.org"
            )
            for n in range(4)
        ]
        await sink.wait_for(4, timeout=120)
        await nothing_left_to_repeat(kafka_bootstrap, topic_prefix)
    assert sink.drops == 0, "the server never dropped a connection"
    assert emailed_jobs(sink) == Counter(jobs)
    events = await read_events(kafka_bootstrap, Topics(topic_prefix).events)
    assert Counter(e.job_id for e in events if e.type == "EmailSent") == Counter(jobs)
    assert not [e for e in events if e.type == "EmailFailed"]


async def test_a_record_that_is_not_an_event_is_dead_lettered_and_work_goes_on(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "ok.csv").write_bytes(b"a\n1\n")
    topics = Topics(topic_prefix)
    port = int(service_env["PACKAGER_PORT"])
    garbage = [
        (b"k1", b"\xff\xfe not json"),
        (b"k2", b'{"event_id": "x", "type": "PackageRequested", "job_id": "j-bad"}'),
        (None, b'{"type": "NoSuchEvent"}'),
    ]
    with (
        service(["worker"], service_env, tmp_path / "logs") as worker,
        service(["ingress"], service_env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        await worker.wait_for_output("[^Worker]: Ready")  # the topics exist, with their settings
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in garbage:
                await producer.send_and_wait(topics.requests, value=value, key=key)
        finally:
            await producer.stop()
        job = await post(port, resource_id="ok", resource_url=f"{base_url}/ok.csv", email="ok@example.org")
        await smtp.wait_for(1, timeout=120)
        rejected: list[Any] = []
        deadline = time.monotonic() + 60
        while len(rejected) < len(garbage) and time.monotonic() < deadline:
            events = await read_events(kafka_bootstrap, topics.events)
            rejected = [e for e in events if e.type == "RecordRejected"]
            await asyncio.sleep(0.5)

    assert {e.payload.source_topic for e in rejected} == {topics.requests}
    assert len(rejected) == len(garbage), "one RecordRejected per bad record"
    assert {e.job_id for e in rejected} == {"-"}
    assert sorted(e.payload.claimed_job_id for e in rejected) == ["", "", "j-bad"]
    dead = await read_topic(kafka_bootstrap, topics.dead_letters)
    assert sorted(value for _, value in dead) == sorted(value for _, value in garbage)
    assert [e.type for e in events if e.job_id == job][-1] == "EmailSent"
    assert emailed_jobs(smtp) == Counter([job])


async def post_status(port: int, **params: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(f"http://127.0.0.1:{port}/package_url", data={"secret": SECRET, **params}) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_broker_restart_mid_job_loses_nothing_and_the_ingress_recovers_by_itself(
    tmp_path: Path,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
) -> None:
    """The broker goes away while jobs run: the ingress answers 503, then 200 again once it is back."""
    base_url, folder = file_server
    (folder / "late.csv").write_bytes(b"x\n1\n")
    state_dir = tmp_path / "own-broker"  # its own broker: the session's is shared with other tests
    broker = dev_kafka.start(state_dir, partitions=4)
    try:
        env = {
            **service_env,
            "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "PACKAGER_KAFKA_SEND_TIMEOUT": "3",
            "PACKAGER_PAGE_SIZE": "500",
        }
        port = int(env["PACKAGER_PORT"])
        tables = {f"r{n}": SyntheticTable(f"r{n}", 4_000, seed=n) for n in range(3)}
        async with serve_ckan(tables, faults=Faults(slow_page_delay=0.4)) as api_url:
            with (
                service(["worker"], env, tmp_path / "logs") as worker,
                service(["ingress"], env, tmp_path / "logs") as ingress,
            ):
                wait_for_port(port)
                await worker.wait_for_output("[^Worker]: Ready")
                jobs = [await submit_datastore(port, api_url, rid, f"{rid}@example.org") for rid in tables]
                await wait_for_event(
                    broker.bootstrap_servers, topic_prefix, lambda e: e.type == "PackageStarted"
                )
                dev_kafka.halt(state_dir)
                statuses = []
                deadline = time.monotonic() + 60
                while 503 not in statuses and time.monotonic() < deadline:
                    status, _ = await post_status(
                        port,
                        resource_id="late",
                        resource_url=f"{base_url}/late.csv",
                        email="late@example.org",
                    )
                    statuses.append(status)
                assert statuses[-1] == 503, f"the ingress answered {statuses} while the broker was down"
                assert 200 not in statuses
                await asyncio.sleep(5)
                dev_kafka.resume(state_dir)
                deadline = time.monotonic() + 90
                while True:
                    status, body = await post_status(
                        port,
                        resource_id="late",
                        resource_url=f"{base_url}/late.csv",
                        email="late@example.org",
                    )
                    if status == 200:
                        jobs.append(str(body["job_id"]))
                        break
                    assert status == 503, body
                    if time.monotonic() > deadline:
                        pytest.fail(f"the ingress never recovered.\n{ingress.log()}")
                    await asyncio.sleep(1)
                try:
                    await smtp.wait_for(len(jobs), timeout=240)
                except TimeoutError:
                    pytest.fail(f"jobs did not finish after the broker came back.\n{worker.log()}")
                try:
                    await nothing_left_to_repeat(broker.bootstrap_servers, topic_prefix)
                except TimeoutError as exc:
                    pytest.fail(
                        f"the worker never caught up after the broker came back: {exc}\n{worker.log()}"
                    )
        events = await read_events(broker.bootstrap_servers, Topics(topic_prefix).events)
    finally:
        dev_kafka.stop(state_dir)
    assert terminal_counts(events, jobs) == Counter(dict.fromkeys(jobs, 1))
    assert all(e.type == "PackageCompleted" for e in events if e.type in TERMINAL_TYPES and e.job_id in jobs)
    # A request answered 503 may still reach the log once the broker is back (the producer had it
    # buffered): the planner recognises it by its append time and abandons it, unbuilt and unmailed.
    others = [e for e in events if e.type in TERMINAL_TYPES and e.job_id not in jobs]
    assert all(e.type == "RequestAbandoned" for e in others), others
    assert Counter(e.job_id for e in events if e.type == "EmailSent") == Counter(jobs)
    assert len(smtp.messages) == len(jobs)
