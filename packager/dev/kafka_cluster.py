"""A local Kafka cluster of combined broker+controller nodes, for fault tests and the chaos campaign.

`start_cluster` runs several nodes from the same jars as the single broker (replication factor = the node
count for every topic and internal topic, `min.insync.replicas` = 2 by default), recorded in
`<state_dir>/cluster.json`. Chaos tools use `kill_node` (SIGKILL, data kept), `restart_node` (same ports and
data), `partition_leaders` and `stop_cluster` (which removes the data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from packager.dev.kafka_jars import classpath_dir
from packager.dev.kafka_process import (
    STARTED,
    BrokerError,
    alive,
    find_java,
    format_storage,
    free_port,
    new_cluster_id,
    spawn,
    terminate,
)
from packager.dev.kafka_wire import answers, read_metadata


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a cluster started by `start_cluster` (its pid changes when it is restarted)."""

    node_id: int
    port: int
    controller_port: int
    pid: int
    properties: str
    data_dir: str
    log_file: str


@dataclass(frozen=True, slots=True)
class Cluster:
    """A running cluster started by this module."""

    state_dir: str
    nodes: tuple[Node, ...]
    heap: str

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address, comma-separated (clients need only one to be up)."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> Node:
        """The node with `node_id`."""
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise BrokerError(f"the cluster has no node {node_id}")


def _cluster_properties(
    node_id: int, port: int, controller_port: int, voters: str, data_dir: Path, size: int, partitions: int
) -> str:
    min_isr = min(2, size)
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir}",
            f"num.partitions={partitions}",
            # Every topic, the internal ones included, survives the loss of one node and refuses acks=all
            # writes with fewer than `min_isr` copies.
            f"default.replication.factor={size}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={size}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={size}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={size}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            "group.initial.rebalance.delay.ms=0",
            # A killed node's partitions get new leaders after 6 s instead of 9 (fault tests wait on it).
            "broker.heartbeat.interval.ms=1000",
            "broker.session.timeout.ms=6000",
            # A restarted node takes its partitions' leadership back soon, as in production.
            "leader.imbalance.check.interval.seconds=10",
            "auto.create.topics.enable=true",
            "",
        ]
    )


def _save_cluster(cluster: Cluster) -> Cluster:
    record = {
        "state_dir": cluster.state_dir,
        "heap": cluster.heap,
        "nodes": [asdict(n) for n in cluster.nodes],
    }
    (Path(cluster.state_dir) / "cluster.json").write_text(json.dumps(record))
    return cluster


def cluster_status(state_dir: Path) -> Cluster | None:
    """The cluster recorded in `state_dir` (alive or not), or None."""
    record = Path(state_dir) / "cluster.json"
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    return Cluster(
        state_dir=data["state_dir"], heap=data["heap"], nodes=tuple(Node(**n) for n in data["nodes"])
    )


def start_cluster(
    state_dir: Path,
    *,
    nodes: int = 3,
    partitions: int = 8,
    heap: str = "384m",
    timeout: float = 120.0,
    log: Callable[[str], None] = print,
) -> Cluster:
    """Format and start `nodes` combined broker+controller nodes; return once all of them are registered."""
    if nodes < 1:
        raise BrokerError("a cluster needs at least one node")
    state_dir = Path(state_dir).resolve()
    if (existing := cluster_status(state_dir)) is not None and all(alive(n.pid) for n in existing.nodes):
        return existing
    libs = classpath_dir(log=log)
    java, cp = find_java(), f"{libs}/*"
    state_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, BIND_ATTEMPTS + 1):
        try:
            return _start_nodes(state_dir, java, cp, nodes, partitions, heap, timeout, log)
        except BrokerError as exc:
            # A port found free can be taken by another process before the node binds it (other tests,
            # other services on the machine): start again on new ports.
            logs = [state_dir / f"node-{i + 1}" / "broker.log" for i in range(nodes)]
            if attempt == BIND_ATTEMPTS or not any(_port_taken(f) for f in logs):
                raise
            log(f"a port was taken before a node could bind it ({exc}); starting again on new ports")
            for i in range(nodes):
                shutil.rmtree(state_dir / f"node-{i + 1}", ignore_errors=True)
    raise AssertionError("unreachable")


BIND_ATTEMPTS = 3


def _port_taken(log_file: Path) -> bool:
    try:
        return "Address already in use" in log_file.read_text(errors="replace")
    except FileNotFoundError:
        return False


