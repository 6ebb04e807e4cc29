"""The read side's strict boundary and log identity, on real Kafka, with a projector beside the ingress.

- Wrongly typed events put on the broker are dead-lettered by the workers, skipped and counted by the
  projector, and jobs after them still appear in /jobs, also after the views are rebuilt from the start.
- Views built on one broker, then the broker replaced by a fresh one on the same address (what restarting
  `packager dev up` on a kept `var/` does), are rebuilt from the new log by the projector, whether it was
  restarted or kept running: /jobs, /status and /statistics answer for the new log and `packager replay
  verify` agrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from packager.adapters.kafka_log import Topics, ensure_topics
from packager.core.errors import EventDecodeError
from packager.dev import kafka as dev_kafka
from packager.domain.events import (
    Envelope,
    Event,
    PackageCompleted,
    PackageFailed,
    PackageRequested,
    RecordRejected,
    decode,
    encode,
    envelope,
)
from tests.integration.conftest import SECRET
from tests.integration.support import (
    ROOT,
    ServiceProcess,
    SmtpSink,
    read_events,
    read_topic,
    service,
    submit,
    wait_for_port,
)

pytestmark = pytest.mark.kafka

URL = "http://127.0.0.1:9/data.csv"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 90) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def get(port: int, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        body = await resp.read()
        return resp.status, orjson.loads(body) if resp.content_type == "application/json" else body.decode()


async def post(port: int, path: str, **params: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(f"http://127.0.0.1:{port}{path}", data={"secret": SECRET, **params}) as resp,
    ):
        return await resp.json()


async def job_state(port: int, job_id: str) -> str | None:
    status, body = await get(port, f"/jobs/{job_id}")
    return body["state"] if status == 200 else None


async def metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of a process's /metrics (0 when absent)."""
    _, text = await get(port, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return 0.0


async def produce(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def valid_events(bootstrap: str, topic: str) -> list[Envelope]:
    """The events on `topic` that decode (the bad ones put there by the test left out)."""
    found = []
    for _, value in await read_topic(bootstrap, topic):
        with contextlib.suppress(EventDecodeError):
            found.append(decode(value))
    return found


def wrongly_typed(valid: bytes, **changes: Any) -> bytes:
    """A valid encoded event with envelope fields, or payload fields (`payload__name`), changed."""
    doc = orjson.loads(valid)
    for name, value in changes.items():
        if name.startswith("payload__"):
            doc["payload"][name.removeprefix("payload__")] = value
        else:
            doc[name] = value
    return orjson.dumps(doc)


async def test_wrongly_typed_events_are_dead_lettered_while_later_jobs_still_appear_in_jobs(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    store_dir: Path,
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "ok.csv").write_bytes(b"a\n1\n")
    topics = Topics(topic_prefix)
    port = int(service_env["PACKAGER_PORT"])
    logs = tmp_path / "logs"
    params = {"resource_id": "ok", "resource_url": f"{base_url}/ok.csv"}

    projector_metrics = dev_kafka.free_port()
    projector_argv = ["projector", "--metrics-port", str(projector_metrics)]
    with service(["worker"], service_env, logs) as worker:
        with service(projector_argv, service_env, logs) as projector, service(["ingress"], service_env, logs):
            wait_for_port(port)
            await worker.wait_for_output("[^Worker]: Ready")
            first = await submit(port, "package_url", SECRET, **params, email="ann@example.org")

            async def first_done() -> bool:
                status, page = await get(port, f"/jobs/{first}")
                return status == 200 and page["state"] == "completed" and page["emailed"]

            await eventually(first_done, "the first job to complete and be emailed")
            events = await read_events(kafka_bootstrap, topics.events)
            progress = next(e for e in events if e.type == "PackageProgress" and e.job_id == first)
            emailed = next(e for e in events if e.type == "EmailSent" and e.job_id == first)
            requests = await read_topic(kafka_bootstrap, topics.requests)
            key = progress.cache_key.encode()
            poison = [
                (topics.events, key, wrongly_typed(encode(progress), payload__rows_done="lots")),
                (topics.events, key, wrongly_typed(encode(emailed), occurred_at="yesterday")),
                (
                    topics.requests,
                    key,
                    wrongly_typed(requests[0][1], job_id="j-poison", payload__email=None),
                ),
            ]
            await produce(kafka_bootstrap, poison)
            second = await submit(port, "package_url", SECRET, **params, email="bob@example.org")

            async def second_done() -> bool:
                return await job_state(port, second) == "completed"

            await eventually(second_done, "the job submitted after the bad events to complete")
            assert (await get(port, "/jobs/j-poison"))[0] == 404
            status, page = await get(port, f"/jobs/{first}")
            assert (status, page["state"], page["emailed"]) == (200, "completed", True)
            status, ready = await get(port, "/health/ready")
            assert (status, ready["status"]) == (200, "ready"), ready
            # Skipped and counted by the projector (its log line carries the topic and the reason).
            rejected = re.findall(
                r"rejected record at (\S+):\d+@\d+ \((\w+)\)", projector.log_file.read_text()
            )
            assert sorted(rejected) == sorted(
                [
                    (topics.events, "bad_payload"),
                    (topics.events, "bad_envelope"),
                    (topics.requests, "bad_payload"),
                ]
            ), projector.log()
            for topic, reason, count in [
                (topics.events, "bad_payload", 1.0),
                (topics.events, "bad_envelope", 1.0),
                (topics.requests, "bad_payload", 1.0),
            ]:
                labels = {"topic": topic, "reason": reason}
                assert await metric(projector_metrics, "packager_records_rejected_total", labels) == count
            _, served = await get(projector_metrics, "/metrics")
            assert "process_cpu_seconds_total" in served  # and none of the other roles' series
            assert "packager_read_model_caught_up" not in served and "packager_worker_ready" not in served

            # Dead-lettered by the agents owning the topics: a copy, and one RecordRejected each.
            async def dead_lettered() -> bool:
                dead = await read_topic(kafka_bootstrap, topics.dead_letters)
                return sorted(v for _, v in dead) == sorted(v for _, _, v in poison)

            await eventually(dead_lettered, "the workers to dead-letter the bad events")
            events = await valid_events(kafka_bootstrap, topics.events)
            rejections = [e.payload for e in events if isinstance(e.payload, RecordRejected)]
            noted = sorted((r.source_topic, r.claimed_job_id) for r in rejections)
            assert noted == sorted(
                [(topics.events, first), (topics.events, first), (topics.requests, "j-poison")]
            )

        # Views rebuilt from the start, through the bad events: ready, and every job there.
        shutil.rmtree(store_dir / ".readmodel")
        with service(["projector"], service_env, logs) as projector, service(["ingress"], service_env, logs):
            wait_for_port(port)

            async def rebuilt() -> bool:
                return (await get(port, "/health/ready"))[0] == 200 and await job_state(port, second) == (
                    "completed"
                )

            await eventually(rebuilt, f"the rebuilt views to be ready:\n{projector.log()}")
            assert await job_state(port, first) == "completed"
            ready = (await get(port, "/health/ready"))[1]
            assert ready["status"] == "ready", ready
            assert "rejected record at" in projector.log_file.read_text()


@dataclass
class OneAddress:
    """Brokers started one after another on one address, an ingress's settings, and a worker's part."""

    prefix: str
    store_dir: Path
    tmp_path: Path
    kafka_port: int = field(default_factory=dev_kafka.free_port)
    port: int = field(default_factory=dev_kafka.free_port)
    metrics_port: int = field(default_factory=dev_kafka.free_port)  # the projector's
    started: list[Path] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PACKAGER_SECRET": SECRET,
            "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PACKAGER_TOPIC_PREFIX": self.prefix,
            "PACKAGER_PARTITIONS": "2",
            "PACKAGER_STORE_DIRECTORY": str(self.store_dir),
            "PACKAGER_ALLOW_PRIVATE_URLS": "true",
            "PACKAGER_PORT": str(self.port),
            "PACKAGER_LOG_LEVEL": "INFO",
        }

    async def new_broker(self) -> None:
        """Stop the broker running on the address (removing its data) and start an empty one there."""
        if self.started:
            await asyncio.to_thread(dev_kafka.stop, self.started[-1])
        state_dir = self.tmp_path / f"kafka-{len(self.started) + 1}"
        self.started.append(state_dir)
        await asyncio.to_thread(dev_kafka.start, state_dir, port=self.kafka_port, partitions=2, heap="256m")

    async def stop_brokers(self) -> None:
        for state_dir in self.started:
            await asyncio.to_thread(dev_kafka.stop, state_dir)

    def ingress(self) -> contextlib.AbstractContextManager[ServiceProcess]:
        return service(["ingress"], self.env, self.tmp_path / "logs")

    def projector(self) -> contextlib.AbstractContextManager[ServiceProcess]:
        argv = ["projector", "--metrics-port", str(self.metrics_port)]
        return service(argv, self.env, self.tmp_path / "logs")

    async def request(self, resource_id: str, email: str) -> str:
        """Append a job's PackageRequested, as the ingress does; its job id."""
        job_id = str(uuid.uuid4())
        payload = PackageRequested(
            "url", f"ck-{job_id}", resource_id, email, "", {"resource_id": resource_id}
        )
        record = (self.topics.requests, payload.cache_key.encode(), encode(envelope(job_id, payload)))
        await produce(self.bootstrap, [record])
        return job_id

    async def finish(self, jobs: dict[str, str]) -> None:
        """Append each job's terminal event, as a worker would (job id -> "completed" or "failed")."""
        requested = {e.job_id: e.payload for e in await read_events(self.bootstrap, self.topics.requests)}
        records = []
        for job_id, outcome in jobs.items():
            p = requested[job_id]
            assert isinstance(p, PackageRequested)
            common = dict(cache_key=p.cache_key, resource_id=p.resource_id, email=p.email, ckan_host="")
            terminal: Event = (
                PackageCompleted(
                    **common,
                    doi="",
                    lane="fast",
                    zip_file_name=f"{job_id}.zip",
                    size=1,
                    sha256="0" * 64,
                    rows=1,
                    started_at="",
                    finished_at="",
                )
                if outcome == "completed"
                else PackageFailed(**common, error="gone", error_type="FetchError")
            )
            records.append((self.topics.events, p.cache_key.encode(), encode(envelope(job_id, terminal))))
        await produce(self.bootstrap, records)

    async def settled(self, count: int) -> None:
        """Wait until /status counts `count` finished jobs and none queued."""

        last: dict[str, Any] = {}

        async def check() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                last["status"] = body = await post(self.port, "/status")
                return body.get("processed_requests") == count and body.get("queue_length") == 0
            return False

        try:
            await eventually(check, f"the views to show {count} finished job(s)")
        except pytest.fail.Exception:
            # What the services said is the only account of a failure on CI: put it in the report.
            logs = sorted((self.tmp_path / "logs").glob("*.log"))
            said = "\n".join(f"--- {path.name}\n{path.read_text()[-6000:]}" for path in logs)
            pytest.fail(f"the views never showed {count} finished job(s); last /status {last}\n{said}")

    async def answers_for_the_new_log_only(self, new: str, old: list[str]) -> None:
        """/jobs, /status and /statistics describe the one job of the new log, nothing of the old one."""
        await self.settled(1)
        assert await job_state(self.port, new) == "completed"
        for job_id in old:
            assert await job_state(self.port, job_id) is None
        totals = (await post(self.port, "/statistics"))["totals"]
        assert totals == {
            "*": {"requests": 1, "errors": 0, "emails": 1},
            "new": {"requests": 1, "errors": 0, "emails": 1},
        }
        requests = (await post(self.port, "/statistics/requests"))["requests"]
        assert [r["resource_id"] for r in requests] == ["new"]


async def test_views_from_a_wiped_broker_are_rebuilt_from_the_new_log(
    topic_prefix: str, store_dir: Path, tmp_path: Path
) -> None:
    site = OneAddress(topic_prefix, store_dir, tmp_path)
    try:
        await site.new_broker()
        with site.projector(), site.ingress():
            wait_for_port(site.port)
            old = [
                await submit(site.port, "package_url", SECRET, resource_id="old", resource_url=URL, email=e)
                for e in ("ann@example.org", "bob@example.org", "cat@example.org")
            ]
            await site.finish({old[0]: "completed", old[1]: "completed", old[2]: "failed"})
            await site.settled(3)
        assert (store_dir / ".readmodel" / f"{topic_prefix}.views.sqlite3").exists()

        # What restarting `packager dev up` on a kept var/ does: an empty broker, the views kept.
        await site.new_broker()
        with site.projector() as projector, site.ingress():
            wait_for_port(site.port)
            params = {"resource_id": "new", "resource_url": URL, "email": "dan@example.org"}
            new = await submit(site.port, "package_url", SECRET, **params)
            await site.finish({new: "completed"})
            await site.answers_for_the_new_log_only(new, old)
            assert projector.log_file.read_text().count("rebuilding them from the log's start") == 1
            assert await metric(site.metrics_port, "packager_read_model_rebuilds_total") == 1.0

        audit = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "packager", "replay", "verify"],
            env={**os.environ, **site.env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        await site.stop_brokers()


async def test_a_running_projector_whose_broker_is_replaced_rebuilds_from_the_new_log(
    topic_prefix: str, store_dir: Path, tmp_path: Path
) -> None:
    site = OneAddress(topic_prefix, store_dir, tmp_path)
    try:
        await site.new_broker()
        with site.projector() as projector, site.ingress():
            wait_for_port(site.port)
            old = [await site.request("old", "ann@example.org"), await site.request("old", "bob@example.org")]
            await site.finish({old[0]: "completed", old[1]: "failed"})
            await site.settled(2)

            await site.new_broker()  # under the running ingress
            await ensure_topics(site.bootstrap, site.topics, 2)
            new = await site.request("new", "dan@example.org")
            await site.finish({new: "completed"})
            await site.answers_for_the_new_log_only(new, old)
            log_text = projector.log_file.read_text()
            assert "LogReplaced" in log_text
            assert log_text.count("rebuilding them from the log's start") == 1
            assert await metric(site.metrics_port, "packager_read_model_rebuilds_total") == 1.0
    finally:
        await site.stop_brokers()
