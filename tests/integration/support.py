"""Helpers for integration tests: reading topics, waiting on conditions and consumer groups, running the
service as processes (one at a time or as a whole stack), SMTP and slow file servers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from threading import Lock
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiosmtpd.controller import Controller

from packager.adapters.kafka_log import Topics
from packager.domain.events import Envelope, decode

ROOT = Path(__file__).resolve().parents[2]


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The next offset of every partition of `topic` (empty if the topic does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return {}
        [description] = await admin.describe_topics([topic])
        partitions = [p["partition"] for p in description["partitions"]]
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: off for tp, off in offsets.items()}
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every record currently on `topic`, from the beginning, as (key, value)."""
    ends = await end_offsets(bootstrap, topic)
    if not any(ends.values()):
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp.partition]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                records.extend((m.key, m.value) for m in messages if m.offset < ends[tp.partition])
    finally:
        await consumer.stop()
    return records


async def read_events(bootstrap: str, topic: str) -> list[Envelope]:
    """Every event on `topic`, decoded."""
    return [decode(value) for _, value in await read_topic(bootstrap, topic)]


async def job_events(bootstrap: str, prefix: str, job_id: str) -> list[Envelope]:
    """Every event of one job on the `prefix` deployment's events topic, in log order."""
    return [e for e in await read_events(bootstrap, Topics(prefix).events) if e.job_id == job_id]


async def wait_for_event(
    bootstrap: str, prefix: str, matches: Callable[[Envelope], bool], within: float = 120.0
) -> Envelope:
    """The first event on the `prefix` deployment's events topic that `matches`, once there is one."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for event in await read_events(bootstrap, Topics(prefix).events):
            if matches(event):
                return event
        await asyncio.sleep(0.3)
    raise TimeoutError(f"no matching event on {Topics(prefix).events} within {within:.0f}s")


async def wait_until(check: Callable[[], object], within: float, what: str, every: float = 0.02) -> float:
    """Poll `check()` (a value or an awaitable) until it is truthy; return when it became so (monotonic).

    Raises TimeoutError(`what`) after `within` seconds, so a caller can fail with the services' logs. The
    short default interval lets a test time what it waits for (a build stopping after a cancel).
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(every)


async def _group_position(
    consumer: AIOKafkaConsumer, bootstrap: str, topic: str
) -> tuple[dict[int, int], dict[int, int]]:
    """(what `consumer`'s group committed, where `topic` ends), per partition; nothing committed reads 0."""
    ends = await end_offsets(bootstrap, topic)
    committed = {p: await consumer.committed(TopicPartition(topic, p)) or 0 for p in ends}
    return committed, ends


