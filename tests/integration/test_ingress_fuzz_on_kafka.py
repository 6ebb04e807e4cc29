"""The fuzz suite's hostile requests against a real broker, to keep the in-memory log honest.

The same strategies as `tests/unit/test_ingress_fuzz.py`, fewer cases (`EXAMPLES`): no request gets a 5xx,
and after every rejected request the end offsets of every topic of the deployment are what they were.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from packager.adapters.kafka_log import Topics
from packager.adapters.projector import run_projector
from packager.adapters.readside import topic_partitions
from packager.core.settings import load_settings
from packager.http.ingress import create_app
from tests.fuzz_strategies import (
    BASE,
    MAX_BODY,
    POST_PATHS,
    SECRET,
    Call,
    chunks,
    fake_resolver,
    get_calls,
    post_calls,
)

pytestmark = pytest.mark.kafka

EXAMPLES = 500


class KafkaHarness:
    """The ingress with its real Kafka log on a test server, plus a consumer that reads end offsets."""

    def __init__(self, bootstrap: str, prefix: str, store: Path) -> None:
        self.runner = asyncio.Runner()
        self.settings = load_settings(
            {},
            secret=SECRET,
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            partitions=2,
            store_directory=str(store),
            max_body_size=MAX_BODY,
        )
        self.client, self.consumer, self.partitions = self.runner.run(self._start(bootstrap, prefix))
        self.cases = 0
        self.rejected = 0

    async def _start(
        self, bootstrap: str, prefix: str
    ) -> tuple[TestClient, AIOKafkaConsumer, list[TopicPartition]]:
        app: web.Application = create_app(self.settings, resolver=fake_resolver)
        client = TestClient(TestServer(app))
        await client.start_server()
        # One accepted request creates the topics, so every partition has an end offset to compare.
        resp = await client.post("/package_url", data=BASE["/package_url"])
        assert resp.status == 200, await resp.text()
        partitions = await topic_partitions(bootstrap, Topics(prefix).all())
        assert len(partitions) == 2 * len(Topics(prefix).all())
        # The views the read endpoints answer from, as a projector leaves them (they may lag during the run).
        await run_projector(self.settings, until_caught_up=True)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        # A fresh broker elects partition leaders and creates its group coordinator in the background; until
        # then /status is an honest 503. The fuzzing is about input, so it starts once both are ready.
        deadline = time.monotonic() + 60
        while True:
            try:
                await consumer.end_offsets(partitions)
                resp = await client.get("/status", params={"secret": SECRET})
                if resp.status == 200:
                    break
            except KafkaError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not become ready for /status and end offsets")
            await asyncio.sleep(0.5)
        return client, consumer, partitions

    async def _ends(self) -> dict[TopicPartition, int]:
        return await self.consumer.end_offsets(self.partitions)

    async def _send(self, call: Call) -> tuple[int, bytes]:
        body = chunks(call.body) if call.chunked and call.body is not None else call.body
        async with self.client.request(
            call.method, URL(call.path, encoded=True), headers=call.headers, data=body
        ) as resp:
            return resp.status, await resp.read()

    def check(self, call: Call) -> None:
        """Send the request: never a 5xx, and a rejection leaves every end offset where it was."""
        self.cases += 1
        before = self.runner.run(self._ends())
        status, body = self.runner.run(self._send(call))
        assert status < 500, f"{status} {body[:500]!r}"
        if 400 <= status < 500:
            self.rejected += 1
            assert self.runner.run(self._ends()) == before, "a rejected request reached the log"

    def close(self) -> None:
        self.runner.run(self.consumer.stop())
        self.runner.run(self.client.close())
        self.runner.close()


@pytest.fixture
def harness(kafka_bootstrap: str, topic_prefix: str, store_dir: Path) -> Iterator[KafkaHarness]:
    h = KafkaHarness(kafka_bootstrap, topic_prefix, store_dir)
    try:
        yield h
    finally:
        h.close()


def test_hostile_requests_never_fail_with_5xx_and_rejections_leave_the_log_as_it_was(
    harness: KafkaHarness,
) -> None:
    # /status and /statistics* read the views a projector wrote at the start: they are in the mix too.
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.one_of(post_calls(POST_PATHS), get_calls()))
    def run(call: Call) -> None:
        harness.check(call)

    run()
    print(f"{harness.cases} requests, {harness.rejected} rejected")
    assert harness.cases >= EXAMPLES
    assert harness.rejected > EXAMPLES // 2  # most are hostile: the offsets check really ran
