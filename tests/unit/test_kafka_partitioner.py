"""Records land where Kafka's default partitioner puts them: the faster murmur2 moves no key."""

from __future__ import annotations

import hashlib
import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from packager.adapters.kafka_partitioner import kafka_partition, murmur2


def test_murmur2_agrees_with_aiokafka_for_keys_of_every_length() -> None:
    rng = random.Random(15)
    for length in range(0, 130):
        for _ in range(8):
            key = rng.randbytes(length)
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_cache_keys_go_to_the_default_partitioners_partition() -> None:
    partitions = list(range(6))
    default = DefaultPartitioner()
    for n in range(2000):
        key = hashlib.sha256(str(n).encode()).hexdigest().encode()  # cache keys are hex SHA-256
        assert kafka_partition(key, partitions, partitions) == default(key, partitions, partitions)


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    assert kafka_partition(None, [0, 1, 2], [2]) == 2
    assert kafka_partition(None, [0, 1, 2], []) in {0, 1, 2}