def _group_reader(bootstrap: str, group: str) -> AIOKafkaConsumer:
    """A consumer with `group`'s id and no subscription: it reads the group's commits, never joins the group
    (so no rebalance of the service's workers) and never commits."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)


async def group_caught_up(bootstrap: str, group: str, *topics: str) -> bool:
    """True when consumer `group` committed the end of every partition of each of `topics`."""
    consumer = _group_reader(bootstrap, group)
    await consumer.start()
    try:
        for topic in topics:
            committed, ends = await _group_position(consumer, bootstrap, topic)
            if any(committed[p] < end for p, end in ends.items()):
                return False
        return True
    finally:
        await consumer.stop()


async def wait_until_group_caught_up(bootstrap: str, topic: str, group: str, within: float = 60.0) -> None:
    """Wait until consumer `group` committed `topic`'s end on every partition: nothing left for it to handle.

    What a test waits for before counting emails or webhooks: once the group is caught up, nothing more
    can arrive from the records already on the log, so a duplicate would already be there to count.
    """
    consumer = _group_reader(bootstrap, group)
    await consumer.start()
    try:
        deadline = time.monotonic() + within
        while True:
            committed, ends = await _group_position(consumer, bootstrap, topic)
            if all(committed[p] >= end for p, end in ends.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group} at {committed}, {topic} ends at {ends}")
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop()


async def wait_until_consumers_caught_up(
    bootstrap: str, groups: dict[str, Sequence[str]], within: float = 60.0
) -> None:
    """Wait until each consumer group in `groups` committed the end of each of its topics, and no record
    was appended to those topics while they were checked.

    What a test waits for before counting duplicates when several groups feed each other (the worker's
    steward appends terminal events the mailer reads; the mailer appends `EmailSent` the worker reads):
    one group caught up proves nothing while another may still append. Every group is checked between two
    readings of the topics' ends that agree, so at that moment nothing on the log is left for any of them,
    and anything they were going to repeat would be on the log (or in the mailbox) already.
    """
    topics = sorted({topic for its in groups.values() for topic in its})
    lagging = "nothing checked yet"

    async def ends() -> dict[str, dict[int, int]]:
        return {topic: await end_offsets(bootstrap, topic) for topic in topics}

    async def settled() -> bool:
        nonlocal lagging
        before = await ends()
        for group, its in groups.items():
            if not await group_caught_up(bootstrap, group, *its):
                lagging = f"{group} not caught up with {list(its)} (ends {before})"
                return False
        lagging = f"the topics moved while the groups were checked (ends {before})"
        return await ends() == before

    try:
        await wait_until(settled, within, "", every=0.3)
    except TimeoutError:
        raise TimeoutError(lagging) from None


async def _group_assignments(admin: AIOKafkaAdminClient, group: str) -> tuple[str, list[int]]:
    """(`group`'s state, how many partitions each member holds), as the group coordinator describes them."""
    [response] = await admin.describe_consumer_groups([group])
    # (error_code, group_id, state, protocol_type, protocol, members[, authorized_operations]); each member
    # (member_id, client_id, client_host, member_metadata, member_assignment)
    [described] = response.groups
    held = []
    for member in described[5]:
        raw = member[4]
        topics = ConsumerProtocolMemberAssignment.decode(raw).assignment if raw else []
        held.append(sum(len(partitions) for _, partitions in topics))
    return described[2], held


async def wait_until_group_settled(bootstrap: str, group: str, members: int, within: float = 60.0) -> None:
    """Wait until consumer `group` is Stable with `members` members, each of them holding partitions.

    What a test with several workers waits for before its first job: printing "Ready" says a worker joined,
    not that the rebalance its joining started (or the next worker's) is over. Until then a record's
    partition may move to another worker while it is handled, which is the fault suite's subject.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    seen = "not described yet"

    async def settled() -> bool:
        nonlocal seen
        state, held = await _group_assignments(admin, group)
        seen = f"{group} is {state} with partitions per member {held}, not {members} Stable"
        return state == "Stable" and len(held) == members and all(held)

    try:
        await wait_until(settled, within, "", every=0.2)
    except TimeoutError:
        raise TimeoutError(seen) from None
    finally:
        await admin.close()


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


@dataclass
class ServiceProcess:
    """A `python -m packager ...` child process with its log file."""

    argv: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        """The process's output so far (for failure messages)."""
        return self.log_file.read_text(errors="replace")[-5000:]

    async def wait_for_output(self, text: str, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait until the process has printed `text` (e.g. Faust's "[^Worker]: Ready")."""
        deadline = time.monotonic() + timeout
        while text not in self.log_file.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv} never printed {text!r}:\n{self.log()}")
            await asyncio.sleep(0.2)

    def stop(self, sig_kill: bool = False) -> None:
        """Stop the process (SIGKILL if asked) and reap it."""
        if self.proc.poll() is None:
            if sig_kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def service(argv: list[str], env: dict[str, str], log_dir: Path) -> Iterator[ServiceProcess]:
    """Run `python -m packager <argv>`; always stopped when the block ends, even on failure."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{'-'.join(argv)}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "packager", *argv],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
    handle = ServiceProcess(argv=argv, log_file=log_file, proc=proc)
    try:
        yield handle
    finally:
        handle.stop()


@dataclass
class Stack:
    """The service's processes in one test: its workers, the ingress on `port`, the projector if asked."""

    port: int
    workers: list[ServiceProcess]
    ingress: ServiceProcess
    projector: ServiceProcess | None = None

    @property
    def worker(self) -> ServiceProcess:
        """The first (usually the only) worker."""
        return self.workers[0]

    def diagnostics(self) -> str:
        """The worker's and the ingress's output, for a failure message."""
        return f"worker log:\n{self.worker.log()}\ningress log:\n{self.ingress.log()}"


@contextlib.contextmanager
def running_stack(
    env: dict[str, str],
    log_dir: Path,
    *,
    projector: bool = False,
    workers: Sequence[list[str]] = (["worker"],),
    worker_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Run the workers (argv each, `env` plus `worker_env`), the projector if asked, then the ingress on
    `env`'s PACKAGER_PORT, and wait until the ingress listens. Stopped in reverse order when the block ends,
    even on failure, as nested `service` blocks would be."""
    port = int(env["PACKAGER_PORT"])
    with contextlib.ExitStack() as processes:
        started = [
            processes.enter_context(service(argv, {**env, **(worker_env or {})}, log_dir)) for argv in workers
        ]
        views = processes.enter_context(service(["projector"], env, log_dir)) if projector else None
        ingress = processes.enter_context(service(["ingress"], env, log_dir))
        wait_for_port(port)
        yield Stack(port=port, workers=started, ingress=ingress, projector=views)


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on a free port that keeps every message it accepts."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    _lock: Lock = field(default_factory=Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd hook: keep the message."""
        with self._lock:
            self.messages.append(
                message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
            )
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[EmailMessage]:  # noqa: ASYNC109
        """Wait until at least `count` messages arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{len(self.messages)} of {count} emails arrived within {timeout}s")


def smtp_sink(port: int) -> contextlib.AbstractContextManager[SmtpSink]:
    """Run an aiosmtpd server on 127.0.0.1:port that keeps what it accepts, for the duration of the block."""
    return serving(SmtpSink(port=port))


async def submit(port: int, endpoint: str, secret: str, **params: str) -> str:
    """POST a request to the ingress on `port` (form-encoded, as CKAN sends it); return its job id."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/{endpoint}", data={"secret": secret, **params}) as resp,
    ):
        body = await resp.json()
    assert resp.status == 200, body
    return str(body["job_id"])


async def post_form(port: int, path: str, **data: str) -> tuple[int, dict[str, Any]]:
    """POST a form to `path` on 127.0.0.1:`port`; (status, JSON body). No secret is added: callers choose
    the credentials (a secret, a cancel token, a wrong one)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}{path}", data=data) as resp,
    ):
        return resp.status, await resp.json()


def partial_files(folder: Path, job_id: str) -> list[Path]:
    """The files in `folder` named after `job_id` (a build's partial file, or a ZIP under the job's name)."""
    return list(folder.glob(f"{job_id}.*")) if folder.is_dir() else []


async def trickle(request: web.Request) -> web.StreamResponse:
    """aiohttp handler: a 100,000-byte file sent one byte every 0.3 s, so a build of it runs until stopped."""
    resp = web.StreamResponse(headers={"Content-Length": "100000"})
    await resp.prepare(request)
    try:
        for _ in range(100_000):
            await resp.write(b"x")
            await asyncio.sleep(0.3)
    except ConnectionError:
        pass  # the build was stopped: what the tests want
    return resp


@contextlib.contextmanager
def serving(sink: SmtpSink) -> Iterator[SmtpSink]:
    """Run an aiosmtpd server on 127.0.0.1:`sink.port` with `sink` as its handler."""
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
