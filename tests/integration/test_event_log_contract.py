"""One contract, two implementations: the in-memory fake the unit tests use and the real Kafka log.

If the fake drifts from the real adapter (ordering, keys, failure mode), this suite says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from packager.adapters.kafka_log import EventLog, InMemoryEventLog, KafkaEventLog, Topics
from packager.core.errors import UnavailableError
from packager.dev.kafka import free_port
from packager.domain.events import Envelope, PackageQueued, decode, envelope
from tests.integration.support import read_topic

pytestmark = pytest.mark.kafka


@dataclass
class Backend:
    log: EventLog
    read: Callable[[str], Awaitable[list[tuple[str, Envelope]]]]
    broken: Callable[[], Awaitable[EventLog]]


@pytest.fixture(params=["fake", "kafka"])
async def backend(request: pytest.FixtureRequest, topic_prefix: str) -> AsyncIterator[Backend]:
    if request.param == "fake":
        fake = InMemoryEventLog()

        async def read_fake(topic: str) -> list[tuple[str, Envelope]]:
            return list(fake.records.get(topic, []))

        async def broken_fake() -> EventLog:
            return InMemoryEventLog(available=False)

        yield Backend(fake, read_fake, broken_fake)
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    real = KafkaEventLog(bootstrap, Topics(topic_prefix), partitions=4, send_timeout=10)

    async def read_real(topic: str) -> list[tuple[str, Envelope]]:
        return [(k.decode() if k else "", decode(v)) for k, v in await read_topic(bootstrap, topic)]

    async def broken_real() -> EventLog:
        return KafkaEventLog(f"127.0.0.1:{free_port()}", Topics(topic_prefix), partitions=4, send_timeout=2)

    try:
        yield Backend(real, read_real, broken_real)
    finally:
        await real.close()


async def test_appended_events_read_back_equal_and_in_order_per_key(
    backend: Backend, topic_prefix: str
) -> None:
    topic = Topics(topic_prefix).events
    sent = [
        envelope(f"job-{i}", PackageQueued(cache_key="same-key", lane="fast", attempt=1)) for i in range(5)
    ]
    for event in sent:
        await backend.log.append(topic, "same-key", event)
    got = await backend.read(topic)
    assert [k for k, _ in got] == ["same-key"] * 5
    assert [e for _, e in got] == sent


async def test_an_unavailable_log_raises_unavailable(backend: Backend, topic_prefix: str) -> None:
    broken = await backend.broken()
    try:
        with pytest.raises(UnavailableError):
            await broken.append(
                Topics(topic_prefix).events,
                "k",
                envelope("j", PackageQueued(cache_key="k", lane="fast", attempt=1)),
            )
    finally:
        await broken.close()
