"""The mailer: emails the requester about every terminal event, on a Kafka consumer of its own.

It is not a Faust agent on purpose. Sending waits on the SMTP server, for up to SMTP_RETRY_FOR while it
is down; an agent that waits fills its buffer and Faust's delivery then waits on it, which would stop the
planner, the packers and cache hits of the same worker. Here the mailer has its own consumer group
(`<prefix>-mailer`): an SMTP outage holds emails and nothing else.

Delivery, at least once with duplicates only in a crash window:
- each terminal event, and each `ExpiryNoticeDue` (a reminder before a download expires, told apart from
  the job's terminal email by `mail_of`), gets a send task (at most MAIL_CONCURRENCY talk to SMTP at
  once, the rest wait);
  the group's offset of a partition never passes a terminal event whose outcome (`EmailSent` or
  `EmailFailed`) is not yet acknowledged by the broker;
- outcomes are appended with the terminal event's key, so they follow it in the same partition. When a
  partition is (re)assigned, the mailer first reads ahead from where it resumes to the partition's end and
  remembers which jobs already have an outcome: those are not emailed again after a restart;
- the window left: a crash after the SMTP server accepted a message and before its `EmailSent` was
  acknowledged sends that email again (see docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from packager.adapters import metrics
from packager.adapters.kafka_log import Topics
from packager.adapters.requester_keys import KafkaRequesterKeys
from packager.core import retrying
from packager.core.errors import EventDecodeError
from packager.core.logs import bind_job
from packager.core.retrying import Backoff
from packager.core.settings import Settings
from packager.domain.events import (
    NOTIFIED_TYPES,
    EmailFailed,
    EmailSent,
    Envelope,
    Event,
    ExpiryNoticeDue,
    PackageCancelled,
    decode,
    encode,
    envelope,
)
from streams.handlers import notify
from streams.pauses import TICK, PauseWatch
from streams.readahead import LogReader

log = logging.getLogger(__name__)

OUTCOME_TYPES = frozenset({EmailSent.TYPE, EmailFailed.TYPE})
MAILED_TYPES = NOTIFIED_TYPES | {ExpiryNoticeDue.TYPE}
RESTART_DELAY = 1.0  # seconds before the consume loop starts again after an error
REMEMBERED = 100_000  # job ids emailed recently, a second guard against repeated terminal events
COMMIT_EVERY = 1.0
REVOKE_GRACE = 5.0  # how long a revoked partition's sends may finish before they are left to the next owner
# A record whose handling raised this many times running (a bug, not an outage: Kafka's errors are always
# retried) is logged with its event, counted and passed, so it does not hold back every later job's email.
HANDLE_ATTEMPTS = 5


def mail_of(env: Envelope) -> str:
    """Which email an event asks for or settles: a job's terminal email (its id), or its expiry notice."""
    about = getattr(env.payload, "about", env.type)
    return f"{env.job_id}:notice" if about == ExpiryNoticeDue.TYPE else env.job_id


class _Gate:
    """MAIL_CONCURRENCY slots to the SMTP server, shut to sends that outlived a pause of the process.

    It knows which sends are talking to the server right now (`talking`): when their partition is
    revoked, only those get a moment to finish; the others are cancelled at once (see `Mailer._settle`).
    """

    def __init__(self, slots: int, frozen: Callable[[], bool]) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._frozen = frozen
        self.talking: set[asyncio.Task[Any]] = set()
        self.shut: set[asyncio.Task[Any]] = set()  # sends of revoked partitions: no new attempt

    async def __aenter__(self) -> None:
        await self._slots.acquire()
        task = asyncio.current_task()
        if self._frozen() or task in self.shut:
            self._slots.release()
            raise asyncio.CancelledError  # the group gave this email to another mailer meanwhile
        if task is not None:
            self.talking.add(task)

    async def __aexit__(self, *exc: object) -> None:
        self.talking.discard(asyncio.current_task())
        self._slots.release()


