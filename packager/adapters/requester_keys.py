"""Adapter: where requesters' data keys live, the compacted `<prefix>.requester-keys` topic.

Why a compacted topic (docs/privacy.md): every component that seals or opens addresses (the ingress, the
mailer) already reads Kafka, and no other store of the service survives `replay rebuild` and serves several
ingress processes and workers alike. A key is one record, keyed `<pseudonym>.<key id>`, its value the data
key wrapped under the key-encryption key (`packager.domain.requesters.wrap_key`). Erasure appends a tombstone
(a null value) for each of the requester's keys: readers forget the key at once, and the broker's cleaner
removes the record from its segments within the topic's `max.compaction.lag.ms` (kafka_log
`REQUESTER_KEYS_CONFIG`).

Each process keeps the keys in memory, read from the topic's beginning, and reads the topic to its end before
it trusts what it knows: always before opening an address or destroying keys, and before reusing a known key
if it last looked more than `FRESH_FOR` seconds ago (an erasure through another ingress is seen that fast).
`InMemoryRequesterKeys` is the fake for unit tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from packager.adapters.kafka_log import Topics, ensure_topics, outside_any_job
from packager.adapters.kafka_partitioner import kafka_partition
from packager.adapters.readside import topic_partitions
from packager.core.errors import UnavailableError
from packager.core.settings import Settings
from packager.domain.requesters import DataKey, SealError, kek_id, key_id_of, open_email, unwrap_key, wrap_key

log = logging.getLogger(__name__)

FRESH_FOR = 2.0  # seconds a key known from the topic is reused without reading the topic again


class RequesterKeys(Protocol):
    """What the ingress and the mailer need of the key store."""

    async def key_for(self, requester: str) -> DataKey:
        """The requester's current data key, created (and stored) if they have none."""

    async def open(self, requester: str, token: str, *, fresh_within: float = 0.0) -> str | None:
        """The address sealed in `token`, or None when its key was destroyed (the requester was erased).

        The store reads its topic first unless it did within `fresh_within` seconds. SealError: the key is
        stored but wrapped under a sealing secret no longer configured.
        """

    async def destroy(self, requesters: Sequence[str]) -> list[str]:
        """Destroy every data key of these pseudonyms; return the ids of those this call destroyed.
        UnavailableError when the store cannot be reached in time (some may be destroyed already)."""

    def destroyed(self, requesters: Sequence[str]) -> list[str]:
        """The ids of every key of these pseudonyms destroyed so far, by any erasure this store knows of (an
        erasure retried after a failure names those the failed try destroyed too)."""

    async def close(self) -> None:
        """Release connections."""


class InMemoryRequesterKeys:
    """The key store of unit tests: keys in a dict, destroyed by deleting them."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, DataKey]] = {}
        self.gone: dict[str, list[str]] = {}

    async def key_for(self, requester: str) -> DataKey:
        """The requester's key, created when they have none."""
        known = self.keys.setdefault(requester, {})
        if not known:
            key = DataKey.new(requester)
            known[key.key_id] = key
        return next(reversed(known.values()))

    async def open(self, requester: str, token: str, *, fresh_within: float = 0.0) -> str | None:
        """The address, or None when its key is gone."""
        key = self.keys.get(requester, {}).get(key_id_of(token))
        if key is None:
            return None
        try:
            return open_email(key, token)
        except SealError:
            return None

    async def destroy(self, requesters: Sequence[str]) -> list[str]:
        """Forget the requesters' keys."""
        now = [key_id for r in requesters for key_id in self.keys.pop(r, {})]
        for r in requesters:
            self.gone.setdefault(r, []).extend(k for k in now if k not in self.gone.get(r, []))
        return now

    def destroyed(self, requesters: Sequence[str]) -> list[str]:
        """Every key id of theirs forgotten so far."""
        return [key_id for r in requesters for key_id in self.gone.get(r, [])]

    async def close(self) -> None:
        """Nothing to release."""


