"""The real stack a chaos campaign runs on, and the faults it can suffer.

It owns every process and server the campaign starts: a 3-node KRaft cluster (`packager.dev.kafka`), the
CKAN-compatible server (`packager dev ckan --admin`, a process whose 5xx rate is switched at run time), a real
SMTP server (aiosmtpd, in this process, stopped and started again for an outage), the package store (a shared
folder or an s3proxy bucket, `benchmarks.chaos_store`), 2 ingress processes and 3 worker processes.
`Stack.close()` stops all of it, whatever state a fault left it in (a stopped worker is continued first),
and is safe to call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from threading import Lock
from typing import Any, TypeVar

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiosmtpd.controller import Controller

from packager.adapters.kafka_log import Topics
from packager.dev import kafka as dev_kafka
from packager.dev.ckan_server import ACTION_PATH, ADMIN_PATH
from packager.dev.kafka import free_port
from packager.domain.emails import JOB_HEADER

from .chaos_store import CampaignStore

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
SECRET = "chaos-campaign-secret-0123456789abcdef"
RESOURCE_ID = "chaos-occurrences"
TABLE_ROWS = 40_000
TABLE_SEED = 7
PARTITIONS = 6
READY_LINE = "[^Worker]: Ready"


def log(message: str) -> None:
    """Progress on stderr, so `--json` keeps stdout to the one object."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Mail:
    """One accepted message: the job it names and when it arrived."""

    job_id: str
    subject: str
    received_at: float


