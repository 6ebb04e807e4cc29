"""Adapter: appending events to the Kafka log, plus the topic layout every component shares.

`KafkaEventLog` is what the ingress uses in production; `InMemoryEventLog` is its fake for unit tests. The
contract suite in `tests/integration/test_event_log_contract.py` runs the same assertions against both.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from packager.adapters.kafka_metadata import TopicIdsRequest
from packager.adapters.kafka_partitioner import kafka_partition
from packager.core import retrying
from packager.core.errors import UnavailableError
from packager.domain.events import Envelope, encode

log = logging.getLogger(__name__)

T = TypeVar("T")

LANES = ("fast", "slow")

# While the broker is known to be down, requests get their 503 at once (instead of each one waiting
# KAFKA_SEND_TIMEOUT) and a background probe asks the broker for its topics this often, this long each time.
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 1.5


@dataclass(frozen=True, slots=True)
class Topics:
    """Names of the service's topics, all under one prefix so several deployments can share a cluster."""

    prefix: str

    @property
    def requests(self) -> str:
        """Accepted requests (`PackageRequested`), keyed by cache key."""
        return f"{self.prefix}.requests"

    @property
    def events(self) -> str:
        """Every lifecycle event after the request, keyed by cache key."""
        return f"{self.prefix}.events"

    @property
    def analytics(self) -> str:
        """Every lifecycle event with pseudonymised requesters, for downstream consumers."""
        return f"{self.prefix}.analytics"

    @property
    def dead_letters(self) -> str:
        """Records that could not be decoded, kept for inspection."""
        return f"{self.prefix}.dead-letters"

    @property
    def requester_keys(self) -> str:
        """Requesters' data keys, wrapped, keyed `<pseudonym>.<key id>`; compacted, erased by tombstones."""
        return f"{self.prefix}.requester-keys"

    def lane(self, lane: str) -> str:
        """The work queue of one lane (`fast` or `slow`)."""
        return f"{self.prefix}.work.{lane}"

    def all(self) -> list[str]:
        """Every topic the service needs, in creation order."""
        return [
            self.requests,
            self.events,
            self.analytics,
            self.dead_letters,
            *(self.lane(x) for x in LANES),
            self.requester_keys,
        ]


# The ingress's deadline for an append, in a record header: a request the broker stores after it is one the
# ingress already answered 503 for (see RequestAbandoned). The requests topic keeps the broker's append time.
ANSWER_DEADLINE_HEADER = "answer-deadline"
LOG_APPEND_TIME = 1  # Kafka's timestamp type for broker-assigned timestamps


