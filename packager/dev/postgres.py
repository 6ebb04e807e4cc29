"""A throwaway PostgreSQL server from Debian's packages, on a free loopback port, for tests and benchmarks.

`start` installs the `postgresql` package if it is missing (as root, through apt-get), creates its own cluster
with `initdb` and runs `postgres` on 127.0.0.1 with trust authentication (loopback only; it holds test data).
Run as root, the cluster belongs to the `postgres` user and lives under `/var/tmp` (root's home is closed to
that user); its pid, port and folder are recorded in `<state_dir>/postgres.json`. `stop` ends that pid and
removes the cluster unless asked to keep it, so a later `start` on the same state folder finds its data again
(the real-CKAN benchmark keeps its million-row table that way).

CLI: `packager dev postgres start|stop|status [--state-dir DIR] [--keep-data]`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from packager.dev.processes import (
    ServiceError,
    alive,
    ensure_debian_packages,
    free_port,
    run,
    spawn,
    terminate,
    wait_until,
)

RECORD = "postgres.json"
# Speed over durability: the cluster holds disposable test data.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")


@dataclass(frozen=True, slots=True)
class Postgres:
    """A running server started by this module."""

    port: int
    pid: int
    data_dir: str
    socket_dir: str
    log_file: str
    bin_dir: str

    def url(self, user: str = "postgres", database: str = "postgres", password: str = "") -> str:
        """A libpq/SQLAlchemy URL for this server."""
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"


def _run_as() -> str | None:
    """The user that owns the cluster: `postgres` when running as root (initdb refuses root)."""
    return "postgres" if os.geteuid() == 0 else None


def bin_dir(*, log: Callable[[str], None] = print) -> Path:
    """The folder of the newest installed PostgreSQL's server programs, installing Debian's if none is."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        ensure_debian_packages(["postgresql"], log=log)
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
        )
    if not found:
        raise ServiceError("PostgreSQL's server programs are not under /usr/lib/postgresql/*/bin")
    return found[-1].parent


def cluster_dir(state_dir: Path) -> Path:
    """Where the cluster of this state folder lives: a folder the `postgres` user can enter."""
    if _run_as() is None:
        return state_dir / "pgdata"
    tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"ckanpackager-pg-{tag}"


def status(state_dir: Path) -> Postgres | None:
    """The server recorded in `state_dir` if its process is alive."""
    record = Path(state_dir) / RECORD
    if not record.exists():
        return None
    server = Postgres(**json.loads(record.read_text()))
    return server if alive(server.pid) else None


def _ready(server: Postgres) -> bool:
    probe = Path(server.bin_dir) / "pg_isready"
    try:
        run([str(probe), "-h", "127.0.0.1", "-p", str(server.port), "-q"], what="pg_isready", timeout=10)
    except ServiceError:
        return False
    return True


def start(
    state_dir: Path, *, port: int | None = None, timeout: float = 60.0, log: Callable[[str], None] = print
) -> Postgres:
    """Start (creating it if needed) the cluster of `state_dir`; return once it accepts connections."""
    state_dir = Path(state_dir).resolve()
    if (running := status(state_dir)) is not None:
        return running
    programs = bin_dir(log=log)
    state_dir.mkdir(parents=True, exist_ok=True)
    data = cluster_dir(state_dir)
    owner = _run_as()
    if not (data / "data" / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        (data / "data").mkdir(parents=True)
        (data / "run").mkdir()
        if owner is not None:
            for path in (data, data / "data", data / "run"):
                shutil.chown(path, owner, owner)
        run(
            [
                str(programs / "initdb"),
                "-D",
                str(data / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            what="initdb",
            user=owner,
        )
    log_file = state_dir / "postgres.log"
    port = port or free_port()
    settings = [f"-c{setting}" for setting in _FAST_SETTINGS]
    argv = [str(programs / "postgres"), "-D", str(data / "data"), "-p", str(port), "-k", str(data / "run")]
    argv += ["-c", "listen_addresses=127.0.0.1", *settings]
    pid = spawn(argv, log_file, user=owner)
    server = Postgres(
        port=port,
        pid=pid,
        data_dir=str(data),
        socket_dir=str(data / "run"),
        log_file=str(log_file),
        bin_dir=str(programs),
    )
    (state_dir / RECORD).write_text(json.dumps(asdict(server)))
    try:
        wait_until(lambda: _ready(server), timeout=timeout, what="PostgreSQL", pid=pid, log_file=log_file)
    except ServiceError:
        stop(state_dir)
        raise
    return server


def stop(state_dir: Path, *, keep_data: bool = False, timeout: float = 30.0) -> bool:
    """Stop the server recorded in `state_dir`; remove its cluster unless `keep_data`. True if it ran."""
    state_dir = Path(state_dir).resolve()
    record = state_dir / RECORD
    if not record.exists():
        if not keep_data:
            shutil.rmtree(cluster_dir(state_dir), ignore_errors=True)
        return False
    server = Postgres(**json.loads(record.read_text()))
    # SIGINT is PostgreSQL's "fast" shutdown: it ends the sessions and writes a clean checkpoint.
    was_running = terminate(server.pid, timeout=timeout, sig=signal.SIGINT)
    with contextlib.suppress(FileNotFoundError):
        record.unlink()
    if not keep_data:
        shutil.rmtree(server.data_dir, ignore_errors=True)
    return was_running


def psql(server: Postgres, sql: str, *, database: str = "postgres", user: str = "postgres") -> str:
    """Run SQL through psql (stopping at the first error); returns its output."""
    client = Path(server.bin_dir) / "psql"
    argv = [str(client), "-h", "127.0.0.1", "-p", str(server.port), "-U", user, "-d", database]
    argv += ["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t"]
    return run(argv, what=f"psql on {database}", input_text=sql)


def main(argv: Sequence[str]) -> int:
    """`packager dev postgres start|stop|status [--state-dir DIR] [--keep-data]`."""
    parser = argparse.ArgumentParser(prog="packager dev postgres")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default="var/postgres", help="where the server's record is kept")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument("--keep-data", action="store_true", help="on stop, keep the cluster for a restart")
    args = parser.parse_args(list(argv))
    state_dir = Path(args.state_dir)
    try:
        if args.action == "start":
            server = start(state_dir, port=args.port, log=lambda m: print(m, file=sys.stderr))
            print(server.url())
        elif args.action == "stop":
            print("stopped" if stop(state_dir, keep_data=args.keep_data) else "no server was running")
        else:
            found = status(state_dir)
            if found is None:
                print("not running")
                return 1
            print(found.url())
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
