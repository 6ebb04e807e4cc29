"""Real Apache Kafka brokers (KRaft mode) on free loopback ports, without Docker: one node, or a cluster.

The broker's classpath comes from `$KAFKA_HOME/libs` when `KAFKA_HOME` is set; otherwise Maven resolves
`org.apache.kafka:kafka_2.13` and its runtime dependencies from Maven Central into a cache folder
(`$PACKAGER_KAFKA_CACHE`, default `~/.cache/ckanpackager/kafka-<version>`) that survives between runs.

`start` formats a fresh storage directory, launches the broker in its own process group, waits until it
answers a metadata request and records its pid and address in `<state_dir>/broker.json`; `stop` ends it and
removes its data. `halt` ends it keeping its data and `resume` starts it again on that data and the same
ports; `start_or_resume` resumes kept data when there is some. The command line keeps data by default:
`packager dev kafka stop` halts, `start` resumes, and `--wipe` on either removes the data.

`start_cluster` runs several combined broker+controller nodes from the same jars (replication factor = the
node count for every topic and internal topic, `min.insync.replicas` = 2 by default), recorded in
`<state_dir>/cluster.json`. Chaos tools use `kill_node` (SIGKILL, data kept), `restart_node` (same ports and
data), `partition_leaders` and `stop_cluster`. The metadata probes speak Kafka's wire protocol directly, so
this module needs no event loop and no client library.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_VERSION = "4.1.1"
POM = Path(__file__).with_name("kafka-pom.xml")

# Brokers started by this process, so `stop` can reap them (and Popen does not warn they outlive it).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """The broker could not be obtained, started or stopped."""


@dataclass(frozen=True, slots=True)
class Broker:
    """A running broker started by this module."""

    bootstrap_servers: str
    pid: int
    state_dir: str
    data_dir: str
    log_file: str
    controller_port: int

    @property
    def port(self) -> int:
        """The client port."""
        return int(self.bootstrap_servers.rsplit(":", 1)[1])


def kafka_version() -> str:
    """The Kafka version to run: `PACKAGER_KAFKA_VERSION` or the tested default."""
    return os.environ.get("PACKAGER_KAFKA_VERSION", DEFAULT_VERSION)


def cache_dir(version: str) -> Path:
    """Where the resolved jars of `version` are kept between runs."""
    root = os.environ.get("PACKAGER_KAFKA_CACHE") or Path.home() / ".cache" / "ckanpackager"
    return Path(root) / f"kafka-{version}"


def classpath_dir(version: str | None = None, *, log: Callable[[str], None] = print) -> Path:
    """The folder of broker jars: `$KAFKA_HOME/libs`, the cache, or a fresh Maven resolution."""
    if home := os.environ.get("KAFKA_HOME"):
        libs = Path(home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"KAFKA_HOME={home} has no libs/kafka_2.13-*.jar")
        return libs
    version = version or kafka_version()
    target = cache_dir(version) / "libs"
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed: install it, or set KAFKA_HOME to a Kafka install")
    log(f"Resolving Apache Kafka {version} from Maven Central into {target} (first run only)...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=target.parent))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    done = _run_saying_progress(cmd, log, "resolving")
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven could not resolve Kafka {version}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
        )
    (staging / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _run_saying_progress(
    cmd: list[str], log: Callable[[str], None], doing: str, every: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` to its end, capturing its output, and say every `every` seconds that it is still going."""
    started = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=every)
                break
            except subprocess.TimeoutExpired:
                log(f"  ... still {doing} ({time.monotonic() - started:.0f}s)")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _java() -> str:
    java = shutil.which("java") or (Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin" / "java")
    if not Path(java).exists():
        raise BrokerError("Java (17 or newer) is not installed; the Kafka broker needs it")
    return str(java)


def _properties(port: int, controller_port: int, data_dir: Path, partitions: int) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir}",
            f"num.partitions={partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ]
    )


