"""Real Apache Kafka brokers (KRaft mode) on free loopback ports, without Docker: one node, or a cluster.

This module is the command line, `packager dev kafka start|stop|status|kill-node|restart-node`, and the
names callers import; the parts live in
- `kafka_jars`: the classpath, from `$KAFKA_HOME/libs` or resolved once by Maven into a cache folder;
- `kafka_process`: Java, KRaft storage formatting, spawning and ending a node's process, `BrokerError`;
- `kafka_wire`: the ApiVersions and Metadata probes, speaking Kafka's wire protocol directly, so none of
  this needs an event loop or a client library;
- `kafka_node`: one broker (`start`, `stop`, `halt`, `resume`, `start_or_resume`, `status`, `kept_data`),
  its state in `<state_dir>/broker.json`;
- `kafka_cluster`: several combined broker+controller nodes (`start_cluster`, `kill_node`, `restart_node`,
  `partition_leaders`, `stop_cluster`), recorded in `<state_dir>/cluster.json`.

The command line keeps a single broker's data by default: `packager dev kafka stop` halts, `start` resumes,
and `--wipe` on either removes the data.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from packager.dev.kafka_cluster import (
    Cluster,
    Node,
    cluster_status,
    kill_node,
    partition_leaders,
    restart_node,
    start_cluster,
    stop_cluster,
)
from packager.dev.kafka_jars import DEFAULT_VERSION, POM, cache_dir, classpath_dir, kafka_version
from packager.dev.kafka_node import (
    Broker,
    halt,
    kept_data,
    resume,
    start,
    start_or_resume,
    status,
    stop,
)
from packager.dev.kafka_process import BrokerError, alive, free_port

__all__ = [
    "DEFAULT_VERSION",
    "POM",
    "Broker",
    "BrokerError",
    "Cluster",
    "Node",
    "cache_dir",
    "classpath_dir",
    "cluster_status",
    "free_port",
    "halt",
    "kafka_version",
    "kept_data",
    "kill_node",
    "main",
    "partition_leaders",
    "restart_node",
    "resume",
    "start",
    "start_cluster",
    "start_or_resume",
    "status",
    "stop",
    "stop_cluster",
]


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
                up = [n for n in cluster.nodes if alive(n.pid)]
                if not up:
                    print("not running")
                    return 1
                for n in cluster.nodes:
                    print(f"node {n.node_id} 127.0.0.1:{n.port} {'up' if alive(n.pid) else 'down'}")
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
