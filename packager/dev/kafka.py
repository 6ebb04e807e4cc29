"""A real single-node Apache Kafka broker (KRaft mode) on a free loopback port, without Docker.

The broker's classpath comes from `$KAFKA_HOME/libs` when `KAFKA_HOME` is set; otherwise Maven resolves
`org.apache.kafka:kafka_2.13` and its runtime dependencies from Maven Central into a cache folder
(`$PACKAGER_KAFKA_CACHE`, default `~/.cache/ckanpackager/kafka-<version>`) that survives between runs.

`start` formats a fresh storage directory, launches the broker in its own process group, waits until it
answers a metadata request and records its pid and address in `<state_dir>/broker.json`; `stop` ends it and
removes its data.
"""

from __future__ import annotations

import base64
import contextlib
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
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven could not resolve Kafka {version}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
        )
    (staging / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


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
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
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
            break
        log(f"formatting KRaft storage failed (attempt {attempt}): {formatted.stderr[-500:].strip()}")
        time.sleep(1)
    else:
        raise BrokerError(
            f"formatting KRaft storage failed:\n{formatted.stdout[-2000:]}{formatted.stderr[-2000:]}"
        )
    return _launch(java, cp, state_dir, props, heap, port, controller_port, data_dir, timeout)


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
    try:
        os.kill(broker.pid, 0)
    except ProcessLookupError:
        return None
    return broker


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
    was_running = _terminate(broker.pid, timeout)
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


def main(argv: list[str]) -> int:
    """`packager dev kafka start|stop|status [--state-dir DIR] [--port N]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="packager dev kafka")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default="var/kafka", help="where the broker keeps its state")
    parser.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir)
    try:
        if args.action == "start":
            broker = start(state_dir, port=args.port, log=lambda m: print(m, file=sys.stderr))
            print(broker.bootstrap_servers)
        elif args.action == "stop":
            print("stopped" if stop(state_dir) else "no broker was running")
        else:
            broker_or_none = status(state_dir)
            if broker_or_none is None:
                print("not running")
                return 1
            print(broker_or_none.bootstrap_servers)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
