"""The JVM processes of Kafka nodes: finding Java, formatting KRaft storage, spawning and ending a node.

Shared by the single broker (`kafka_node`) and the cluster (`kafka_cluster`). `STARTED` holds the nodes this
Python process launched, so ending one also reaps it; a node started by another command (an earlier
`packager dev kafka start`) is found by pid and signalled instead. `BrokerError` is the one error every
`packager.dev.kafka*` module raises.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from packager.dev.processes import STARTED, alive, free_port

__all__ = [
    "STARTED",
    "BrokerError",
    "alive",
    "find_java",
    "format_storage",
    "free_port",
    "new_cluster_id",
    "spawn",
    "terminate",
]


class BrokerError(RuntimeError):
    """The broker could not be obtained, started or stopped."""


def find_java() -> str:
    """The `java` to run: on the PATH, else under `$JAVA_HOME`."""
    java = shutil.which("java") or (Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin" / "java")
    if not Path(java).exists():
        raise BrokerError("Java (17 or newer) is not installed; the Kafka broker needs it")
    return str(java)


def new_cluster_id() -> str:
    """A random KRaft cluster id (a base64 UUID) that does not start with "-".

    The storage tool's argument parser takes an id starting with "-" (one in 64 random ids) for an option
    and refuses to format: the cause of the rare formatting failures once put down to a loaded machine.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def spawn(java: str, cp: str, props: Path, heap: str, log_file: Path) -> subprocess.Popen[bytes]:
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
    STARTED[proc.pid] = proc
    return proc


def format_storage(
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


def terminate(pid: int, timeout: float) -> bool:
    """SIGTERM `pid` and wait up to `timeout` for it to end (then SIGKILL). True if it was running."""
    proc = STARTED.pop(pid, None)
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
