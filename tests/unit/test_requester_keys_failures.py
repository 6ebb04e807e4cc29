"""The requester-key store's rewrap and erasure when Kafka fails half-way: none forgotten, none revived."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from packager.adapters.requester_keys import KafkaRequesterKeys
from packager.core.errors import UnavailableError
from packager.core.settings import load_settings
from packager.domain.requesters import DataKey, wrap_key

OLD, NEW = "old-sealing-secret-0123456789abcdef", "new-sealing-secret-0123456789abcdef"


def keys_read_under_the_old_secret(count: int) -> tuple[KafkaRequesterKeys, list[DataKey]]:
    settings = load_settings(
        {},
        secret="unit-test-secret-0123456789abcdef",
        store_directory=str(Path(".")),
        key_sealing_secret=NEW,
        previous_key_sealing_secrets=(OLD,),
    )
    store = KafkaRequesterKeys(settings, rewrap=True)
    keys = [DataKey.new(f"who-{n}") for n in range(count)]
    for key in keys:
        store._apply(f"{key.requester}.{key.key_id}".encode(), orjson.dumps(wrap_key(OLD, key)))
    return store, keys


async def test_a_rewrap_that_fails_half_way_keeps_the_rest_for_the_next_read() -> None:
    store, keys = keys_read_under_the_old_secret(3)
    assert store._to_rewrap == keys
    stored: list[DataKey] = []

    async def store_once_then_fail(key: DataKey) -> None:
        if len(stored) == 1:
            raise TimeoutError("the broker did not acknowledge in time")
        stored.append(key)

    store._store = store_once_then_fail  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await store._rewrap_pending()
    assert stored == keys[:1]
    assert store._to_rewrap == keys[1:], "the keys not yet stored were forgotten"

    async def store_all(key: DataKey) -> None:
        stored.append(key)

    store._store = store_all  # type: ignore[method-assign]
    await store._rewrap_pending()
    assert stored == keys and store._to_rewrap == []


async def test_a_key_destroyed_before_its_rewrap_is_not_stored_again() -> None:
    store, keys = keys_read_under_the_old_secret(2)
    erased = keys[0]
    store._apply(f"{erased.requester}.{erased.key_id}".encode(), None)  # the erasure's tombstone
    stored: list[DataKey] = []

    async def keep(key: DataKey) -> None:
        stored.append(key)

    store._store = keep  # type: ignore[method-assign]
    await store._rewrap_pending()
    assert stored == [keys[1]]
    assert store._to_rewrap == []


class FlakyProducer:
    """Stands in for the key store's producer: acknowledges `good` appends, then fails."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes | None, *, key: bytes) -> None:
        if len(self.sent) >= self.good:
            raise KafkaTimeoutError()
        self.sent.append(key)


async def test_an_erasure_retried_after_a_failure_names_every_destroyed_key() -> None:
    """The first try destroyed one key and failed (503): the retry's RequesterErased names both keys (what
    the store says was destroyed), so the pages of the requester's old jobs say they were erased."""
    store, _ = keys_read_under_the_old_secret(0)

    async def read_nothing() -> None:
        store._read_at = time.monotonic()

    store._read_to_end = read_nothing  # type: ignore[method-assign]
    keys = [DataKey.new("who"), DataKey.new("who")]
    for key in keys:
        store._apply(f"who.{key.key_id}".encode(), orjson.dumps(wrap_key(NEW, key)))
    store._producer = FlakyProducer(good=1)
    with pytest.raises(UnavailableError):
        await store.destroy(["who"])
    assert len(store.destroyed(["who"])) == 1
    store._producer = FlakyProducer(good=10)
    assert len(await store.destroy(["who"])) == 1  # the one left
    assert store.destroyed(["who"]) == sorted(k.key_id for k in keys)
