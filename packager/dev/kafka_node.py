"""One local Kafka broker (a combined broker+controller node) whose state lives in a folder.

`start` formats a fresh storage directory, launches the broker in its own process group, waits until it
answers a request and records its pid and address in `<state_dir>/broker.json`; `stop` ends it and removes
its data. `halt` ends it keeping its data and `resume` starts it again on that data and the same ports;
`start_or_resume` resumes kept data when there is some, and `kept_data` says whether there is.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from packager.dev.kafka_jars import classpath_dir
from packager.dev.kafka_process import (
    BrokerError,
    alive,
    find_java,
    format_storage,
    free_port,
    new_cluster_id,
    spawn,
    terminate,
)
from packager.dev.kafka_wire import answers


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
    java = find_java()
    cp = f"{libs}/*"
    format_storage(java, cp, props, data_dir, new_cluster_id(), log)
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
    proc = spawn(java, cp, props, heap, log_file)
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
        if answers(port, 1.0):
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
        terminate(broker.pid, timeout)
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
        find_java(),
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
    return alive(pid, running=str(props))


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
        log(
            f"Resuming the Kafka broker on the data kept in {state_dir} "
            "(`packager dev kafka start --wipe` starts an empty one)"
        )
        try:
            return resume(state_dir, timeout=timeout), True
        except BrokerError as exc:
            raise BrokerError(f"{exc}\n(--wipe removes the kept data and starts an empty broker)") from None
    log(f"Starting a Kafka broker (KRaft; its data in {state_dir})...")
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
    was_running = status(state_dir) is not None and terminate(broker.pid, timeout)
    _forget(Path(state_dir), Path(broker.data_dir))
    return was_running
