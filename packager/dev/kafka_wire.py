"""Enough of Kafka's wire protocol to probe a node without a client library or an event loop.

`answers` sends an ApiVersions request (a node that accepts TCP may not serve yet); `read_metadata` sends a
Metadata v4 request (the oldest Kafka 4 still serves) and reads the registered node ids and each partition's
leader from the answer.
"""

from __future__ import annotations

import socket


def answers(port: int, timeout: float) -> bool:
    """True once the broker answers an ApiVersions request on `port` (not merely accepts TCP)."""
    # ApiVersions v0: size, api_key=18, api_version=0, correlation_id=1, client_id="probe".
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    body += (5).to_bytes(2, "big") + b"probe"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(len(body).to_bytes(4, "big") + body)
            header = s.recv(4)
            return len(header) == 4 and int.from_bytes(header, "big") > 0
    except OSError:
        return False


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _metadata_call(port: int, topics: list[str] | None) -> bytes:
    body = (3).to_bytes(2, "big") + (4).to_bytes(2, "big") + (7).to_bytes(4, "big") + _string("probe")
    if topics is None:
        body += (-1).to_bytes(4, "big", signed=True)
    else:
        body += len(topics).to_bytes(4, "big") + b"".join(_string(t) for t in topics)
    body += b"\x00"  # allow_auto_topic_creation = false: asking about a topic never creates it
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
        s.settimeout(5.0)
        s.sendall(len(body).to_bytes(4, "big") + body)
        size = int.from_bytes(_recv_exactly(s, 4), "big")
        return _recv_exactly(s, size)


def _recv_exactly(s: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = s.recv(min(left, 65536))
        if not chunk:
            raise OSError("connection closed mid-answer")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _parse_metadata(data: bytes) -> tuple[set[int], dict[str, dict[int, int]]]:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise ValueError("short metadata answer")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    def int_(n: int) -> int:
        return int.from_bytes(take(n), "big", signed=True)

    def string() -> str | None:
        length = int_(2)
        return None if length < 0 else take(length).decode()

    int_(4)  # correlation id
    int_(4)  # throttle time
    brokers = set()
    for _ in range(int_(4)):
        brokers.add(int_(4))
        string()  # host
        int_(4)  # port
        string()  # rack
    string()  # cluster id
    int_(4)  # controller id
    topics: dict[str, dict[int, int]] = {}
    for _ in range(int_(4)):
        error = int_(2)
        name = string() or ""
        int_(1)  # is_internal
        leaders = {}
        for _ in range(int_(4)):
            int_(2)  # partition error
            partition, leader = int_(4), int_(4)
            for _ in range(int_(4)):
                int_(4)  # replicas
            for _ in range(int_(4)):
                int_(4)  # in-sync replicas
            leaders[partition] = leader
        if error == 0:
            topics[name] = leaders
    return brokers, topics


def read_metadata(port: int, topics: list[str] | None) -> tuple[set[int], dict[str, dict[int, int]]]:
    """(registered node ids, topic -> partition -> leader) as the node on `port` sees them.

    `topics=None` asks about every topic. Raises OSError, ValueError or IndexError on a failed or garbled
    answer.
    """
    return _parse_metadata(_metadata_call(port, topics))