def iso_ms(epoch_ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC timestamp, like the events' `occurred_at`."""
    return (
        datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def topic_configs(topics: Topics, name: str) -> dict[str, str]:
    """Per-topic settings at creation. The requests and events topics are the system of record (the read
    models and replay are rebuilt from them), so they are kept forever; the others use the broker's default
    retention. The requests topic keeps the broker's append time (see RequestAbandoned)."""
    if name == topics.requests:
        return {"retention.ms": "-1", "message.timestamp.type": "LogAppendTime"}
    if name == topics.events:
        return {"retention.ms": "-1"}
    if name == topics.requester_keys:
        return dict(REQUESTER_KEYS_CONFIG)
    return {}


HOUR_MS = 60 * 60 * 1000
# The requester-keys topic keeps the latest record per key for ever (compaction, no time retention); erasure
# writes a tombstone. How long a destroyed key's bytes stay on the brokers' disks (docs/privacy.md): the
# active segment is never compacted, so it rolls every hour (`segment.ms`); `max.compaction.lag.ms` makes
# the cleaner compact a closed segment holding a tombstoned key within the hour, whatever the dirty ratio;
# the tombstone itself (no key material) is kept a day (`delete.retention.ms`) so that every reader sees it.
REQUESTER_KEYS_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "segment.ms": str(HOUR_MS),
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": str(HOUR_MS),
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": str(24 * HOUR_MS),
}


TOPICS_READY_WITHIN = 60.0  # seconds for created topics to be listed by the broker


async def ensure_topics(
    bootstrap_servers: str,
    topics: Topics,
    partitions: int,
    *,
    compacted: Sequence[str] = (),
    replication_factor: int = 1,
) -> None:
    """Create the service's topics (and `compacted` ones, e.g. table changelogs) if they do not exist.

    Returns only once the broker lists every one of them: a worker that subscribed to a changelog the
    broker does not know yet would see it with 0 partitions, and Faust's co-partitioning check would crash
    its planner until the worker restarts. A creation the controller did not finish in time (its answer
    carries the error per topic, it raises nothing) is asked again. Existing topics are left as they are:
    changing a topic's replication is a reassignment, an operator's job, not a starting process's.
    """
    configs = {name: topic_configs(topics, name) for name in topics.all()}
    configs.update({name: {"cleanup.policy": "compact"} for name in compacted})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()

    async def create_missing() -> None:
        missing = [name for name in configs if name not in set(await admin.list_topics())]
        if not missing:
            return
        answer = await admin.create_topics(
            [
                NewTopic(
                    name=name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs=configs[name],
                )
                for name in missing
            ]
        )
        # Another process may win the race to create them (TOPIC_ALREADY_EXISTS, 36): there either way.
        failed = {error[0]: error[1] for error in answer.topic_errors if error[1] not in (0, 36)}
        listed = set(await admin.list_topics())
        if failed or not listed.issuperset(missing):
            still = sorted(set(missing) - listed)
            raise retrying.Retryable(f"topics not created yet: {still} (error codes {failed})")

    try:
        await retrying.call(
            "creating the topics",
            create_missing,
            backoff=retrying.Backoff(first=0.5, cap=5.0),
            retry_on=(retrying.Retryable, KafkaError),
            deadline=time.monotonic() + TOPICS_READY_WITHIN,
        )
    finally:
        await admin.close()


async def broker_answers(bootstrap_servers: str, within: float) -> bool:
    """Whether the broker answers a metadata request (its topic list) within `within` seconds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(within * 1000))
    try:
        async with asyncio.timeout(within):
            await admin.start()
            await admin.list_topics()
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return True


# --- the log's identity ------------------------------------------------------------------------------
# A view built from one log must not be carried over to another (a wiped dev broker, recreated topics): the
# same names and offsets would then mean other records. Kafka names a log by its cluster id and each topic's
# id (a UUID given at creation, KIP-516). aiokafka 0.14 speaks Metadata only up to v5, which has the cluster
# id but no topic ids, so `kafka_metadata` spells v12 (Kafka 2.8 and later, Kafka 4 included) with aiokafka's
# own protocol types, and it is sent through aiokafka's client (which negotiates the version).


@dataclass(frozen=True, slots=True)
class LogIdentity:
    """Which log records came from: the cluster's id and each topic's id ("" where the broker has none)."""

    cluster_id: str
    topic_ids: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored with a view's positions."""
        return {"cluster_id": self.cluster_id, "topic_ids": dict(self.topic_ids)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogIdentity:
        """Inverse of `to_dict`."""
        return cls(str(data.get("cluster_id") or ""), {str(k): str(v) for k, v in data["topic_ids"].items()})


async def log_identity(bootstrap_servers: str, topics: Sequence[str], *, within: float = 10.0) -> LogIdentity:
    """The cluster id and the ids of `topics` (topics that do not exist are left out).

    A broker older than Kafka 2.8 has no topic ids: the identity is then the cluster id alone (and a
    recreated topic on the same cluster goes unnoticed), with a warning.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(within * 1000))
    try:
        async with asyncio.timeout(within):
            await client.bootstrap()
            node = client.get_random_node()
            try:
                answer = await client.send(node, TopicIdsRequest(list(topics)))
            except (IncompatibleBrokerVersion, NotImplementedError):
                log.warning(
                    "the broker at %s has no topic ids (Kafka < 2.8): the cluster id alone names the log",
                    bootstrap_servers,
                )
                old = await client.send(node, MetadataRequest(list(topics), False))
                # (error_code, name, is_internal, partitions) in every version aiokafka knows
                named = {topic[1]: "" for topic in old.topics if topic[0] == 0}
                return LogIdentity(getattr(old, "cluster_id", None) or "", named)
    finally:
        await client.close()
    ids = {name: topic_id for error, name, topic_id, *_ in answer.topics if error == 0 and name in topics}
    return LogIdentity(answer.cluster_id or "", ids)


class LogReplaced(Exception):
    """The log a view was built from is not the one the broker holds now (see `identity_mismatch`)."""


def identity_mismatch(saved: LogIdentity | None, current: LogIdentity) -> str | None:
    """Why a view built from `saved` does not belong to `current`, or None when it does (or is unknown)."""
    if saved is None:
        return None
    if saved.cluster_id and current.cluster_id and saved.cluster_id != current.cluster_id:
        return f"the cluster id changed ({saved.cluster_id} -> {current.cluster_id})"
    for name, old in sorted(saved.topic_ids.items()):
        new = current.topic_ids.get(name)
        if new is None:
            return f"topic {name} no longer exists"
        if old and new and old != new:
            return f"topic {name} was recreated (id {old} -> {new})"
    return None


@dataclass(frozen=True, slots=True)
class Appended:
    """Where a record went: its partition and offset (what the views' positions are compared with)."""

    partition: int
    offset: int


class EventLog(Protocol):
    """Where accepted requests and events are appended."""

    async def append(
        self, topic: str, key: str, event: Envelope, *, partition: int | None = None
    ) -> Appended | None:
        """Append one event (to `partition`, else by key); return once it is durably stored, with where it
        went when the log knows (None: a log without partitions and offsets)."""

    async def close(self) -> None:
        """Release connections."""


@dataclass
class InMemoryEventLog:
    """A fake log for unit tests: appended records are kept in order per topic."""

    records: dict[str, list[tuple[str, Envelope]]] = field(default_factory=dict)
    available: bool = True

    async def append(
        self, topic: str, key: str, event: Envelope, *, partition: int | None = None
    ) -> Appended | None:
        """Store the event, or fail as an unreachable broker would (no offsets: None)."""
        if not self.available:
            raise UnavailableError("The event log is unavailable; the request was not accepted.")
        encode(event)  # the same serialisation errors as the real log
        self.records.setdefault(topic, []).append((key, event))
        return None

    async def close(self) -> None:
        """Nothing to release."""


async def outside_any_job(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` in a task with a fresh context, so tasks it starts inherit no job id.

    A client started inside a request would otherwise carry that request's job id (a context variable,
    `packager.core.logs.JOB_ID`) into its background tasks for good: every line they write later, a connection
    error hours after, would name that job.
    """
    return await asyncio.create_task(coro, context=contextvars.Context())


class KafkaEventLog:
    """Appends events with an idempotent, acks=all producer, connecting lazily and reconnecting on demand.

    The ingress must keep answering (503) while the broker is down and recover without a restart, so the
    producer is created on first use and recreated after a failed start. The first request starts it, but
    outside that request's context (`outside_any_job`).

    One failed append (or start) marks the broker as down: from then on appends fail at once, without
    waiting `send_timeout`, while a background probe asks the broker every `PROBE_INTERVAL` seconds; the
    first answer marks it up again and the next request is appended as usual.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics,
        *,
        partitions: int,
        send_timeout: float,
        replication_factor: int = 1,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topics = topics
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._send_timeout = send_timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        # When the broker was found down (monotonic seconds), None while it is believed up.
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """False while the broker is known to be down (appends then fail at once)."""
        return self._down_since is None

    def mark_unreachable(self, exc: BaseException) -> None:
        """Another client of the same broker (the requester keys) found it down: fail appends fast too."""
        self._mark_down(exc)

    def _mark_down(self, exc: BaseException) -> None:
        """Fail appends fast from now on, and probe the broker in the background until it answers."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        log.warning(
            "Kafka at %s is unreachable (%r): answering 503 at once until it answers again",
            self._bootstrap,
            exc,
        )
        # A task of its own context: it outlives the request that found the broker down.
        self._probe = asyncio.get_running_loop().create_task(
            self._probe_until_back(), name="kafka-probe", context=contextvars.Context()
        )

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                answers = await broker_answers(self._bootstrap, PROBE_TIMEOUT)
            except (
                Exception
            ):  # an unexpected client error must not end the probe: requests would 503 for good
                log.exception("probing Kafka at %s failed", self._bootstrap)
                answers = False
            if answers:
                down_for = time.monotonic() - (self._down_since or time.monotonic())
                log.info(
                    "Kafka at %s answers again after %.1fs: accepting requests", self._bootstrap, down_for
                )
                self._down_since = None
                return

    def _unavailable(self) -> UnavailableError:
        return UnavailableError(
            "The event log (Kafka) is unreachable; the request was not accepted. Try again later."
        )

    async def _ready_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:  # the common case, without taking the lock on every request
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            try:
                async with asyncio.timeout(self._send_timeout):
                    self._producer = await outside_any_job(self._started_producer())
            except (KafkaError, OSError, TimeoutError) as exc:
                self._mark_down(exc)
                raise self._unavailable() from None
            return self._producer

    async def _started_producer(self) -> AIOKafkaProducer:
        """Create the topics if needed and start a producer (stopped again if starting fails)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=True,
            # No linger: aiokafka keeps one produce request in flight per broker, and while it awaits the
            # acks the next requests batch up anyway (measured: 5-13% more requests/s than 2 ms under load,
            # less latency when idle; with 64 appends in flight a produce request carries 62-63 of them with
            # linger 0 or 2 ms alike, so a linger saves no CPU either).
            linger_ms=0,
            # The default partitioner's murmur2, four bytes at a time: the same partitions, less CPU.
            partitioner=kafka_partition,
            request_timeout_ms=int(self._send_timeout * 1000),
            retry_backoff_ms=200,
        )
        try:
            await ensure_topics(
                self._bootstrap, self._topics, self._partitions, replication_factor=self._replication_factor
            )
            await producer.start()
        except BaseException:  # a timeout cancels this task: the producer is stopped all the same
            await producer.stop()
            raise
        return producer

    async def append(
        self, topic: str, key: str, event: Envelope, *, partition: int | None = None
    ) -> Appended | None:
        """Append and wait for the broker's acknowledgement from all in-sync replicas; where it went."""
        if self._down_since is not None:
            raise self._unavailable()
        producer = await self._ready_producer()
        deadline_ms = int((time.time() + self._send_timeout) * 1000)
        try:
            async with asyncio.timeout(self._send_timeout):
                stored = await producer.send_and_wait(
                    topic,
                    value=encode(event),
                    key=key.encode(),
                    partition=partition,
                    headers=[(ANSWER_DEADLINE_HEADER, str(deadline_ms).encode())],
                )
        except (KafkaError, TimeoutError) as exc:
            log.warning("Append to %s failed: %r", topic, exc)
            self._mark_down(exc)
            raise UnavailableError(
                "The event log (Kafka) did not acknowledge the request in time; it was not accepted. "
                "Try again later."
            ) from None
        return Appended(stored.partition, stored.offset)

    async def close(self) -> None:
        """Stop probing, flush and stop the producer."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        async with self._lock:
            if self._producer is not None:
                try:
                    # Bounded: with the broker down, flushing what it never acknowledged would wait forever
                    # and the ingress would never stop. Those requests were answered 503 already.
                    async with asyncio.timeout(self._send_timeout):
                        await self._producer.stop()
                except TimeoutError:
                    log.warning(
                        "Kafka did not take the last records within %.0fs; stopped without them",
                        self._send_timeout,
                    )
                self._producer = None
