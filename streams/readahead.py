"""Reading ahead in a partition: what an agent needs after a crash to tell done work from work to redo.

An agent that appends an event and then records that it did (a table write, a committed offset) can
crash between the two. Read again, its input asks for the same append. Instead of appending twice, the
agent looks further on in the partition its append goes to: if the event is there, it was done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from packager.errors import EventDecodeError
from packager.events import Envelope, decode


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

    async def end_offset(self, tp: TopicPartition) -> int:
        """The offset the next record appended to `tp` will get."""
        consumer = await self._open()
        return int((await consumer.end_offsets([tp]))[tp])

    async def scan(self, tp: TopicPartition, start: int, visit: Callable[[Envelope], None]) -> None:
        """Hand every valid event of `tp` from `start` to its current end to `visit`, in order."""
        consumer = await self._open()
        end = await self.end_offset(tp)
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
