"""The requester-keys topic on a real broker: keys across processes, sealing-secret rotation, erasure, and the
broker's cleaner removing a destroyed key's bytes from its segment files."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from packager.adapters.kafka_log import REQUESTER_KEYS_CONFIG, Topics, ensure_topics
from packager.adapters.requester_keys import KafkaRequesterKeys
from packager.core.settings import Settings, load_settings
from packager.domain.requesters import SealError, kek_id, pseudonym, seal_email
from tests.integration.support import read_topic
from tests.privacy_search import contains

pytestmark = [pytest.mark.kafka, pytest.mark.privacy]

SECRET = "integration-test-secret-0123456789"
OLD, NEW = "old-sealing-secret-0123456789", "new-sealing-secret-0123456789"


def settings_for(bootstrap: str, prefix: str, **overrides: object) -> Settings:
    where = {"kafka_bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": 2}
    return load_settings({}, secret=SECRET, **where, **overrides)


async def open_with(settings: Settings, who: str, token: str) -> str | None:
    """What a fresh process (an ingress or a mailer just started) reads of a sealed address."""
    keys = KafkaRequesterKeys(settings)
    try:
        return await keys.open(who, token)
    finally:
        await keys.close()


async def test_a_sealing_secret_rotation_rewraps_keys_and_erasure_destroys_them_for_every_reader(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    email = f"rotate-{uuid.uuid4().hex[:8]}@example.org"
    who = pseudonym(SECRET, email)
    old = settings_for(kafka_bootstrap, topic_prefix, key_sealing_secret=OLD)
    writer = KafkaRequesterKeys(old)
    try:
        key = await writer.key_for(who)
        assert (await writer.key_for(who)).key_id == key.key_id  # one key per requester
    finally:
        await writer.close()
    token = seal_email(key, email)
    topic = Topics(topic_prefix).requester_keys
    [(_, stored)] = await read_topic(kafka_bootstrap, topic)
    assert orjson.loads(stored)["kek"] == kek_id(OLD) and key.secret not in stored

    # The new secret alone cannot read a key wrapped under the old one: its emails could not be sent.
    with pytest.raises(SealError, match="no longer configured"):
        await open_with(replace(old, key_sealing_secret=NEW), who, token)
    # With the old secret listed as previous, the ingress reads it and re-stores it under the new one.
    rotated = replace(old, key_sealing_secret=NEW, previous_key_sealing_secrets=(OLD,))
    ingress = KafkaRequesterKeys(rotated, rewrap=True)
    try:
        assert (await ingress.key_for(who)).key_id == key.key_id
    finally:
        await ingress.close()
    assert [orjson.loads(v)["kek"] for _, v in await read_topic(kafka_bootstrap, topic)] == [
        kek_id(OLD),
        kek_id(NEW),
    ]
    # ... after which the old secret can be dropped.
    new_only = replace(old, key_sealing_secret=NEW)
    assert await open_with(new_only, who, token) == email

    # Erasure: tombstones, seen by every reader, and the next request of the address gets a new key.
    eraser = KafkaRequesterKeys(new_only)
    try:
        assert await eraser.destroy([who]) == [key.key_id]
        assert await eraser.destroy([who]) == []
    finally:
        await eraser.close()
    assert await open_with(new_only, who, token) is None
    assert await open_with(rotated, who, token) is None
    later = KafkaRequesterKeys(new_only)
    try:
        assert (await later.key_for(who)).key_id != key.key_id
    finally:
        await later.close()


async def test_the_topic_is_created_compacted_with_the_documented_settings(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    await ensure_topics(kafka_bootstrap, Topics(topic_prefix), 2)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [answer] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, Topics(topic_prefix).requester_keys)]
        )
    finally:
        await admin.close()
    entries = {entry[0]: entry[1] for resource in answer.resources for entry in resource[4]}
    assert {name: entries[name] for name in REQUESTER_KEYS_CONFIG} == REQUESTER_KEYS_CONFIG


async def test_the_cleaner_removes_a_destroyed_keys_bytes_from_the_segment_files(
    kafka_bootstrap: str, kafka_data_dir: Path | None, topic_prefix: str
) -> None:
    """The documented bound, scaled down: segments roll after 1 s and must be compacted within 1 s."""
    if kafka_data_dir is None:  # a broker in a container or elsewhere: its files cannot be read from here
        pytest.skip("the broker's data directory is unknown (set KAFKA_DATA_DIR to where its segments are)")
    topic = Topics(topic_prefix).requester_keys
    fast = {**REQUESTER_KEYS_CONFIG, "segment.ms": "1000", "max.compaction.lag.ms": "1000"}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=fast)])
    finally:
        await admin.close()
    settings = settings_for(kafka_bootstrap, topic_prefix)
    keys = KafkaRequesterKeys(settings)
    who = pseudonym(SECRET, f"shred-{uuid.uuid4().hex[:8]}@example.org")
    try:
        await keys.key_for(who)
        [(_, stored)] = await read_topic(kafka_bootstrap, topic)
        wrapped = orjson.loads(stored)["wrapped"].encode()
        partition = [kafka_data_dir / f"{topic}-0"]
        assert contains(partition, wrapped)
        await keys.destroy([who])
    finally:
        await keys.close()
    # A segment is closed by the first append after segment.ms: a writer appends now and then, as the
    # ingress does whenever a new requester comes.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        deadline = time.monotonic() + 90
        while contains(partition, wrapped):
            if time.monotonic() > deadline:
                pytest.fail("the destroyed key is still in the segment files after 90 s")
            await producer.send_and_wait(topic, b"{}", key=b"filler.0")
            await asyncio.sleep(1.0)
    finally:
        await producer.stop()


async def test_concurrent_requests_of_new_requesters_store_one_key_each(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    keys = KafkaRequesterKeys(settings_for(kafka_bootstrap, topic_prefix))
    try:
        same = await asyncio.gather(*(keys.key_for("who-1") for _ in range(20)))
        others = await asyncio.gather(*(keys.key_for(f"who-{i}") for i in range(2, 22)))
    finally:
        await keys.close()
    assert len({k.key_id for k in same}) == 1
    assert len({k.key_id for k in others}) == 20
    stored = [k for k, v in await read_topic(kafka_bootstrap, Topics(topic_prefix).requester_keys) if v]
    assert len(stored) == 21
