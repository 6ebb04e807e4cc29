"""Adapter: the projector, which folds the log into the views database (`packager projector`).

It reads every partition of the requests and events topics (no consumer group: its positions are the
tracking records in the database, not Kafka offsets), starting where the views end, and applies records
in batches (up to `BATCH_RECORDS`, or what arrived within `BATCH_SECONDS`), each in one transaction with
the positions it consumed (`ViewDatabase.apply`). A crash at any point neither loses an event nor applies
one twice. Decoding goes through `decode_record`, the one place a record becomes an event.

The replay tool runs this same loop into a fresh database, up to given positions (`stop_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from packager.adapters.kafka_log import Topics, ensure_topics
from packager.adapters.readside import identity_for, topic_partitions
from packager.adapters.viewdb import Decoded, ViewDatabase, ViewsUnavailable, database_url
from packager.core import retrying
from packager.core.errors import EventDecodeError
from packager.core.retrying import Backoff
from packager.core.settings import Settings
from packager.domain.events import Envelope, decode
from projections.view_fold import Identity

log = logging.getLogger(__name__)

BATCH_RECORDS = 5000
BATCH_SECONDS = 0.1
CHECKPOINT_SECONDS = 1.0  # SQLite: how often the WAL is copied into the file beside the writer
# Per partition and fetch: catching up on a long log takes fewer round trips than with the 1 MB default.
FETCH_BYTES = 2 * 1024 * 1024


def decode_record(topic: str, partition: int, offset: int, value: bytes | None) -> Envelope | None:
    """The event a record holds, or None (logged) when it is not a valid event: it only moves the position."""
    try:
        return decode(value if value is not None else b"")
    except EventDecodeError as exc:
        log.error("undecodable record at %s:%d@%d: %s", topic, partition, offset, exc.message)
        return None


@dataclass
class Progress:
    """What a projector has done, for callers that watch it (tests, the replay tool)."""

    applied: int = 0
    batches: int = 0
    caught_up: bool = False


async def run_projector(
    settings: Settings,
    *,
    until_caught_up: bool = False,
    url: str | None = None,
    stop_at: Mapping[tuple[str, int], int] | None = None,
    until: str = "",
    progress: Progress | None = None,
) -> int:
    """Fold the log into the views until cancelled; return the number of events applied.

    `until_caught_up` stops at the log's end as it was at start; `stop_at` stops each partition at the given
    next offset (a partition not named is not read); `url` overrides the settings' database; `until` (ISO
    8601) skips events that occurred after it.
    """
    db = ViewDatabase(url or database_url(settings))
    progress = progress if progress is not None else Progress()
    if stop_at is not None or until_caught_up:
        return await _project(settings, db, stop_at, until, progress, follow=False)
    # Following for ever: a lost broker or database is retried, never the end of the projector (a batch that
    # failed rolled back with its positions, so it is read again). A bug in a fold is not retried: it stops
    # the process, loudly.
    await retrying.call(
        "the projector's reading of Kafka and writing of the views",
        lambda: _project(settings, db, None, until, progress, follow=True),
        backoff=Backoff(first=1.0, cap=5.0),
        retry_on=(KafkaError, OSError, ViewsUnavailable, *db.errors),
    )
    return progress.applied


async def _project(
    settings: Settings,
    db: ViewDatabase,
    stop_at: Mapping[tuple[str, int], int] | None,
    until: str,
    progress: Progress,
    *,
    follow: bool,
) -> int:
    topics = Topics(settings.topic_prefix)
    bootstrap = settings.kafka_bootstrap_servers
    if follow:
        await ensure_topics(
            bootstrap, topics, settings.partitions, replication_factor=settings.replication_factor
        )
    conn = await asyncio.to_thread(db.connect, create=True)
    identity = identity_for(settings)
    try:
        partitions = await topic_partitions(bootstrap, [topics.requests, topics.events])
        if stop_at is not None:
            partitions = [tp for tp in partitions if stop_at.get((tp.topic, tp.partition), 0) > 0]
        if not partitions:
            progress.caught_up = True
            return progress.applied
        # "earliest": a newly assigned partition's position is reset in the background, and a reset to
        # "latest" racing with the seek below was seen to skip a whole partition.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_BYTES,
        )
        await consumer.start()
        checkpoints = asyncio.create_task(_checkpoint_every(db, CHECKPOINT_SECONDS), name="checkpoints")
        try:
            return await _consume(consumer, partitions, db, conn, identity, stop_at, until, progress, follow)
        finally:
            checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpoints
            await consumer.stop()
    finally:
        conn.close()


async def _consume(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    db: ViewDatabase,
    conn: object,
    identity: Identity,
    stop_at: Mapping[tuple[str, int], int] | None,
    until: str,
    progress: Progress,
    follow: bool,
) -> int:
    consumer.assign(partitions)
    stored = await asyncio.to_thread(db.positions, conn)
    starts = await consumer.beginning_offsets(partitions)
    for tp in partitions:
        position = stored.get((tp.topic, tp.partition))
        if position is None or position < starts[tp]:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, position)
    ends = await consumer.end_offsets(partitions)
    limits = {tp: stop_at[(tp.topic, tp.partition)] if stop_at is not None else ends[tp] for tp in partitions}
    reached = {tp: max(stored.get((tp.topic, tp.partition), 0), starts[tp]) for tp in partitions}

    def done() -> bool:
        return all(reached[tp] >= limits[tp] for tp in partitions)

    # Whole runs of records per partition, in the order they came: the event loop does no per-record work.
    pending: list[tuple[str, int, Sequence[Any]]] = []
    count, first_at = 0, 0.0
    while follow or not done():
        # No `max_records`: with aiokafka 0.14 it was seen to leave a partition's tail undelivered.
        batch = await consumer.getmany(timeout_ms=int(BATCH_SECONDS * 1000))
        for tp, records in batch.items():
            if not follow and records and records[-1].offset >= limits[tp]:
                records = [r for r in records if r.offset < limits[tp]]
            if not records:
                continue
            if not pending:
                first_at = time.monotonic()
            pending.append((tp.topic, tp.partition, records))
            count += len(records)
            reached[tp] = records[-1].offset + 1
        if pending and (count >= BATCH_RECORDS or time.monotonic() - first_at >= BATCH_SECONDS or not batch):
            progress.applied += await _apply(db, conn, pending, identity, until)
            progress.batches += 1
            pending, count = [], 0
        if not progress.caught_up and not pending and done():
            progress.caught_up = True
            log.info("the views caught up with the log (%d events applied)", progress.applied)
    if pending:
        progress.applied += await _apply(db, conn, pending, identity, until)
    progress.caught_up = True
    return progress.applied


async def _checkpoint_every(db: ViewDatabase, seconds: float) -> None:
    """Checkpoint the SQLite WAL on a connection of its own, so commits do not wait for the fsyncs."""
    conn = await asyncio.to_thread(db.connect)
    try:
        while True:
            await asyncio.sleep(seconds)
            # Never cancelled half-way: the connection is closed below only once the thread is done with it.
            work = asyncio.ensure_future(asyncio.to_thread(db.checkpoint, conn))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await work
                raise
            except Exception:  # the writer's automatic checkpoints still bound the WAL
                log.warning("a checkpoint of the views failed", exc_info=True)
    finally:
        await asyncio.to_thread(conn.close)


async def _apply(
    db: ViewDatabase,
    conn: object,
    raw: Sequence[tuple[str, int, Sequence[Any]]],
    identity: Identity,
    until: str,
) -> int:
    """Apply one batch in a thread; a cancellation waits for the batch's transaction to end first, so the
    connection is never closed under it."""
    work = asyncio.ensure_future(asyncio.to_thread(_decode_and_apply, db, conn, raw, identity, until))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


def _decode_and_apply(
    db: ViewDatabase,
    conn: object,
    raw: Sequence[tuple[str, int, Sequence[Any]]],
    identity: Identity,
    until: str,
) -> int:
    """Runs in a thread: decoding and folding are CPU work the event loop need not wait for. One
    transaction per BATCH_RECORDS records: one fetch may bring many more."""
    records: list[Decoded] = [
        (t, p, r.offset, decode_record(t, p, r.offset, r.value)) for t, p, run in raw for r in run
    ]
    applied = 0
    for start in range(0, len(records), BATCH_RECORDS):
        applied += db.apply(conn, records[start : start + BATCH_RECORDS], identity, until=until)
    return applied