@dataclass
class Mailbox:
    """aiosmtpd handler keeping who each message was about (the `X-Packager-Job` header)."""

    messages: list[Mail] = field(default_factory=list)
    _lock: Lock = field(default_factory=Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd hook: keep the message's job id."""
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        with self._lock:
            self.messages.append(
                Mail(str(msg.get(JOB_HEADER, "")), str(msg.get("Subject", "")), time.monotonic())
            )
        return "250 OK"

    def snapshot(self) -> list[Mail]:
        """The messages so far."""
        with self._lock:
            return list(self.messages)


class SmtpServer:
    """A real SMTP server on a fixed loopback port that can be taken down and brought back."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.port = free_port()
        self._controller: Controller | None = None

    def start(self) -> None:
        """Listen (again) on the same port."""
        if self._controller is None:
            controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
            controller.start()
            self._controller = controller

    def stop(self) -> None:
        """Stop listening: clients get connection refused, as from a server that is down."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass
class Proc:
    """A child process of the stack, restartable with the same command and environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped and not yet continued
    pids: list[int] = field(default_factory=list)  # of every run, so events naming a pid name the process

    def start(self) -> None:
        """Start (or restart) the process; output appended to its log file."""
        with open(self.log_file, "ab") as out:
            out.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            # Its own session: Ctrl-C on the campaign reaches the campaign only, which stops its children.
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(ROOT),
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)
        self.stopped = False
        self._log_offset = self.log_file.stat().st_size

    @property
    def pid(self) -> int:
        """The current process id."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to the process (by pid: only processes this stack started)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    async def wait_exit(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait for the process to end; True if it did within `timeout`."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def wait_for_line(self, text: str, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until this run of the process printed `text`."""
        deadline = time.monotonic() + timeout
        while True:
            if text.encode() in await asyncio.to_thread(self._output):
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before printing {text!r}; see {self.log_file}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not print {text!r} within {timeout:.0f}s")
            await asyncio.sleep(0.3)

    def _output(self) -> bytes:
        """What this run of the process printed so far."""
        with open(self.log_file, "rb") as fh:
            fh.seek(self._log_offset)
            return fh.read()

    def stop(self, timeout: float = 20.0) -> None:
        """End the process: continue it if stopped, SIGTERM, then SIGKILL after `timeout`."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in a thread; if cancelled, let it finish first, so nothing it starts escapes
    the teardown (a node being restarted is recorded only once it runs)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@dataclass
class StackConfig:
    """Knobs of the stack."""

    workers: int = 3
    ingresses: int = 2
    session_timeout: float = 6.0
    lease_time: float = 10.0
    max_attempts: int = 3
    drain_timeout: float = 10.0
    worker_concurrency: int = 2
    keep: bool = False
    store: str = "folder"  # or "s3": see benchmarks.chaos_store


class Stack:
    """Everything a campaign runs on; build with `await Stack.start(config)`, end with `close()`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.root = Path(tempfile.mkdtemp(prefix="chaos-"))
        self.store = CampaignStore(config.store, self.root, log)
        (self.root / "logs").mkdir()
        self.prefix = f"chaos{os.getpid()}"
        self.mailbox = Mailbox()
        self.smtp = SmtpServer(self.mailbox)
        self.cluster: dev_kafka.Cluster | None = None
        self.ckan: Proc | None = None
        self.ckan_port = free_port()
        self.ingresses: list[Proc] = []
        self.ingress_ports: list[int] = []
        self.workers: list[Proc] = []
        self.replicas: dict[str, int] = {}
        self._closed = False

    @property
    def kafka_dir(self) -> Path:
        """The cluster's state folder."""
        return self.root / "kafka"

    @property
    def bootstrap(self) -> str:
        """The cluster's bootstrap servers."""
        assert self.cluster is not None
        return self.cluster.bootstrap_servers

    @property
    def api_url(self) -> str:
        """The CKAN server's datastore_search URL."""
        return f"http://127.0.0.1:{self.ckan_port}{ACTION_PATH}"

    def _env(self, process: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PACKAGER_SECRET": SECRET,
            "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PACKAGER_TOPIC_PREFIX": self.prefix,
            "PACKAGER_PARTITIONS": str(PARTITIONS),
            "PACKAGER_REPLICATION_FACTOR": "3",
            **self.store.env(process),
            "PACKAGER_ALLOW_PRIVATE_URLS": "true",
            "PACKAGER_SMTP_HOST": "127.0.0.1",
            "PACKAGER_SMTP_PORT": str(self.smtp.port),
            # Back off at most 5 s while SMTP is down, so mail goes out soon after an outage ends.
            "PACKAGER_SMTP_RETRY_MAX_DELAY": "5",
            "PACKAGER_SMTP_TIMEOUT": "10",
            "PACKAGER_METRICS_PORT": "0",
            "PACKAGER_LOG_LEVEL": "INFO",
            **extra,
        }

    def _worker_env(self, process: str) -> dict[str, str]:
        c = self.config
        return self._env(
            process,
            PACKAGER_SESSION_TIMEOUT=str(c.session_timeout),
            # Queries of more than 10,000 rows take the slow lane, so both lanes carry work.
            PACKAGER_SLOW_REQUEST="10000",
            # The lease settings of issue 12 (ignored by a build that does not know them yet).
            PACKAGER_LEASE_TIME=str(c.lease_time),
            PACKAGER_MAX_ATTEMPTS=str(c.max_attempts),
            PACKAGER_DRAIN_TIMEOUT=str(c.drain_timeout),
            PACKAGER_WORKER_CONCURRENCY=str(c.worker_concurrency),
        )

    @classmethod
    async def start(cls, config: StackConfig) -> Stack:
        """Start everything; on failure stop what was started and re-raise."""
        stack = cls(config)
        try:
            await stack._start()
        except BaseException:
            stack.close()
            raise
        return stack

    async def _start(self) -> None:
        log(f"state in {self.root}")
        self.smtp.start()
        await blocking(self.store.start)
        python = sys.executable
        self.ckan = Proc(
            "ckan",
            [
                *(python, "-m", "packager", "dev", "ckan", "--", "--port", str(self.ckan_port), "--admin"),
                *("--rows", str(TABLE_ROWS), "--seed", str(TABLE_SEED), "--resource-id", RESOURCE_ID),
            ],
            {**os.environ, "PYTHONPATH": str(ROOT)},
            self.root / "logs" / "ckan.log",
        )
        self.ckan.start()
        log("starting a 3-node KRaft cluster")
        self.cluster = await blocking(
            dev_kafka.start_cluster, self.kafka_dir, nodes=3, partitions=PARTITIONS, log=log
        )
        log(f"cluster up at {self.bootstrap}")
        await blocking(_wait_port, self.ckan_port, 30)
        # The first worker creates the topics (RF 3, changelogs included) before the others subscribe, so
        # their creation never races.
        for i in range(self.config.workers):
            self.workers.append(
                Proc(
                    f"worker-{i + 1}",
                    [python, "-m", "packager", "worker"],
                    self._worker_env(f"worker-{i + 1}"),
                    self.root / "logs" / f"worker-{i + 1}.log",
                )
            )
        self.workers[0].start()
        await self.workers[0].wait_for_line(READY_LINE, 180)
        for worker in self.workers[1:]:
            worker.start()
        for i in range(self.config.ingresses):
            port = free_port()
            self.ingress_ports.append(port)
            self.ingresses.append(
                Proc(
                    f"ingress-{i + 1}",
                    [python, "-m", "packager", "ingress"],
                    self._env(
                        f"ingress-{i + 1}",
                        PACKAGER_PORT=str(port),
                        PACKAGER_READ_MODEL_DIRECTORY=str(self.root / f"readmodel-{i + 1}"),
                    ),
                    self.root / "logs" / f"ingress-{i + 1}.log",
                )
            )
            self.ingresses[-1].start()
        for worker in self.workers[1:]:
            await worker.wait_for_line(READY_LINE, 180)
        for port in self.ingress_ports:
            await blocking(_wait_port, port, 60)
        self.replicas = await self._replicas()
        log(f"{len(self.workers)} workers, {len(self.ingresses)} ingresses ready; replicas {self.replicas}")

    async def _replicas(self) -> dict[str, int]:
        """The fewest replicas of any partition of each service topic (3 expected), as the cluster says."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            topics = Topics(self.prefix).all()
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        return {
            d["topic"].removeprefix(f"{self.prefix}."): min(len(p["replicas"]) for p in d["partitions"])
            for d in described
            if d["partitions"]
        }

    def worker_names(self) -> dict[int, str]:
        """Worker process name (`worker-1`...) of every pid a worker ran under, restarts included."""
        return {pid: worker.name for worker in self.workers for pid in worker.pids}

    # --- faults -------------------------------------------------------------------------------------

    async def restart_worker(self, worker: Proc, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Start a worker that ended, and wait until it is ready."""
        worker.start()
        await worker.wait_for_line(READY_LINE, timeout)

    async def set_ckan_faults(self, **faults: float) -> None:
        """Replace the CKAN server's faults (no arguments: heal)."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{self.ckan_port}{ADMIN_PATH}", json=faults) as resp,
        ):
            resp.raise_for_status()

    def requests_leader(self, topic: str) -> int:
        """The node leading most partitions of `topic`."""
        deadline = time.monotonic() + 15
        while True:
            # The record on disk, not `self.cluster`: a restarted node has a new pid.
            cluster = dev_kafka.cluster_status(self.kafka_dir)
            assert cluster is not None
            try:
                leaders = dev_kafka.partition_leaders(cluster, topic)
                break
            except dev_kafka.BrokerError:  # a node that just came back may not know the topic yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        counts: dict[int, int] = {}
        for node in leaders.values():
            if node >= 0:
                counts[node] = counts.get(node, 0) + 1
        if not counts:
            raise RuntimeError(f"no partition of {topic} has a leader")
        return max(counts, key=lambda n: counts[n])

    # --- teardown ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this stack started and remove its folder (unless `keep`)."""
        if self._closed:
            return
        self._closed = True
        for proc in [*self.ingresses, *self.workers]:
            with contextlib.suppress(Exception):
                proc.signal(signal.SIGCONT)
        for proc in [*self.ingresses, *self.workers, *([self.ckan] if self.ckan else [])]:
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"stopping {proc.name} failed: {exc!r}")
        self.smtp.stop()
        try:
            self.store.stop(keep_data=self.config.keep)
        except Exception as exc:  # the cluster is stopped all the same
            log(f"stopping the store failed: {exc!r}")
        if (cluster := dev_kafka.cluster_status(self.kafka_dir)) is not None:
            # Its data is thrown away: no need for a controlled shutdown of each node.
            for node in cluster.nodes:
                with contextlib.suppress(Exception):
                    dev_kafka.kill_node(self.kafka_dir, node.node_id)
        with contextlib.suppress(Exception):
            dev_kafka.stop_cluster(self.kafka_dir, timeout=10)
        if self.config.keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
