"""Adapter: the projector, which folds the log into the views database (`packager projector`).

It reads every partition of the requests and events topics (no consumer group: its positions are the
tracking records in the database, not Kafka offsets), starting where the views end, and applies records
in batches (up to `BATCH_RECORDS`, or what arrived within `BATCH_SECONDS`), each in one transaction with
the positions it consumed (`ViewDatabase.apply`). A crash at any point neither loses an event nor applies
one twice.

The strict boundary (`packager.adapters.read_guard`): decoding goes through `decode_record`, the typed decode;
a record that fails is logged, counted and skipped (only its position moves; the workers dead-letter it, the
projector never writes to the log). A fold that raises is logged with its event and counted, and its batch is
applied again one record at a time without it, so the views keep their last good state and never hold half a
batch. What went wrong (`FoldHealth.problem()`) is written to the `meta` row `projector_status`, which the
ingress's readiness reports as "degraded". The following loop is supervised (`supervise`): it is restarted
with backoff whatever stops it.

Log identity: the views record the cluster and topic ids of the log they were built from (`meta` row
`log_identity`). A projector that finds its views built from another log (a wiped broker, recreated topics)
logs it, counts it (`packager_read_model_rebuilds_total`) and rebuilds them from the start of the log; a log
replaced under a running projector is noticed within `IDENTITY_CHECK_SECONDS` and handled the same way.
The worker's views (`projections.worker_fold`) depend on CACHE_TIME and LEASE_TIME too: the views record the
values they were folded with (`meta` row `worker_fold`), and a projector started with others recomputes the
expiries and lease deadlines they set.
Partitions: a following projector reads every partition of both topics (those of its share, with `--share`:
see `projector_shares`); it waits for a topic that has none yet (just created) and starts reading again when
partitions appear (checked with the identity).

The replay tool runs this same loop into a fresh database, up to given positions (`stop_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
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
from packager.adapters.log_alignment import Aligner, Run, merged
from packager.adapters.projector_shares import WHOLE, Share, clear_other_statuses
from packager.adapters.read_guard import FoldHealth, decode_record, supervise
from packager.adapters.readside import identity_for, missing_topics, topic_partitions
from packager.adapters.view_apply import Decoded, ViewsRewound
from packager.adapters.viewdb import ViewDatabase, database_url, worker_parameters
from packager.core.settings import Settings
from projections.view_fold import Identity
from projections.view_schema import LOG_IDENTITY, SCHEMA_VERSION

log = logging.getLogger(__name__)

BATCH_RECORDS = 5000
BATCH_SECONDS = 0.1
CHECKPOINT_SECONDS = 1.0  # SQLite: how often the WAL is copied into the file beside the writer
# Per partition and fetch: catching up on a long log takes fewer round trips than with the 1 MB default.
FETCH_BYTES = 2 * 1024 * 1024
IDENTITY_CHECK_SECONDS = 5.0  # how often a following projector checks the broker still holds its log
PARTITION_RECHECK_SECONDS = 0.5  # the wait before reading again when partitions changed


@dataclass
class Progress:
    """What a projector has done, for callers that watch it (tests, the replay tool)."""

    applied: int = 0
    batches: int = 0
    caught_up: bool = False
    rebuilds: int = 0  # times the views were dropped because they came from another log
    health: FoldHealth = field(default_factory=FoldHealth)


async def run_projector(
    settings: Settings,
    *,
    until_caught_up: bool = False,
    url: str | None = None,
    stop_at: Mapping[tuple[str, int], int] | None = None,
    until: str = "",
    progress: Progress | None = None,
    share: Share = WHOLE,
) -> int:
    """Fold the log into the views until cancelled; return the number of events applied.

    `until_caught_up` stops at the log's end as it was at start; `stop_at` stops each partition at the given
    next offset (a partition not named is not read); `url` overrides the settings' database; `until` (ISO
    8601) skips events that occurred after it; `share` reads only its partitions (`projector_shares`).
    """
    db = ViewDatabase(url or database_url(settings), worker_parameters(settings))
    progress = progress if progress is not None else Progress()
    if stop_at is not None or until_caught_up:
        return await _project(settings, db, stop_at, until, progress, share, follow=False)
    # Following for ever: whatever stops the loop (a lost broker or database, a replaced log, a bug outside
    # the folds) restarts it with backoff, never the end of the projector; a batch that failed rolled back
    # with its positions, so it is read again. A fold that raises does not stop it (see `_apply_run`).
    try:
        await _publish(db, progress.health, share)  # a new projector: what an earlier one saw no longer holds
    except Exception:  # the database is not there yet: the supervised loop below waits for it
        log.debug("could not clear the projector's status", exc_info=True)

    async def published_stop() -> None:
        async with asyncio.timeout(5.0):
            await _publish(db, progress.health, share)

    of = f" (share {share})" if share.count > 1 else ""
    await supervise(
        f"the projector's reading of Kafka and writing of the views{of}",
        lambda: _follow(settings, db, until, progress, share),
        progress.health,
        on_stop=published_stop,
    )
    return progress.applied


class PartitionsChanged(Exception):
    """The followed topics' partitions are not the ones being read (a topic still being created, or more
    partitions added): the reading starts again on all of them, from the positions in the views."""


class NothingToRead(PartitionsChanged):
    """A share of more projectors than the topics have partitions: it waits for partitions to be added."""


async def _follow(settings: Settings, db: ViewDatabase, until: str, progress: Progress, share: Share) -> int:
    """`_project` for ever, started again (without the supervisor's backoff) whenever partitions change."""
    idle = False  # said once: this share has no partition to read
    while True:
        try:
            return await _project(settings, db, None, until, progress, share, follow=True)
        except NothingToRead as exc:
            if not idle:
                log.warning("%s: waiting for partitions (checked every %.0f s)", exc, IDENTITY_CHECK_SECONDS)
            idle = True
            await asyncio.sleep(IDENTITY_CHECK_SECONDS)
        except PartitionsChanged as exc:
            log.info("%s: reading every partition again", exc)
            await asyncio.sleep(PARTITION_RECHECK_SECONDS)
        except ViewsRewound as exc:
            log.warning("%s: reading again from the positions they hold", exc)


async def _publish(db: ViewDatabase, health: FoldHealth, share: Share) -> None:
    """Write the projector's status (`FoldHealth.problem()`, "" when all is well) where readiness reads it."""

    def write() -> None:
        conn = db.connect(create=True)
        try:
            db.set_meta(conn, share.status_row, health.problem() or "")
        finally:
            conn.close()

    await asyncio.to_thread(write)


async def _project(
    settings: Settings,
    db: ViewDatabase,
    stop_at: Mapping[tuple[str, int], int] | None,
    until: str,
    progress: Progress,
    share: Share,
    *,
    follow: bool,
) -> int:
    topics = Topics(settings.topic_prefix)
    bootstrap = settings.kafka_bootstrap_servers
    if follow:
        await ensure_topics(
            bootstrap, topics, settings.partitions, replication_factor=settings.replication_factor
        )
    followed = [topics.requests, topics.events]
    current = await log_identity(bootstrap, followed)
    if not follow and (missing := missing_topics(current, followed)):  # a following one created them
        log.warning("no topic %s at %s: is the topic prefix right?", ", ".join(missing), bootstrap)
    conn = await asyncio.to_thread(db.connect, create=True)
    identity = identity_for(settings)
    try:
        conn = await _same_log(db, conn, current, progress, share)
        if follow:  # the running projectors' status rows are the only ones readiness should report
            await asyncio.to_thread(clear_other_statuses, db, conn, share)
        partitions = await topic_partitions(bootstrap, followed)
        if follow:
            # Just after topics are created, metadata may name one and not yet the other (seen on CI): a
            # following projector that started reading without the events topic never read it.
            missing = sorted(set(followed) - {tp.topic for tp in partitions})
            if missing:
                raise PartitionsChanged(f"topic(s) {', '.join(missing)} have no partitions yet")
        numbers = len({tp.partition for tp in partitions})
        partitions = [tp for tp in partitions if share.owns(tp.partition)]
        if follow and not partitions:
            raise NothingToRead(f"share {share} has none of the topics' {numbers} partitions")
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
            return await _consume(
                consumer,
                partitions,
                db,
                conn,
                identity,
                stop_at,
                until,
                progress,
                follow,
                current,
                followed,
                bootstrap,
                share,
            )
        finally:
            checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpoints
            await consumer.stop()
    finally:
        conn.close()


async def _same_log(
    db: ViewDatabase, conn: Any, current: LogIdentity, progress: Progress, share: Share
) -> Any:
    """Make the views belong to the log `current` names, dropping them first when they were built from another
    one; record `current` in them. Returns the connection to go on with."""
    saved_text = await asyncio.to_thread(db.meta, conn, LOG_IDENTITY)
    saved = LogIdentity.from_dict(orjson.loads(saved_text)) if saved_text else None
    why = identity_mismatch(saved, current)
    if why is None and saved is None and bool(await asyncio.to_thread(db.positions, conn)):
        why = "the views do not say which log they were built from"
    if why is not None:
        why = f"the views were built from another log ({why})"
    version = await asyncio.to_thread(db.meta, conn, "schema_version")
    if why is None and version != SCHEMA_VERSION:
        # Version 1 held addresses (or hashes of them) where version 2 holds pseudonyms (docs/privacy.md).
        why = f"the views have schema version {version}; this projector writes version {SCHEMA_VERSION}"
    text = orjson.dumps(current.to_dict(), option=orjson.OPT_SORT_KEYS).decode()
    if why is not None:
        conn.close()
        if await asyncio.to_thread(db.reset, text):  # (not when another share has just done it)
            log.warning("%s: rebuilding them from the log's start", why)
            metrics.READ_MODEL_REBUILDS.inc()
            progress.rebuilds += 1
        progress.caught_up = False
        conn = await asyncio.to_thread(db.connect, create=True)
        # What was wrong with the dropped views is gone with them; a stop being restarted is still reported.
        progress.health.fold_failures, progress.health.last_fold_failure = 0, ""
        await asyncio.to_thread(db.set_meta, conn, share.status_row, progress.health.problem() or "")
    elif text != saved_text:  # (`reset` recorded the log with the new views)
        await asyncio.to_thread(db.set_meta, conn, LOG_IDENTITY, text)
    if await asyncio.to_thread(db.update_worker_parameters, conn):
        # The worker applies its current CACHE_TIME and LEASE_TIME to what it already holds: so do the views.
        log.info(
            "the worker's views now use CACHE_TIME %s s and LEASE_TIME %s s",
            db.params.cache_time,
            db.params.lease_time,
        )
    return conn


async def _check_same_log(bootstrap: str, followed: list[str], started: LogIdentity) -> None:
    """Raise LogReplaced when the broker no longer holds the log the projector started on."""
    try:
        now = await log_identity(bootstrap, followed)
    except (KafkaError, OSError, TimeoutError):
        return  # a broker that does not answer is the consumer's matter; checked again later
    why = identity_mismatch(started, now)
    if why is not None:
        raise LogReplaced(why)


async def _check_same_partitions(
    bootstrap: str, followed: list[str], reading: list[TopicPartition], share: Share
) -> None:
    """Raise PartitionsChanged when the followed topics have partitions of the share not being read."""
    try:
        now = await topic_partitions(bootstrap, followed)
    except (KafkaError, OSError, TimeoutError):
        return  # checked again later
    new = sorted({tp for tp in now if share.owns(tp.partition)} - set(reading))
    if new:
        named = ", ".join(f"{tp.topic}:{tp.partition}" for tp in new)
        raise PartitionsChanged(f"partition(s) {named} appeared")


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
    started: LogIdentity,
    followed: list[str],
    bootstrap: str,
    share: Share,
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
    # The positions this projector last saw in the views: a batch finding them lower (the views dropped
    # and being rebuilt by another projector) stops, and the reading starts again from the views.
    expected = dict(stored)

    def done() -> bool:
        return all(reached[tp] >= limits[tp] for tp in partitions)

    if follow and progress.health.stopped:
        progress.health.running()
        await asyncio.to_thread(db.set_meta, conn, share.status_row, progress.health.problem() or "")
    # Whole runs of records per partition, held back to read the partitions in step (`log_alignment`): the
    # event loop only holds and releases records; decoding and folding happen in the batch's thread.
    aligner = Aligner(partitions)

    def behind(tp: TopicPartition) -> bool:
        if not follow:
            return reached[tp] < limits[tp]
        end = consumer.highwater(tp)
        return end is None or reached[tp] < end

    pending: list[Run] = []
    count, first_at = 0, 0.0
    checked_at = time.monotonic()
    while follow or not done():
        if follow and time.monotonic() - checked_at >= IDENTITY_CHECK_SECONDS:
            await _check_same_log(bootstrap, followed, started)
            await _check_same_partitions(bootstrap, followed, partitions, share)
            checked_at = time.monotonic()
        # No `max_records`: with aiokafka 0.14 it was seen to leave a partition's tail undelivered.
        batch = await consumer.getmany(timeout_ms=int(BATCH_SECONDS * 1000))
        for tp, records in batch.items():
            if not follow and records and records[-1].offset >= limits[tp]:
                records = [r for r in records if r.offset < limits[tp]]
            if records:
                aligner.add(tp, records)
                reached[tp] = records[-1].offset + 1
        for run in aligner.release(behind):
            if not pending:
                first_at = time.monotonic()
            pending.append(run)
            count += len(run[2])
        pause, resume = aligner.pausing()
        if not follow:  # a partition read up to its limit fetches nothing more that would be thrown away
            ended = [tp for tp in partitions if reached[tp] >= limits[tp]]
            pause, resume = [*pause, *ended], [tp for tp in resume if reached[tp] < limits[tp]]
        consumer.pause(*pause)
        consumer.resume(*resume)
        if pending and (count >= BATCH_RECORDS or time.monotonic() - first_at >= BATCH_SECONDS or not batch):
            progress.applied += await _apply(
                db, conn, pending, identity, until, progress.health, expected, share
            )
            progress.batches += 1
            pending, count = [], 0
        if not progress.caught_up and not pending and not aligner.count and done():
            progress.caught_up = True
            of = f", share {share}" if share.count > 1 else ""
            log.info("the views caught up with the log (%d events applied%s)", progress.applied, of)
    if pending:
        progress.applied += await _apply(db, conn, pending, identity, until, progress.health, expected, share)
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
    raw: Sequence[Run],
    identity: Identity,
    until: str,
    health: FoldHealth,
    expected: dict[tuple[str, int], int],
    share: Share,
) -> int:
    """Apply one batch in a thread; a cancellation waits for the batch's transaction to end first, so the
    connection is never closed under it."""
    work = asyncio.ensure_future(
        asyncio.to_thread(_decode_and_apply, db, conn, raw, identity, until, health, expected, share)
    )
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


