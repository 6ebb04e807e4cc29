"""Adapter: Kafka's Metadata request v12, which names topics by their ids (KIP-516), for aiokafka's client.

aiokafka 0.14 knows Metadata up to v5 (cluster id, no topic ids). `TopicIdsRequest` is v12 spelled with
aiokafka's own protocol types (the flexible, tagged-field encoding), sent with `AIOKafkaClient.send`, which
negotiates the version: a broker without v12 (Kafka < 2.8) makes it raise IncompatibleBrokerVersion or
NotImplementedError. `kafka_log.log_identity` is its user.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from typing import Any

from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)


class _Uuid(AbstractType[str]):
    """Kafka's UUID: 16 bytes on the wire, kept as 32 hexadecimal digits."""

    @classmethod
    def encode(cls, value: str) -> bytes:
        return bytes.fromhex(value)

    @classmethod
    def decode(cls, data: BytesIO) -> str:
        return data.read(16).hex()


def _tagged(*fields: tuple[str, Any]) -> Any:
    return CompactArray(*fields, ("tags", TaggedFields))


class _MetadataResponse_v12(Response):
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", _tagged(("node_id", Int32), ("host", CompactString("utf-8")), ("port", Int32),
                            ("rack", CompactString("utf-8")))),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("topics", _tagged(
            ("error_code", Int16),
            ("name", CompactString("utf-8")),
            ("topic_id", _Uuid),
            ("is_internal", Boolean),
            ("partitions", _tagged(
                ("error_code", Int16),
                ("partition_index", Int32),
                ("leader_id", Int32),
                ("leader_epoch", Int32),
                ("replica_nodes", CompactArray(Int32)),
                ("isr_nodes", CompactArray(Int32)),
                ("offline_replicas", CompactArray(Int32)),
            )),
            ("topic_authorized_operations", Int32),
        )),
        ("tags", TaggedFields),
    )  # fmt: skip


class _MetadataRequest_v12(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 12
    RESPONSE_TYPE = _MetadataResponse_v12
    SCHEMA = Schema(
        ("topics", _tagged(("topic_id", _Uuid), ("name", CompactString("utf-8")))),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicIdsRequest(Request[_MetadataRequest_v12]):
    """Metadata v12 about some topics, never creating them."""

    API_KEY = 3

    def __init__(self, topics: Sequence[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequest_v12]) -> _MetadataRequest_v12:
        return request_struct_class([("0" * 32, name, {}) for name in self._topics], False, False, {})