class Mailer(Service, ConsumerRebalanceListener):
    """Consumes the events topic in group `<prefix>-mailer` and sends one email per terminal event.

    The webhook sender (streams/webhook_sender.py) is this same machinery in a group of its own: it overrides
    the class attributes below, `slots`, `wants` and `_deliver`, and nothing else.
    """

    NAME = "mailer"  # the consumer group is `<prefix>-<NAME>`
    NOUN = "email"  # what one send delivers, in log lines
    # The events that start a send: terminal ones, expiry notices, cancellations (see `wants`).
    TRIGGERS: frozenset[str] = MAILED_TYPES | {PackageCancelled.TYPE}
    OUTCOMES: frozenset[str] = OUTCOME_TYPES  # the events recording a send's outcome

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).events
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pauses = PauseWatch(settings.session_timeout)
        self._fenced_at: float | None = None  # loop time of a freeze the group has not rebalanced after
        self._smtp = _Gate(self.slots(), self._pauses.frozen)
        self._sends: dict[TopicPartition, dict[int, asyncio.Task[None]]] = {}
        self._next: dict[TopicPartition, int] = {}  # the next offset to read, per owned partition
        self._settled: dict[TopicPartition, set[str]] = {}  # jobs with an outcome further on in the log
        self._scanned: set[TopicPartition] = set()
        # Partitions being revoked: the consume loop may still hold their records (it runs beside the
        # rebalance); a send started for one now would outlive the hand-over and race the next owner.
        self._revoking: set[TopicPartition] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()  # jobs whose email was settled lately
        self._sending: set[str] = set()  # jobs with a send task (a cancelled one leaves, and is sent again)
        # Records whose handling raised, and how many times running.
        self._failures: dict[tuple[TopicPartition, int], int] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._pause_task: asyncio.Task[None] | None = None
        self._reader = LogReader(settings.kafka_bootstrap_servers)
        self._keys = KafkaRequesterKeys(settings)  # opens sealed addresses, only to send
        super().__init__(**kwargs)

    # -- lifecycle -------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Connect and start consuming."""
        bootstrap = self.settings.kafka_bootstrap_servers
        # Idempotent: an append retried after a lost acknowledgement is stored once, not twice.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{self.settings.topic_prefix}-{self.NAME}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.session_timeout * 1000),
            heartbeat_interval_ms=int(min(3.0, self.settings.session_timeout / 5) * 1000),
        )
        self._consumer.subscribe([self.topic], listener=self)
        await self._consumer.start()
        self._loop_task = asyncio.create_task(self._run(), name=self.NAME)
        self._pause_task = asyncio.create_task(self._watch_pauses(), name=f"{self.NAME} pauses")

    async def on_stop(self) -> None:
        """Let sends in progress finish within DRAIN_TIMEOUT, commit, and leave the group."""
        for task in (self._loop_task, self._pause_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        owned = list(self._sends)
        # Sends talking to SMTP finish in moments; those waiting out an outage are left to the next owner.
        await self._settle(owned, min(self.settings.drain_timeout, REVOKE_GRACE))
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._commit(owned)
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self._reader.close()
        await self._keys.close()

    # -- rebalance listener ----------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Give the sends of revoked partitions a moment, commit what is done, forget the rest."""
        mine = [tp for tp in revoked if tp in self._sends]
        self._revoking.update(mine)
        try:
            await self._settle(mine, REVOKE_GRACE)
            with contextlib.suppress(KafkaError):
                await self._commit(mine)
        finally:
            for tp in mine:
                self._sends.pop(tp, None)
                self._next.pop(tp, None)
                self._settled.pop(tp, None)
                self._scanned.discard(tp)
            self._revoking.difference_update(mine)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Start tracking the new partitions; their read-ahead happens at their first terminal event."""
        self._fenced_at = None  # a rebalance after a freeze: what is assigned now is this member's own
        for tp in assigned:
            self._sends.setdefault(tp, {})
            self._settled.setdefault(tp, set())

    # -- the loop --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        """The consume loop, started again after any error (never dies silently)."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "the %s's loop failed; reading on from the last %s handled", self.NAME, self.NOUN
                )
                await asyncio.sleep(RESTART_DELAY)
                await self._rewind()

    async def _rewind(self) -> None:
        """Put each owned partition back at the first record not yet handled."""
        consumer = self._consumer
        assert consumer is not None
        for tp in list(self._sends):
            with contextlib.suppress(KafkaError, AssertionError):
                if tp in self._next:
                    consumer.seek(tp, self._next[tp])
                else:
                    await consumer.seek_to_committed(tp)

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        loop = asyncio.get_running_loop()
        committed_at = loop.time()
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if self._left_to_others():
                for tp, records in batches.items():  # read them again if the partitions stay ours
                    if records and tp in self._sends:
                        consumer.seek(tp, records[0].offset)
                continue
            for tp, records in batches.items():
                for record in records:
                    if tp not in self._sends or tp in self._revoking:
                        break  # revoked while the batch was in hand
                    try:
                        await self._handle(tp, record.offset, record.value)
                    except (KafkaError, asyncio.CancelledError):
                        raise
                    except Exception:
                        if not self._give_up(tp, record.offset, record.value):
                            raise  # the loop starts again at this record (`_run`)
                    if self._failures:
                        self._failures.pop((tp, record.offset), None)  # handled at last
                    if tp not in self._sends or tp in self._revoking:
                        break  # revoked while it was handled, so perhaps not handled: never commit past it
                    self._next[tp] = record.offset + 1
            # While too many emails wait (a long SMTP outage), stop reading: the group keeps its place.
            pending = sum(len(s) for s in self._sends.values())
            owned = list(self._sends)
            if pending >= 100 * self.slots():
                consumer.pause(*owned)
            else:
                consumer.resume(*owned)
            if loop.time() - committed_at >= COMMIT_EVERY:
                committed_at = loop.time()
                try:
                    await self._commit(owned)
                except KafkaError as exc:
                    log.warning("%s offsets not committed yet: %r", self.NAME, exc)

    def _give_up(self, tp: TopicPartition, offset: int, raw: bytes | None) -> bool:
        """Count a failed handling of a record; True (logged with the record, counted) when it is to be
        passed: HANDLE_ATTEMPTS in a row failed."""
        where = (tp, offset)
        self._failures[where] = failures = self._failures.get(where, 0) + 1
        if failures < HANDLE_ATTEMPTS:
            return False
        del self._failures[where]
        metrics.NOTIFIER_RECORDS_SKIPPED.labels(self.NAME).inc()
        log.exception(
            "the %s passes the record at %s:%d@%d after %d failed attempts, its %s not sent: %.300r",
            self.NAME,
            tp.topic,
            tp.partition,
            offset,
            failures,
            self.NOUN,
            raw,
            extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
        )
        return True

    async def _handle(self, tp: TopicPartition, offset: int, raw: bytes | None) -> None:
        try:
            env = decode(raw or b"")
        except EventDecodeError:
            return  # dead-lettered by the steward
        if env.type in self.OUTCOMES:
            self._settled[tp].discard(mail_of(env))
            self._remember(mail_of(env))
            return
        if env.type not in self.TRIGGERS or not self.wants(env):
            return
        if tp not in self._scanned:
            await self._read_ahead(tp, offset)
        if tp in self._revoking or tp not in self._sends:
            return  # revoked meanwhile: the next owner reads it again (the commit did not pass it)
        job = mail_of(env)
        if job in self._settled[tp] or job in self._recent or job in self._sending:
            return  # emailed before a restart, a repeated terminal event, or being sent now
        self._sending.add(job)
        task = asyncio.create_task(self._send(env), name=f"{self.NOUN} {env.job_id}")
        self._sends[tp][offset] = task
        task.add_done_callback(lambda done: self._sent(tp, offset, done))

    def _sent(self, tp: TopicPartition, offset: int, task: asyncio.Task[None]) -> None:
        """Forget a settled send; a cancelled or crashed one keeps holding the partition's offset."""
        if task.cancelled():
            return  # left to whoever reads the partition next
        if (exc := task.exception()) is not None:
            log.error("%s not sent: %r", self.NOUN, exc, exc_info=exc)
            return
        self._sends.get(tp, {}).pop(offset, None)

    async def _send(self, env: Envelope) -> None:
        bind_job(env.job_id)
        try:
            await self._deliver(env)
        finally:
            self._sending.discard(mail_of(env))
        self._remember(mail_of(env))  # settled: a repeated terminal event is not emailed again

    def slots(self) -> int:
        """How many sends may talk to the far end at once."""
        return self.settings.mail_concurrency

    def wants(self, env: Envelope) -> bool:
        """Whether this event has anything to deliver: a cancellation only with EMAIL_CANCELLATIONS."""
        return env.type != PackageCancelled.TYPE or self.settings.email_cancellations

    async def _deliver(self, env: Envelope) -> None:
        outcome = await notify(self.settings, env, slot=self._smtp, keys=self._keys)
        if outcome is None:
            return  # failure notices are turned off
        await self._record(env, outcome)

    async def _record(self, env: Envelope, outcome: Event) -> None:
        """Append a send's outcome after the terminal event it is about (same key, same partition)."""
        record = encode(envelope(env.job_id, outcome))

        async def append() -> None:
            assert self._producer is not None
            await self._producer.send_and_wait(self.topic, record, key=env.cache_key.encode())

        # The email is out: its outcome must reach the log, however long the broker is away.
        await retrying.call(
            f"recording the {self.NOUN}'s outcome",
            append,
            backoff=Backoff(first=0.5, cap=10.0),
            retry_on=(KafkaError,),
        )
        metrics.record_published(outcome)

    async def _read_ahead(self, tp: TopicPartition, start: int) -> None:
        """Remember the jobs whose email outcome is already in the log from `start` to the partition's end."""
        self._scanned.add(tp)
        settled = self._settled[tp]

        def note(env: Envelope) -> None:
            if env.type in self.OUTCOMES:
                settled.add(mail_of(env))

        await self._reader.scan(tp, start, note)

    # -- pauses ----------------------------------------------------------------------------------------

    async def _watch_pauses(self) -> None:
        """When this process was frozen past the session timeout, drop the sends it held.

        The group has given its partitions to another mailer meanwhile, which sends those emails.
        """
        while True:
            if self._pauses.beat() > self._pauses.limit:
                log.warning("the %s's pending %ss are left to the group", self.NAME, self.NOUN)
                self._fenced_at = asyncio.get_running_loop().time()
                for sends in self._sends.values():
                    for task in sends.values():
                        task.cancel()
            await asyncio.sleep(TICK)

    def _left_to_others(self) -> bool:
        """True after a freeze, until the group rebalanced (or kept this member for a session's time).

        The records fetched meanwhile belong to the partitions' new owners: handling them here would send
        their emails a second time.
        """
        if self._pauses.frozen() and self._fenced_at is None:
            self._fenced_at = asyncio.get_running_loop().time()
        if self._fenced_at is None:
            return False
        if asyncio.get_running_loop().time() - self._fenced_at > self.settings.session_timeout:
            # The group kept this member: its partitions are its own, and the sends it dropped are its to do.
            self._fenced_at = None
            self._resend_dropped()
        return self._fenced_at is not None

    def _resend_dropped(self) -> None:
        """Read again, from the first one, the terminal events whose sends were cancelled."""
        consumer = self._consumer
        assert consumer is not None
        for tp, sends in self._sends.items():
            dropped = sorted(offset for offset, task in sends.items() if task.cancelled())
            for offset in dropped:
                del sends[offset]
            if dropped:
                with contextlib.suppress(AssertionError, KafkaError):
                    consumer.seek(tp, dropped[0])
                self._next[tp] = min(self._next.get(tp, dropped[0]), dropped[0])

    # -- helpers ---------------------------------------------------------------------------------------

    def _remember(self, job_id: str) -> None:
        self._recent[job_id] = None
        self._recent.move_to_end(job_id)
        while len(self._recent) > REMEMBERED:
            self._recent.popitem(last=False)

    async def _settle(self, tps: list[TopicPartition], grace: float) -> None:
        """Let the sends of `tps` talking to SMTP finish within `grace` seconds; cancel all the others.

        A send waiting for a slot or between two attempts (an SMTP outage) is cancelled at once: the
        partition's next owner sends it, and one still retrying here would send it a second time.
        """
        tasks = [t for tp in tps for t in self._sends.get(tp, {}).values() if not t.done()]
        if not tasks:
            return
        self._smtp.shut.update(tasks)
        talking = [t for t in tasks if t in self._smtp.talking]
        for task in tasks:
            if task not in self._smtp.talking:
                task.cancel()
        if talking:
            log.info("waiting up to %.0fs for %d %s(s) being sent", grace, len(talking), self.NOUN)
            _, unfinished = await asyncio.wait(talking, timeout=grace)
            for task in unfinished:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._smtp.shut.difference_update(tasks)

    async def _commit(self, tps: list[TopicPartition]) -> None:
        """Commit, per partition, up to the first terminal event whose email is not settled."""
        assert self._consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for tp in tps:
            if tp not in self._next:
                continue
            sends = self._sends.get(tp, {})
            offsets[tp] = min(sends) if sends else self._next[tp]
        if offsets:
            await self._consumer.commit(offsets)
