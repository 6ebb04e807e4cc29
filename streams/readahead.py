"""Reading ahead in a partition: what an agent needs after a crash to tell done work from work to redo.

An agent that appends an event and then records that it did (a table write, a committed offset) can
crash between the two. Read again, its input asks for the same append. Instead of appending twice, the
agent looks further on in the partition its append goes to: if the event is there, it was done.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from packager.core import retrying
from packager.core.errors import EventDecodeError
from packager.core.retrying import Backoff
from packager.domain.events import Envelope, decode

log = logging.getLogger(__name__)
T = TypeVar("T")


class LogReader:
    """A consumer outside any group, opened on first use, to look at partitions from a given offset."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._bootstrap = bootstrap_servers
        self._consumer: AIOKafkaConsumer | None = None

    async def _open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until the brokers answer: the caller cannot go on without the answer."""

        async def once() -> T:
            try:
                return await attempt()
            except (KafkaError, OSError):
                await self.close()  # the next try opens a fresh consumer
                raise

        return await retrying.call(
            what, once, backoff=Backoff(first=0.5, cap=5.0), retry_on=(KafkaError, OSError)
        )

    async def end_offset(self, tp: TopicPartition) -> int:
        """The offset the next record appended to `tp` will get."""
        return await self._retrying("read the end of the log", lambda: self._end_offset(tp))

    async def _end_offset(self, tp: TopicPartition) -> int:
        tp = TopicPartition(tp.topic, tp.partition)  # aiokafka checks the type (Faust's TP is not it)
        consumer = await self._open()
        return int((await consumer.end_offsets([tp]))[tp])

    async def scan(self, tp: TopicPartition, start: int, visit: Callable[[Envelope], None]) -> None:
        """Hand every valid event of `tp` from `start` to its current end to `visit`, in order.

        After a broker error the scan starts again from `start`: `visit` must not mind seeing an event twice.
        """
        await self._retrying("read ahead in the log", lambda: self._scan(tp, start, visit))

    async def _scan(self, tp: TopicPartition, start: int, visit: Callable[[Envelope], None]) -> None:
        tp = TopicPartition(tp.topic, tp.partition)  # aiokafka checks the type (Faust's TP is not it)
        consumer = await self._open()
        end = await self._end_offset(tp)
        if start >= end:
            return
        consumer.assign([tp])
        consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    return
                with contextlib.suppress(EventDecodeError):
                    visit(decode(record.value or b""))

    async def contains(self, tp: TopicPartition, start: int, wanted: Callable[[Envelope], bool]) -> bool:
        """True when an event of `tp` from `start` on matches `wanted`."""
        found = False

        def look(env: Envelope) -> None:
            nonlocal found
            found = found or wanted(env)

        await self.scan(tp, start, look)
        return found

    async def __aenter__(self) -> LogReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the consumer, if it was opened."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def committed_offsets(
    bootstrap: str, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The offsets `group` has committed on `tps` (partitions with no commit are left out).

    One try, with a consumer that asks the group's coordinator without joining the group: a caller on a
    timer asks again at its next tick rather than wait here while the brokers are away.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {}
        for tp in tps:
            offset = await consumer.committed(TopicPartition(tp.topic, tp.partition))
            if offset is not None:
                found[tp] = int(offset)
        return found
    finally:
        await consumer.stop()