def _decode_and_apply(
    db: ViewDatabase,
    conn: object,
    raw: Sequence[Run],
    identity: Identity,
    until: str,
    health: FoldHealth,
    expected: dict[tuple[str, int], int],
    share: Share,
) -> int:
    """Runs in a thread (CPU work the event loop need not wait for). One transaction per BATCH_RECORDS
    records; a share of several folds beside the others, outside the write lock (`view_apply`)."""
    records: list[Decoded] = [
        (t, p, r.offset, decode_record(t, p, r.offset, r.value)) for t, p, r in merged(raw)
    ]
    applied = 0
    failures = health.fold_failures
    for start in range(0, len(records), BATCH_RECORDS):
        run = records[start : start + BATCH_RECORDS]
        applied += _apply_run(db, conn, run, identity, until, health, expected, share.count > 1)
    if health.fold_failures != failures:
        db.set_meta(conn, share.status_row, health.problem() or "")
    return applied


def _apply_run(
    db: ViewDatabase,
    conn: Any,
    records: Sequence[Decoded],
    identity: Identity,
    until: str,
    health: FoldHealth,
    expected: dict[tuple[str, int], int],
    beside: bool = False,
) -> int:
    """Apply records in one transaction; when a fold raises (the transaction rolled back: nothing of the
    batch is in the views), apply them again one at a time, skipping the event whose fold raises."""
    not_folds: tuple[type[BaseException], ...] = (*db.errors, ViewsRewound)
    try:
        return db.apply(conn, records, identity, until=until, expected=expected, beside=beside)
    except not_folds:
        raise  # the database failed (or went back), not a fold: the run is read again
    except Exception:  # which event raised is found below, and logged there
        pass
    applied = 0
    for topic, partition, offset, event in records:
        try:
            applied += db.apply(
                conn, [(topic, partition, offset, event)], identity, until=until, expected=expected
            )
        except not_folds:
            raise
        except Exception as exc:  # a fold's bug must not stop the projector: logged, counted, degraded
            assert event is not None  # an undecoded record folds nothing, so cannot raise
            health.fold_failed(topic, partition, offset, event, exc)
            only_position = [(topic, partition, offset, None)]
            db.apply(conn, only_position, identity, until=until, expected=expected)
    return applied