class KafkaRequesterKeys:
    """Data keys in the compacted requester-keys topic (see the module's docstring).

    `rewrap`: re-store, under the current sealing secret, keys found wrapped under a previous one (the
    ingress does; once every key is rewrapped and compacted, the previous secret can be dropped).
    """

    def __init__(self, settings: Settings, *, rewrap: bool = False) -> None:
        self._settings = settings
        self._topic = Topics(settings.topic_prefix).requester_keys
        self._rewrap = rewrap
        # Reading the topic to its end, or storing a key, gives up as an append does (KAFKA_SEND_TIMEOUT).
        self._timeout = settings.kafka_send_timeout
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[TopicPartition] = []
        self._keys: dict[str, dict[str, DataKey]] = {}
        # Every key id stored per requester, readable or not: erasure tombstones them all.
        self._stored: dict[str, set[str]] = {}
        self._destroyed: dict[str, set[str]] = {}  # key ids tombstoned, as long as the topic holds them
        self._to_rewrap: list[DataKey] = []
        self._creating: dict[str, asyncio.Future[DataKey]] = {}
        self._read_at = -FRESH_FOR

    async def _start(self) -> None:
        bootstrap = self._settings.kafka_bootstrap_servers
        self._partitions = await topic_partitions(bootstrap, [self._topic])
        if not self._partitions:  # a first start: the ingress may seal an address before its first append
            settings = self._settings
            await ensure_topics(
                bootstrap,
                Topics(settings.topic_prefix),
                settings.partitions,
                replication_factor=settings.replication_factor,
            )
            self._partitions = await topic_partitions(bootstrap, [self._topic])
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, partitioner=kafka_partition
        )
        # A short fetch wait: every email reads the topic to its end first, under the store's lock. With
        # Kafka's default (500 ms) a fetch sent just before a new key landed holds each of those reads for
        # half a second, and a worker's mailer sent two emails a second (benchmarks.scaleout).
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        try:
            await producer.start()
            await consumer.start()
        except BaseException:
            await producer.stop()
            await consumer.stop()
            raise
        consumer.assign(self._partitions)
        await consumer.seek_to_beginning(*self._partitions)
        # Paused between reads: a consumer fetches its assigned partitions all the time otherwise, and with
        # the short fetch wait that is 50 empty fetches a second, 5% of a busy ingress's CPU (profiled).
        consumer.pause(*self._partitions)
        self._producer, self._consumer = producer, consumer

    async def _read_to_end(self) -> None:
        """Read every record appended so far (the lock is held)."""
        if self._consumer is None:
            await outside_any_job(self._start())
        consumer = self._consumer
        assert consumer is not None
        ends = await consumer.end_offsets(self._partitions)
        if any([await consumer.position(tp) < end for tp, end in ends.items()]):
            consumer.resume(*self._partitions)
            try:
                while any([await consumer.position(tp) < end for tp, end in ends.items()]):
                    batches = await consumer.getmany(*self._partitions, timeout_ms=200)
                    for records in batches.values():
                        for record in records:
                            self._apply(record.key, record.value)
            finally:
                consumer.pause(*self._partitions)
        self._read_at = time.monotonic()
        if self._to_rewrap:
            await self._rewrap_pending()

    async def _rewrap_pending(self) -> None:
        """Store the keys found under a previous sealing secret again, under the current one. A key leaves
        the list only once stored: a failure half-way leaves the rest for the next read, not forgotten."""
        done = 0
        try:
            while self._to_rewrap:
                key = self._to_rewrap[0]
                if key.key_id in self._keys.get(key.requester, {}):  # not destroyed since it was read
                    await self._store(key)
                    done += 1
                self._to_rewrap.pop(0)
        finally:
            if done:
                log.info("rewrapped %d requester key(s) under the current sealing secret", done)

    def _apply(self, raw_key: bytes | None, value: bytes | None) -> None:
        requester, _, key_id = (raw_key or b"").decode("utf-8", "replace").partition(".")
        if not requester or not key_id:
            return
        if value is None:  # a tombstone: the key was destroyed (and must not be stored again by a rewrap)
            self._keys.get(requester, {}).pop(key_id, None)
            self._stored.get(requester, set()).discard(key_id)
            self._destroyed.setdefault(requester, set()).add(key_id)
            return
        self._stored.setdefault(requester, set()).add(key_id)
        try:
            stored = orjson.loads(value)
            key = unwrap_key(self._settings.sealing_keys, stored)
        except (orjson.JSONDecodeError, SealError, TypeError, AttributeError) as exc:
            log.warning("requester key %s cannot be read: %s", key_id, exc)
            return
        self._keys.setdefault(requester, {})[key_id] = key
        if self._rewrap and stored.get("kek") != kek_id(self._settings.sealing_keys[0]):
            self._to_rewrap.append(key)

    async def _store(self, key: DataKey) -> None:
        assert self._producer is not None
        value = orjson.dumps(wrap_key(self._settings.sealing_keys[0], key))
        await self._producer.send_and_wait(self._topic, value, key=f"{key.requester}.{key.key_id}".encode())

    async def _fresh(self, within: float) -> None:
        if time.monotonic() - self._read_at > within:
            await self._read_to_end()

    async def _guarded(self, within: float) -> None:
        if time.monotonic() - self._read_at <= within:
            return  # read recently: no timeout to arm (most calls of a busy ingress)
        try:
            async with asyncio.timeout(self._timeout):
                await self._fresh(within)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise UnavailableError(f"The requester keys cannot be read from Kafka ({exc!r}).") from None

    async def key_for(self, requester: str) -> DataKey:
        """The requester's key (the newest known), created and stored when they have none.

        A new key is stored outside the lock, so new requesters do not wait on each other's appends;
        concurrent requests of one new requester share the one key being stored.
        """
        # The common case of a busy ingress, without the lock's await: a known requester, the topic read
        # within FRESH_FOR, and no reading of it under way (the lock is free). Nothing can run between these
        # checks and the return, so the answer is what the locked path would give.
        known = self._keys.get(requester)
        if known and not self._lock.locked() and time.monotonic() - self._read_at <= FRESH_FOR:
            return next(reversed(known.values()))
        async with self._lock:
            await self._guarded(FRESH_FOR)
            known = self._keys.get(requester)
            if known:
                return next(reversed(known.values()))
            creating = self._creating.get(requester)
            if creating is None:
                creating = asyncio.ensure_future(self._create(DataKey.new(requester)))
                self._creating[requester] = creating
        return await asyncio.shield(creating)

    async def _create(self, key: DataKey) -> DataKey:
        try:
            async with asyncio.timeout(self._timeout):
                await self._store(key)
        except (KafkaError, TimeoutError) as exc:
            raise UnavailableError(f"A requester key could not be stored ({exc!r}).") from None
        finally:
            self._creating.pop(key.requester, None)
        self._keys.setdefault(key.requester, {})[key.key_id] = key
        self._stored.setdefault(key.requester, set()).add(key.key_id)
        return key

    async def open(self, requester: str, token: str, *, fresh_within: float = 0.0) -> str | None:
        """The address, or None when its key was destroyed. Reads the topic to its end first (unless it
        did within `fresh_within` seconds)."""
        key_id = key_id_of(token)
        async with self._lock:
            await self._guarded(fresh_within)
            key = self._keys.get(requester, {}).get(key_id)
            unreadable = key is None and key_id in self._stored.get(requester, set())
        if unreadable:
            raise SealError(f"the data key {key_id} is wrapped under a sealing secret no longer configured")
        if key is None:
            return None
        try:
            return open_email(key, token)
        except SealError:
            return None

    async def destroy(self, requesters: Sequence[str]) -> list[str]:
        """Tombstone every stored key of these pseudonyms (acknowledged by all in-sync replicas)."""
        async with self._lock:
            await self._guarded(0.0)
            # A key being stored for one of them right now is destroyed too, once it is stored.
            creating = [self._creating[r] for r in requesters if r in self._creating]
            await asyncio.gather(*creating, return_exceptions=True)
            assert self._producer is not None
            now: list[str] = []
            try:
                async with asyncio.timeout(self._timeout):
                    for requester in requesters:
                        for key_id in sorted(self._stored.get(requester, set())):
                            name = f"{requester}.{key_id}".encode()
                            await self._producer.send_and_wait(self._topic, None, key=name)
                            self._apply(name, None)
                            now.append(key_id)
            except (KafkaError, TimeoutError) as exc:
                raise UnavailableError(f"The requester keys could not be destroyed ({exc!r}).") from None
            return now

    def destroyed(self, requesters: Sequence[str]) -> list[str]:
        """Every key id of these pseudonyms tombstoned in the topic (as far as read) or by this store."""
        return [key_id for r in requesters for key_id in sorted(self._destroyed.get(r, set()))]

    async def close(self) -> None:
        """Stop the consumer and the producer."""
        for client in (self._consumer, self._producer):
            if client is None:
                continue
            try:
                await client.stop()
            except KafkaError:
                pass
            except asyncio.CancelledError:
                # With the broker away, aiokafka's fetcher awaits its own cancelled fetch task on stop, and
                # that task's cancellation comes out here. Only a cancellation of this close goes on.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        self._consumer = self._producer = None
