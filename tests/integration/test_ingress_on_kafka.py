"""The ingress against a real broker: accepted requests are on the log, rejected ones leave nothing.

Also: with the broker unreachable the ingress answers 503 JSON quickly instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import KafkaEventLog, Topics
from packager.core.logs import current_job_id
from packager.core.settings import load_settings
from packager.dev import kafka as dev_kafka
from packager.dev.kafka import free_port
from packager.http.app_keys import EVENT_LOG
from packager.http.ingress import create_app
from tests.integration.support import end_offsets, read_topic

pytestmark = pytest.mark.kafka

SECRET = "integration-test-secret-0123456789"
GOOD = {
    "secret": SECRET,
    "resource_id": "r1",
    "resource_url": "https://data.example.org/files/f.csv",
    "email": "a@example.org",
    "key": "ckan-key-abcdef-0001",
}


async def resolver(host: str) -> list[str]:
    return {"data.example.org": ["93.184.216.34"], "rebind.example.org": ["127.0.0.1"]}[host]


@pytest.fixture
async def client(kafka_bootstrap: str, topic_prefix: str, store_dir: Path) -> AsyncIterator[TestClient]:
    settings = load_settings(
        {},
        secret=SECRET,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        partitions=4,
        store_directory=str(store_dir),
        max_body_size=8192,
    )
    async with TestClient(TestServer(create_app(settings, resolver=resolver))) as c:
        yield c


BAD = {
    "wrong secret": ({**GOOD, "secret": "x" * 30}, 401),
    "missing secret": ({k: v for k, v in GOOD.items() if k != "secret"}, 401),
    "missing email": ({k: v for k, v in GOOD.items() if k != "email"}, 400),
    "missing resource_url": ({k: v for k, v in GOOD.items() if k != "resource_url"}, 400),
    "malformed email": ({**GOOD, "email": "someone@"}, 400),
    "not http": ({**GOOD, "resource_url": "gopher://data.example.org/f"}, 400),
    "loopback literal": ({**GOOD, "resource_url": "http://127.0.0.1:22/"}, 400),
    "ipv6 loopback": ({**GOOD, "resource_url": "http://[::1]/"}, 400),
    "name resolving to loopback": ({**GOOD, "resource_url": "http://rebind.example.org/f"}, 400),
    "link-local metadata": ({**GOOD, "resource_url": "http://169.254.169.254/latest/meta-data"}, 400),
    "private range": ({**GOOD, "resource_url": "http://192.168.0.10/f"}, 400),
    "header injection": ({**GOOD, "email": "a@example.org\r\nBcc: x@example.org"}, 400),
    "too large": ({**GOOD, "pad": "p" * 20_000}, 413),
}


async def test_an_accepted_request_is_on_the_requests_topic_keyed_by_cache_key(
    client: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    resp = await client.post("/package_url", data=GOOD)
    body = await resp.json()
    assert resp.status == 200, body
    records = await read_topic(kafka_bootstrap, Topics(topic_prefix).requests)
    assert len(records) == 1
    key, value = records[0]
    assert body["job_id"].encode() in value
    assert key is not None and key.decode() in value.decode()  # keyed by the cache key it carries
    assert SECRET.encode() not in value and GOOD["key"].encode() not in value


async def test_rejected_requests_append_nothing_to_the_log(
    client: TestClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    # One accepted request first, so the topics exist and offsets are comparable.
    assert (await client.post("/package_url", data=GOOD)).status == 200
    topics = Topics(topic_prefix)
    before = {t: await end_offsets(kafka_bootstrap, t) for t in topics.all()}
    statuses = {}
    for name, (params, _) in BAD.items():
        resp = await client.post("/package_url", data=params)
        statuses[name] = resp.status
        assert (await resp.json())["status"] == "failed", name
    assert statuses == {name: status for name, (_, status) in BAD.items()}
    after = {t: await end_offsets(kafka_bootstrap, t) for t in topics.all()}
    assert after == before


async def test_an_unreachable_broker_is_a_quick_503_and_nothing_hangs(store_dir: Path) -> None:
    settings = load_settings(
        {},
        secret=SECRET,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        topic_prefix="unreachable",
        store_directory=str(store_dir),
        kafka_send_timeout=3.0,
    )
    async with TestClient(TestServer(create_app(settings, resolver=resolver))) as client:
        started = time.monotonic()
        resp = await client.post("/package_url", data=GOOD)
        elapsed = time.monotonic() - started
        body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "failed" and body["error"] == "ServiceUnavailableError"
    assert elapsed < 15, f"the ingress took {elapsed:.1f}s to give up"


class ContextCapture(logging.Handler):
    """Keeps (logger, message, the job id bound where the line was written) of every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, record.getMessage(), current_job_id()))