def _start_nodes(
    state_dir: Path,
    java: str,
    cp: str,
    nodes: int,
    partitions: int,
    heap: str,
    timeout: float,
    log: Callable[[str], None],
) -> Cluster:
    ports = [(free_port(), free_port()) for _ in range(nodes)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
    cluster_id = new_cluster_id()
    started: list[Node] = []
    try:
        for i, (port, controller_port) in enumerate(ports):
            node_id, node_dir = i + 1, state_dir / f"node-{i + 1}"
            node_dir.mkdir(exist_ok=True)
            data_dir, props = node_dir / "data", node_dir / "server.properties"
            props.write_text(
                _cluster_properties(node_id, port, controller_port, voters, data_dir, nodes, partitions)
            )
            format_storage(java, cp, props, data_dir, cluster_id, log)
            log_file = node_dir / "broker.log"
            proc = spawn(java, cp, props, heap, log_file)
            started.append(
                Node(node_id, port, controller_port, proc.pid, str(props), str(data_dir), str(log_file))
            )
        cluster = _save_cluster(Cluster(state_dir=str(state_dir), nodes=tuple(started), heap=heap))
        # The nodes only serve clients once a controller quorum exists, so all are launched before waiting.
        _wait_registered(cluster, {n.node_id for n in started}, timeout)
    except BaseException:
        for node in started:
            terminate(node.pid, 10)
        with contextlib.suppress(FileNotFoundError):
            (state_dir / "cluster.json").unlink()
        raise
    return cluster


def _wait_registered(cluster: Cluster, node_ids: set[int], timeout: float) -> None:
    """Wait until every node in `node_ids` is alive and listed in the cluster's metadata."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if node.node_id in node_ids and not alive(node.pid):
                raise BrokerError(f"node {node.node_id} exited; see {node.log_file}")
        try:
            brokers, _ = _metadata(cluster, None)
        except BrokerError:
            brokers = set()
        if node_ids <= brokers and all(answers(cluster.node(i).port, 1.0) for i in node_ids):
            return
        time.sleep(0.5)
    raise BrokerError(f"nodes {sorted(node_ids)} did not all register within {timeout:.0f}s")


def kill_node(state_dir: Path, node_id: int) -> Node:
    """SIGKILL one node (as a crash would), keeping its data for `restart_node`."""
    cluster = cluster_status(state_dir)
    if cluster is None:
        raise BrokerError(f"no cluster is recorded in {state_dir}")
    node = cluster.node(node_id)
    with contextlib.suppress(ProcessLookupError):
        os.kill(node.pid, signal.SIGKILL)
    proc = STARTED.pop(node.pid, None)
    if proc is not None:
        proc.wait()
    else:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(node.pid, 0)
    return node


def restart_node(state_dir: Path, node_id: int, *, timeout: float = 120.0) -> Node:
    """Start a killed node again on its data and ports; return once the cluster lists it again."""
    cluster = cluster_status(state_dir)
    if cluster is None:
        raise BrokerError(f"no cluster is recorded in {state_dir}")
    node = cluster.node(node_id)
    if alive(node.pid):
        return node
    cp = f"{classpath_dir(log=lambda _: None)}/*"
    proc = spawn(find_java(), cp, Path(node.properties), cluster.heap, Path(node.log_file))
    fresh = dataclasses.replace(node, pid=proc.pid)
    cluster = _save_cluster(
        dataclasses.replace(cluster, nodes=tuple(fresh if n.node_id == node_id else n for n in cluster.nodes))
    )
    _wait_registered(cluster, {node_id}, timeout)
    return fresh


def stop_cluster(state_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stop every node of the cluster in `state_dir` and remove its data. True if one was recorded."""
    cluster = cluster_status(state_dir)
    if cluster is None:
        return False
    # All nodes are asked at once: one by one, the last ones would wait for a quorum that has already gone.
    for node in cluster.nodes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
    for node in cluster.nodes:
        terminate(node.pid, timeout)
    for node in cluster.nodes:
        shutil.rmtree(node.data_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (Path(state_dir) / "cluster.json").unlink()
    return True


def partition_leaders(cluster: Cluster, topic: str) -> dict[int, int]:
    """The node id leading each partition of `topic` (-1 while a partition has no leader)."""
    _, topics = _metadata(cluster, [topic])
    if topic not in topics:
        raise BrokerError(f"topic {topic} does not exist")
    return topics[topic]


def _metadata(cluster: Cluster, topics: list[str] | None) -> tuple[set[int], dict[str, dict[int, int]]]:
    """(registered node ids, topic -> partition -> leader) from the first live node that answers."""
    last: Exception | None = None
    for node in cluster.nodes:
        if not alive(node.pid):
            continue
        try:
            return read_metadata(node.port, topics)
        except (OSError, ValueError, IndexError) as exc:
            last = exc
    raise BrokerError(f"no node answered a metadata request: {last!r}")
