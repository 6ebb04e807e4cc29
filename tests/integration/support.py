"""Helpers for integration tests: reading topics, running the service as processes, SMTP and file servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from threading import Lock
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
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
class SmtpSink:
    """A real SMTP server (aiosmtpd) on a free port that keeps every message it accepts."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    _lock: Lock = field(default_factory=Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd hook: keep the message."""
        with self._lock:
            self.messages.append(
                message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)  # type: ignore[arg-type]
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


@contextlib.contextmanager
def serving(sink: SmtpSink) -> Iterator[SmtpSink]:
    """Run an aiosmtpd server on 127.0.0.1:`sink.port` with `sink` as its handler."""
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