def _new_cluster_id() -> str:
    """A random KRaft cluster id (a base64 UUID) that does not start with "-".

    The storage tool's argument parser takes an id starting with "-" (one in 64 random ids) for an option
    and refuses to format: the cause of the rare formatting failures once put down to a loaded machine.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _answers(port: int, timeout: float) -> bool:
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


def start(
    state_dir: Path,
    *,
    port: int | None = None,
    partitions: int = 8,
    heap: str = "512m",
    timeout: float = 90.0,
    log: Callable[[str], None] = print,
) -> Broker:
    """Format storage and start a broker; return once it answers requests."""
    state_dir = Path(state_dir).resolve()
    if (existing := status(state_dir)) is not None:
        return existing
    libs = classpath_dir(log=log)
    state_dir.mkdir(parents=True, exist_ok=True)
    data_dir = state_dir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    port = port or free_port()
    controller_port = free_port()
    props = state_dir / "server.properties"
    props.write_text(_properties(port, controller_port, data_dir, partitions))
    java = _java()
    cp = f"{libs}/*"
    _format_storage(java, cp, props, data_dir, _new_cluster_id(), log)
    return _launch(java, cp, state_dir, props, heap, port, controller_port, data_dir, timeout)


def _spawn(java: str, cp: str, props: Path, heap: str, log_file: Path) -> subprocess.Popen[bytes]:
    """Run `kafka.Kafka` on `props` in its own process group, output appended to `log_file`."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [
                java,
                f"-Xmx{heap}",
                f"-Xms{heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                "-cp",
                cp,
                "kafka.Kafka",
                str(props),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _STARTED[proc.pid] = proc
    return proc


