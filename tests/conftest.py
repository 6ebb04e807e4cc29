"""Shared fixtures: the Kafka broker every integration test talks to, free ports, unique topic prefixes.

The broker, in this order: `KAFKA_BOOTSTRAP_SERVERS` when set; testcontainers' Kafka module when a Docker
engine answers; otherwise a KRaft broker started by `packager.dev.kafka` (Java + Maven, or `KAFKA_HOME`).
A test that needs Kafka never skips: with no broker to be had it fails and names the three ways.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packager.dev import kafka as dev_kafka

NO_BROKER = (
    "No Kafka broker for the tests. Provide one of: (1) KAFKA_BOOTSTRAP_SERVERS=host:port of a running "
    "broker; (2) a Docker engine, so testcontainers can start apache/kafka; (3) Java 17+ with Maven on "
    "PATH (or KAFKA_HOME pointing at a Kafka install), so `packager dev kafka start` can run one."
)


def _docker_answers() -> bool:
    """True when a Docker engine answers `GET /_ping` on its socket (DOCKER_HOST or the default one)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            name, _, port = host.removeprefix("tcp://").partition(":")
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(3)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = sock.recv(64)
            return head.startswith(b"HTTP/1.") and b" 200 " in head
    except OSError:
        return False


# The data directory of the broker this session started itself (none for KAFKA_BOOTSTRAP_SERVERS or Docker).
_BROKER_DATA: dict[str, Path] = {}


@pytest.fixture
def kafka_data_dir(kafka_bootstrap: str) -> Path | None:
    """Where the test broker keeps its segment files: KAFKA_DATA_DIR when set, else the data directory of
    the broker this session started; None when neither is known (a broker elsewhere, in a container)."""
    if given := os.environ.get("KAFKA_DATA_DIR"):
        return Path(given)
    return _BROKER_DATA.get("dir")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for this test session."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        # The module's start script is written for its default (Confluent) image, so it keeps that image.
        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    state_dir = tmp_path_factory.mktemp("kafka")
    try:
        broker = dev_kafka.start(state_dir, log=lambda m: print(m))
    except dev_kafka.BrokerError as exc:
        pytest.fail(f"{NO_BROKER}\nStarting one here failed: {exc}", pytrace=False)
    _BROKER_DATA["dir"] = Path(broker.data_dir)
    try:
        yield broker.bootstrap_servers
    finally:
        _BROKER_DATA.clear()
        dev_kafka.stop(state_dir)


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to the test, so tests never share topics or consumer groups."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    return dev_kafka.free_port()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """An empty store directory."""
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for this test session (`packager dev postgres`, Debian's packages, a free
    loopback port), stopped and removed at the end; yields its URL."""
    from packager.dev import postgres

    state_dir = tmp_path_factory.mktemp("postgres")
    server = postgres.start(state_dir, log=lambda m: print(m))
    try:
        yield server.url()
    finally:
        postgres.stop(state_dir)


@pytest.fixture(scope="session")
def s3proxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An S3-compatible server for this test session (`packager dev s3`: s3proxy from Maven Central on a
    folder, a free loopback port), stopped by its pid at the end, whatever the tests did."""
    from packager.dev import s3proxy
    from packager.dev.processes import ServiceError

    state_dir = tmp_path_factory.mktemp("s3proxy")
    try:
        server = s3proxy.start(state_dir, log=lambda m: print(m))
    except ServiceError as exc:
        pytest.fail(
            f"No S3-compatible server for the tests (Java 17+ and Maven are needed): {exc}", pytrace=False
        )
    try:
        yield server
    finally:
        s3proxy.stop(state_dir)


@pytest.fixture(params=["sqlite", "postgres"])
def views_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty views database: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'views.sqlite3'}"
        return
    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"views_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
