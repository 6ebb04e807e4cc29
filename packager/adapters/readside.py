"""Adapter: what the read side asks Kafka (partitions, workers, reachability) and how it names requesters.

The views themselves are written by `packager.adapters.projector` and read through
`packager.adapters.viewreads`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from packager.adapters.kafka_log import LogIdentity
from packager.core.settings import Settings
from packager.domain.requesters import pseudonym


def identity_for(settings: Settings) -> Callable[[str], str]:
    """How the views name a requester given an address: their pseudonym under PSEUDONYM_SECRET.

    Used for events written before pseudonyms (the address in clear) and to look an address up; the
    views never hold an address, whatever ANONYMIZE_EMAILS says.
    """
    secret = settings.pseudonym_key
    return lambda email: pseudonym(secret, email)


def missing_topics(identity: LogIdentity, topics: Sequence[str]) -> list[str]:
    """Those of `topics` the log does not have (a wrong topic prefix names topics nobody writes)."""
    return [topic for topic in topics if topic not in identity.topic_ids]


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
