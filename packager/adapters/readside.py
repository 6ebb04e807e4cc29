"""Adapter: keeping the ingress's read model up to date from the log, and asking Kafka about workers.

`ReadSide` runs a consumer (no consumer group: it reads every partition of the requests and events topics)
that folds each record into `projections.readmodel.ReadModel`. It starts from the positions stored in the
model's snapshot (or from the beginning when there is none), saves a snapshot every few seconds and when it
stops, and wakes live progress streams as jobs change.

The snapshot records which log its positions are in (`kafka_log.log_identity`): a model from another log (a
wiped broker, recreated topics) is dropped and rebuilt from the start. Records that are not valid events and
folds that raise are skipped, logged and counted, and the reading loop is supervised (`read_guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from packager.adapters import metrics
from packager.adapters.kafka_log import (
    LogIdentity,
    LogReplaced,
    Topics,
    ensure_topics,
    identity_mismatch,
    log_identity,
)
from packager.adapters.read_guard import FoldHealth, decode_record, supervise
from packager.core.settings import Settings
from packager.domain.secrets import keyed_hash
from projections.jobs import JobState
from projections.readmodel import ReadModel, write_atomically

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 5.0  # seconds


def identity_for(settings: Settings):  # type: ignore[no-untyped-def]
    """How requesters are identified in statistics: the address, or with ANONYMIZE_EMAILS a keyed hash."""
    if not settings.anonymize_emails:
        return lambda email: email.lower()
    return lambda email: keyed_hash(settings.secret, "email", email.lower())


def snapshot_path(settings: Settings) -> Path:
    """Where the ingress keeps its read model between runs."""
    base = Path(settings.read_model_directory or Path(settings.store_directory) / ".readmodel")
    return base / f"{settings.topic_prefix}.json"


async def topic_partitions(bootstrap: str, topics: list[str]) -> list[TopicPartition]:
    """Every partition of the topics that exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t in existing]
        if not wanted:
            return []
        described = await admin.describe_topics(wanted)
        return [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    finally:
        await admin.close()


async def worker_count(bootstrap: str, group: str) -> int:
    """Members of the workers' consumer group right now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = 0
    for response in responses:
        for g in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members[, authorized_operations])
            members += len(g[5])
    return members


async def broker_reachable(bootstrap: str) -> None:
    """Ask the broker for its topics; raise when it does not answer."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3_000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


class ReadSide:
    """The live read model of one ingress."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = snapshot_path(settings)
        self.model = ReadModel.load(self.path, identity_for(settings))
        self.model.on_change = self._changed
        self._watchers: dict[str, set[asyncio.Queue[JobState]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._ends: dict[TopicPartition, int] = {}
        self.health = FoldHealth()

    def _changed(self, job: JobState) -> None:
        for queue in self._watchers.get(job.job_id, ()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(job)

    async def watch(self, job_id: str) -> AsyncIterator[JobState]:
        """The job's state now and after every change, until it is terminal and emailed or failed to."""
        queue: asyncio.Queue[JobState] = asyncio.Queue(maxsize=1000)
        self._watchers[job_id].add(queue)
        try:
            current = self.model.jobs.get(job_id)
            if current is not None:
                yield current
                if current.terminal:
                    return
            while True:
                job = await queue.get()
                yield job
                if job.terminal:
                    return
        finally:
            self._watchers[job_id].discard(queue)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    def lag(self) -> dict[tuple[str, int], int]:
        """Records on each followed partition not yet folded into the model (empty while not following)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lag = {}
        for tp, end in self._ends.items():
            highwater = consumer.highwater(tp)
            position = self.model.positions.get(f"{tp.topic}:{tp.partition}", 0)
            lag[(tp.topic, tp.partition)] = max(0, (end if highwater is None else highwater) - position)
        return lag

    def start(self) -> None:
        """Begin following the log in the background."""
        self._task = asyncio.create_task(
            supervise("the read side's reading of Kafka", self._follow, self.health), name="read-side"
        )

    async def stop(self) -> None:
        """Stop following and save a snapshot."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        write_atomically(self.path, self.model.snapshot())

    async def _same_log(self, followed: list[str], *, at_start: bool) -> None:
        """Check the model was built from the log the broker holds; at start, rebuild it if not."""
        current = await log_identity(self.settings.kafka_bootstrap_servers, followed)
        saved = self.model.log_identity
        why = identity_mismatch(LogIdentity.from_dict(saved) if saved else None, current)
        if why is not None:
            if not at_start:
                raise LogReplaced(why)
            log.warning("the read model was built from another log (%s): rebuilding it from the start", why)
            metrics.READ_MODEL_REBUILDS.inc()
            self.model = ReadModel(identity=identity_for(self.settings))
            self.model.on_change = self._changed
            self.caught_up.clear()
        self.model.log_identity = current.to_dict()

    async def _follow(self) -> None:
        topics = Topics(self.settings.topic_prefix)
        bootstrap = self.settings.kafka_bootstrap_servers
        await ensure_topics(
            bootstrap, topics, self.settings.partitions, replication_factor=self.settings.replication_factor
        )
        await self._same_log([topics.requests, topics.events], at_start=True)
        partitions = await topic_partitions(bootstrap, [topics.requests, topics.events])
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            for tp in partitions:
                position = self.model.positions.get(f"{tp.topic}:{tp.partition}")
                if position is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, position)
            ends = await consumer.end_offsets(partitions)
            self._consumer, self._ends = consumer, dict(ends)
            self.health.running()
            saved_at = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        self._fold(tp, record.offset, record.value)
                if not self.caught_up.is_set() and all(
                    self.model.positions.get(f"{tp.topic}:{tp.partition}", 0) >= ends[tp] for tp in partitions
                ):
                    self.caught_up.set()
                if time.monotonic() - saved_at > SNAPSHOT_EVERY:
                    # Never save positions of one log under another's identity (a broker replaced while
                    # this runs): LogReplaced restarts the loop, which rebuilds the model.
                    with contextlib.suppress(KafkaError, OSError, TimeoutError):
                        await self._same_log([topics.requests, topics.events], at_start=False)
                    # Serialised here, between folds, so the snapshot is consistent; written in a thread.
                    data = self.model.snapshot()
                    await asyncio.to_thread(write_atomically, self.path, data)
                    saved_at = time.monotonic()
        finally:
            self._consumer = None
            await consumer.stop()

    def _fold(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        """Fold one record; a record that is no valid event, or whose fold raises, is skipped and reported."""
        event = decode_record(tp.topic, tp.partition, offset, value)
        if event is not None:
            try:
                self.model.apply(tp.topic, tp.partition, offset, event)
                return
            except Exception as exc:  # a fold's bug must not stop the read side: logged, and degraded
                self.health.fold_failed(tp.topic, tp.partition, offset, event, exc)
        key = f"{tp.topic}:{tp.partition}"
        self.model.positions[key] = max(self.model.positions.get(key, 0), offset + 1)