def _format_storage(
    java: str, cp: str, props: Path, data_dir: Path, cluster_id: str, log: Callable[[str], None]
) -> None:
    """Format a node's KRaft storage (fresh data folder), retrying as a loaded machine sometimes needs."""
    # Formatting was once seen to fail on a heavily loaded machine; a fresh data folder and a second try cost
    # little next to a failed test session.
    for attempt in (1, 2, 3):
        shutil.rmtree(data_dir, ignore_errors=True)
        formatted = subprocess.run(
            [java, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True,
            text=True,
            check=False,
        )
        if formatted.returncode == 0:
            return
        log(f"formatting KRaft storage failed (attempt {attempt}): {formatted.stderr[-500:].strip()}")
        time.sleep(1)
    raise BrokerError(
        f"formatting KRaft storage failed:\n{formatted.stdout[-2000:]}{formatted.stderr[-2000:]}"
    )


def _launch(
    java: str,
    cp: str,
    state_dir: Path,
    props: Path,
    heap: str,
    port: int,
    controller_port: int,
    data_dir: Path,
    timeout: float,
) -> Broker:
    """Run the broker on formatted storage; return once it answers requests."""
    log_file = state_dir / "broker.log"
    proc = _spawn(java, cp, props, heap, log_file)
    broker = Broker(
        bootstrap_servers=f"127.0.0.1:{port}",
        pid=proc.pid,
        state_dir=str(state_dir),
        data_dir=str(data_dir),
        log_file=str(log_file),
        controller_port=controller_port,
    )
    (state_dir / "broker.json").write_text(json.dumps(asdict(broker)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _forget(state_dir, data_dir)
            raise BrokerError(f"the broker exited with {proc.returncode}; see {log_file}")
        if _answers(port, 1.0):
            return broker
        time.sleep(0.3)
    stop(state_dir)
    raise BrokerError(f"the broker did not answer within {timeout:.0f}s; see {log_file}")


def halt(state_dir: Path, *, timeout: float = 30.0) -> Broker:
    """Stop the broker recorded in `state_dir` but keep its data, so `resume` can start it again."""
    record = Path(state_dir) / "broker.json"
    if not record.exists():
        raise BrokerError(f"no broker is recorded in {state_dir}")
    broker = Broker(**json.loads(record.read_text()))
    if status(state_dir) is not None:
        _terminate(broker.pid, timeout)
    return broker


def resume(state_dir: Path, *, heap: str = "512m", timeout: float = 90.0) -> Broker:
    """Start a halted broker again on its data and ports (clients reconnect to the same address)."""
    state_dir = Path(state_dir).resolve()
    if (running := status(state_dir)) is not None:
        return running
    record = state_dir / "broker.json"
    if not record.exists():
        raise BrokerError(f"no broker is recorded in {state_dir}")
    broker = Broker(**json.loads(record.read_text()))
    cp = f"{classpath_dir(log=lambda _: None)}/*"
    return _launch(
        _java(),
        cp,
        state_dir,
        state_dir / "server.properties",
        heap,
        broker.port,
        broker.controller_port,
        Path(broker.data_dir),
        timeout,
    )


def status(state_dir: Path) -> Broker | None:
    """The broker recorded in `state_dir` if its process is still alive."""
    record = Path(state_dir) / "broker.json"
    if not record.exists():
        return None
    broker = Broker(**json.loads(record.read_text()))
    if not _runs_broker(broker.pid, Path(broker.state_dir) / "server.properties"):
        return None
    return broker


def _runs_broker(pid: int, props: Path) -> bool:
    """Whether `pid` is alive and (where /proc tells) the broker started on `props`.

    A halted broker's pid stays in its record; by the time it is read again the system may have given that
    number to another process, which must not be taken for the broker, let alone signalled.
    """
    if pid <= 0:
        return False
    proc = _STARTED.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a broker this module started
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return str(props).encode() in cmdline.read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc here: the pid alone has to do


def kept_data(state_dir: Path) -> Broker | None:
    """The stopped broker whose data `state_dir` keeps (formatted storage), or None."""
    record = Path(state_dir) / "broker.json"
    if not record.exists():
        return None
    broker = Broker(**json.loads(record.read_text()))
    if not (Path(broker.data_dir) / "meta.properties").exists():
        return None
    return broker


def start_or_resume(
    state_dir: Path,
    *,
    port: int | None = None,
    partitions: int = 8,
    wipe: bool = False,
    timeout: float = 90.0,
    log: Callable[[str], None] = print,
) -> tuple[Broker, bool]:
    """The running broker, else the kept one resumed, else a fresh one: (broker, whether data was reused).

    `wipe` removes kept data first (a fresh broker then takes the kept port unless `port` names another).
    """
    state_dir = Path(state_dir).resolve()
    if (running := status(state_dir)) is not None:
        if wipe:
            raise BrokerError(f"the broker in {state_dir} is running: stop it before wiping its data")
        return running, True
    kept = kept_data(state_dir)
    if kept is not None and not wipe:
        if port is not None and port != kept.port:
            raise BrokerError(
                f"the data kept in {state_dir} belongs to a broker on port {kept.port}; start without "
                "--port, or with --wipe to start an empty broker"
            )
        log(f"Resuming the Kafka broker on the data kept in {state_dir} (--wipe starts an empty one)")
        try:
            return resume(state_dir, timeout=timeout), True
        except BrokerError as exc:
            raise BrokerError(f"{exc}\n(--wipe removes the kept data and starts an empty broker)") from None
    record = state_dir / "broker.json"
    if record.exists():
        previous = Broker(**json.loads(record.read_text()))
        port = port or previous.port
        _forget(state_dir, Path(previous.data_dir))
    return start(state_dir, port=port, partitions=partitions, timeout=timeout, log=log), False


def _forget(state_dir: Path, data_dir: Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (Path(state_dir) / "broker.json").unlink()


def stop(state_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stop the broker recorded in `state_dir` and remove its data. True if one was running."""
    record = Path(state_dir) / "broker.json"
    if not record.exists():
        return False
    broker = Broker(**json.loads(record.read_text()))
    was_running = status(state_dir) is not None and _terminate(broker.pid, timeout)
    _forget(Path(state_dir), Path(broker.data_dir))
    return was_running


def _terminate(pid: int, timeout: float) -> bool:
    proc = _STARTED.pop(pid, None)
    if proc is not None:
        if proc.poll() is not None:
            return False
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            pass  # not our child (started by another command): poll for its end instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


# ---------------------------------------------------------------------------------------------------------
# A cluster of combined broker+controller nodes


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


def _alive(pid: int) -> bool:
    proc = _STARTED.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    if (existing := cluster_status(state_dir)) is not None and all(_alive(n.pid) for n in existing.nodes):
        return existing
    libs = classpath_dir(log=log)
    java, cp = _java(), f"{libs}/*"
    state_dir.mkdir(parents=True, exist_ok=True)
    ports = [(free_port(), free_port()) for _ in range(nodes)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
    cluster_id = _new_cluster_id()
    started: list[Node] = []
    try:
        for i, (port, controller_port) in enumerate(ports):
            node_id, node_dir = i + 1, state_dir / f"node-{i + 1}"
            node_dir.mkdir(exist_ok=True)
            data_dir, props = node_dir / "data", node_dir / "server.properties"
            props.write_text(
                _cluster_properties(node_id, port, controller_port, voters, data_dir, nodes, partitions)
            )
            _format_storage(java, cp, props, data_dir, cluster_id, log)
            log_file = node_dir / "broker.log"
            proc = _spawn(java, cp, props, heap, log_file)
            started.append(
                Node(node_id, port, controller_port, proc.pid, str(props), str(data_dir), str(log_file))
            )
        cluster = _save_cluster(Cluster(state_dir=str(state_dir), nodes=tuple(started), heap=heap))
        # The nodes only serve clients once a controller quorum exists, so all are launched before waiting.
        _wait_registered(cluster, {n.node_id for n in started}, timeout)
    except BaseException:
        for node in started:
            _terminate(node.pid, 10)
        with contextlib.suppress(FileNotFoundError):
            (state_dir / "cluster.json").unlink()
        raise
    return cluster


def _wait_registered(cluster: Cluster, node_ids: set[int], timeout: float) -> None:
    """Wait until every node in `node_ids` is alive and listed in the cluster's metadata."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if node.node_id in node_ids and not _alive(node.pid):
                raise BrokerError(f"node {node.node_id} exited; see {node.log_file}")
        try:
            brokers, _ = _metadata(cluster, None)
        except BrokerError:
            brokers = set()
        if node_ids <= brokers and all(_answers(cluster.node(i).port, 1.0) for i in node_ids):
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
    proc = _STARTED.pop(node.pid, None)
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
    if _alive(node.pid):
        return node
    cp = f"{classpath_dir(log=lambda _: None)}/*"
    proc = _spawn(_java(), cp, Path(node.properties), cluster.heap, Path(node.log_file))
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
        _terminate(node.pid, timeout)
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


# Metadata v4 (the oldest Kafka 4 still serves): enough of the wire format to read brokers and leaders.
def _metadata(cluster: Cluster, topics: list[str] | None) -> tuple[set[int], dict[str, dict[int, int]]]:
    """(registered node ids, topic -> partition -> leader) from the first live node that answers."""
    last: Exception | None = None
    for node in cluster.nodes:
        if not _alive(node.pid):
            continue
        try:
            return _parse_metadata(_metadata_call(node.port, topics))
        except (OSError, ValueError, IndexError) as exc:
            last = exc
    raise BrokerError(f"no node answered a metadata request: {last!r}")


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


def main(argv: list[str]) -> int:
    """`packager dev kafka ACTION [--state-dir D] [--port N] [--wipe] [--nodes N] [--node ID]`.

    A single broker keeps its data across `stop` and `start` unless `--wipe` is given; a cluster's `stop`
    always removes its data.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="packager dev kafka")
    parser.add_argument("action", choices=["start", "stop", "status", "kill-node", "restart-node"])
    parser.add_argument("--state-dir", default="var/kafka", help="where the broker keeps its state")
    parser.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    parser.add_argument(
        "--nodes", type=int, default=1, help="start a cluster of this many nodes (default 1: one broker)"
    )
    parser.add_argument("--node", type=int, default=None, help="node id for kill-node and restart-node")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="start: remove kept data and start an empty broker; stop: remove the data after stopping",
    )
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir)
    quiet: Callable[[str], None] = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        if args.action == "start":
            if args.nodes > 1:
                if args.port is not None:
                    raise BrokerError("--port applies to a single broker; a cluster takes free ports")
                print(start_cluster(state_dir, nodes=args.nodes, log=quiet).bootstrap_servers)
            else:
                broker, _ = start_or_resume(state_dir, port=args.port, wipe=args.wipe, log=quiet)
                print(broker.bootstrap_servers)
        elif args.action in ("kill-node", "restart-node"):
            if args.node is None:
                raise BrokerError(f"{args.action} needs --node ID")
            if args.action == "kill-node":
                kill_node(state_dir, args.node)
                print(f"node {args.node} killed")
            else:
                restart_node(state_dir, args.node)
                print(f"node {args.node} restarted")
        elif args.action == "stop":
            if stop_cluster(state_dir):
                print("stopped")
            elif not (state_dir / "broker.json").exists():
                print("no broker was running")
            elif args.wipe:
                was_running = status(state_dir) is not None
                # The record stays: the next `start` takes the same port, so running clients find the new
                # (empty) broker where the old one was.
                shutil.rmtree(halt(state_dir).data_dir, ignore_errors=True)
                print(f"{'stopped' if was_running else 'no broker was running'}; data removed")
            else:
                was_running = status(state_dir) is not None
                halt(state_dir)
                print(
                    f"{'stopped' if was_running else 'no broker was running'}; its data is kept in "
                    f"{state_dir} (`start` resumes it, `stop --wipe` removes it)"
                )
        else:
            cluster = cluster_status(state_dir)
            if cluster is not None:
                alive = [n for n in cluster.nodes if _alive(n.pid)]
                if not alive:
                    print("not running")
                    return 1
                for n in cluster.nodes:
                    print(f"node {n.node_id} 127.0.0.1:{n.port} {'up' if _alive(n.pid) else 'down'}")
                print(cluster.bootstrap_servers)
                return 0
            broker_or_none = status(state_dir)
            if broker_or_none is None:
                print("not running (data kept)" if kept_data(state_dir) else "not running")
                return 1
            print(broker_or_none.bootstrap_servers)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
