"""Adapter: choosing a record's partition from its key, as Kafka's default partitioner does, but cheaply.

Every component must put a key on the partition Kafka's own clients would (murmur2 of the key bytes, the
sign bit cleared, modulo the partition count): the agents are keyed by cache key, so the requests topic and
the events topic must agree with each other and with the Faust workers. aiokafka's `murmur2` computes that
one byte at a time in Python: 30-70 us for a 64-character cache key on the development machine, 2-4% of
the ingress's profile under load (docs/benchmarks.md, issue 15). `murmur2` here reads the key four bytes at a
time with `struct` and gives the same values (a unit test compares the two over keys of every length).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of `data` as Kafka's Java client computes it (`Utils.murmur2`), as an unsigned int."""
    length = len(data)
    h = _SEED ^ length
    whole = length & ~3
    for k in struct.unpack_from(f"<{length >> 2}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        if tail >= 3:
            h ^= data[whole + 2] << 16
        if tail >= 2:
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def kafka_partition(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """The partition for `key`: aiokafka's `DefaultPartitioner` (a keyless record goes to a random one)."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