async def test_the_kafka_clients_tasks_do_not_carry_the_first_jobs_id(client: TestClient) -> None:
    """The first request starts the producer; its background tasks must not inherit that job's id."""
    capture = ContextCapture()
    kafka_logger = logging.getLogger("aiokafka")
    level = kafka_logger.level
    kafka_logger.addHandler(capture)
    kafka_logger.setLevel(logging.DEBUG)
    try:
        resp = await client.post("/package_url", data=GOOD)
        job_id = (await resp.json())["job_id"]
        assert resp.status == 200
        after_request = len(capture.seen)
        # Wake the producer's metadata task (started during the request) from outside any job, and wait for
        # the line it writes.
        assert client.app is not None
        event_log = client.app[EVENT_LOG]
        assert isinstance(event_log, KafkaEventLog)
        producer = event_log._producer
        assert producer is not None
        await producer.client.force_metadata_update()
        deadline = time.monotonic() + 10
        while not any("metadata request" in m for _, m, _ in capture.seen[after_request:]):
            assert time.monotonic() < deadline, "the producer's metadata task wrote nothing"
            await asyncio.sleep(0.05)
    finally:
        kafka_logger.removeHandler(capture)
        kafka_logger.setLevel(level)
    # Lines written by the request itself (its send) are about the job; the client's tasks' lines are not.
    leaked = [(name, m) for name, m, bound in capture.seen[after_request:] if bound is not None]
    assert not leaked, f"the client's lines carry job {job_id}: {leaked[:3]}"


async def timed_post(client: TestClient) -> tuple[int, float]:
    started = time.monotonic()
    resp = await client.post("/package_url", data=GOOD)
    await resp.read()
    return resp.status, time.monotonic() - started


async def test_with_the_broker_known_down_requests_get_503_within_2s_and_200_once_it_is_back(
    tmp_path: Path, store_dir: Path, topic_prefix: str
) -> None:
    state_dir = tmp_path / "own-broker"  # its own broker, stopped mid-test: the session's is shared
    broker = await asyncio.to_thread(dev_kafka.start, state_dir, partitions=2)
    try:
        send_timeout = 6.0  # over 2 s, so a request that waited for it could not pass
        settings = load_settings(
            {},
            secret=SECRET,
            kafka_bootstrap_servers=broker.bootstrap_servers,
            topic_prefix=topic_prefix,
            partitions=2,
            store_directory=str(store_dir),
            kafka_send_timeout=send_timeout,
        )
        client = TestClient(TestServer(create_app(settings, resolver=resolver, read_views=False)))
        await client.start_server()
        try:
            assert (await timed_post(client))[0] == 200
            await asyncio.to_thread(dev_kafka.halt, state_dir)
            # The first request after the broker went away finds out (within KAFKA_SEND_TIMEOUT) ...
            status, seconds = await timed_post(client)
            assert status == 503 and seconds < send_timeout + 5
            # ... and from then on the broker is known down: no request waits for it.
            answers = [await timed_post(client) for _ in range(5)]
            assert all(s == 503 and t < 2 for s, t in answers), answers
            await asyncio.to_thread(dev_kafka.resume, state_dir)
            deadline = time.monotonic() + 60
            while (status := (await timed_post(client))[0]) != 200:
                assert status == 503
                assert time.monotonic() < deadline, "the ingress did not accept requests again"
                await asyncio.sleep(0.5)
            records = await read_topic(broker.bootstrap_servers, Topics(topic_prefix).requests)
            assert len(records) >= 2  # the one before and the one after the outage
            # Down again, with a record the broker never acknowledged: the ingress still stops.
            await asyncio.to_thread(dev_kafka.halt, state_dir)
            assert (await timed_post(client))[0] == 503
        finally:
            started = time.monotonic()
            await client.close()
            closed_in = time.monotonic() - started
        assert closed_in < send_timeout + 5, f"the ingress took {closed_in:.1f}s to stop"
    finally:
        await asyncio.to_thread(dev_kafka.stop, state_dir)
