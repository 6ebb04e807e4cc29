"""Helpers the local dev services share: free ports, Debian packages, detached processes and their end.

Used by `packager.dev.postgres` and `packager.dev.real_ckan`. Every service runs in its own session (so a
Ctrl-C in the calling terminal does not reach it) with its output in a log file, and is recorded by pid so
that `stop` ends exactly the process that was started, never one found by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class ServiceError(RuntimeError):
    """A dev service could not be installed, started or stopped; the message says why."""


# Processes started by this interpreter, so stopping them also reaps them.
STARTED: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def debian_package_installed(name: str) -> bool:
    """Whether dpkg knows the package as installed."""
    if shutil.which("dpkg-query") is None:
        return False
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and done.stdout.strip().endswith("installed")


def ensure_debian_packages(packages: Sequence[str], *, log: Callable[[str], None] = print) -> None:
    """Install the Debian packages that are missing (root and apt-get only); idempotent."""
    missing = [name for name in packages if not debian_package_installed(name)]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            f"Debian packages {' '.join(missing)} are needed and missing; installing them needs root and "
            "apt-get."
        )
    log(f"installing {' '.join(missing)} from Debian's packages...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise ServiceError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def spawn(
    argv: Sequence[str],
    log_file: Path,
    *,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> int:
    """Start a process in its own session with stdout and stderr appended to `log_file`; returns its pid."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=None if env is None else dict(env),
            user=user,
            cwd=cwd,
        )
    STARTED[proc.pid] = proc
    return proc.pid


def alive(pid: int, *, running: str | None = None) -> bool:
    """Whether the process `pid` is still running (a zombie child of ours counts as ended).

    With `running`, also whether its command line holds that argument, where /proc tells: a pid read back
    from a record may have been given to another process since, which must not be taken for the one
    recorded, let alone signalled (another user's process is then not it either).
    """
    if pid <= 0:
        return False
    proc = STARTED.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return running is None
    if running is None:
        return True
    try:
        return running.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc here: the pid alone has to do


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    pid: int | None = None,
    log_file: Path | None = None,
) -> None:
    """Poll `ready` until it is true; fail with the log's tail if the deadline passes or `pid` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not alive(pid):
            raise ServiceError(f"{what} exited while starting{_tail(log_file)}")
        time.sleep(0.2)
    raise ServiceError(f"{what} was not ready within {timeout:.0f}s{_tail(log_file)}")


def _tail(log_file: Path | None) -> str:
    if log_file is None or not log_file.exists():
        return ""
    return f"; the end of {log_file}:\n" + log_file.read_text(errors="replace")[-3000:]


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
        return True
    return False


def terminate(pid: int, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the process `pid` (SIGTERM, then SIGKILL after `timeout`); True if it was running."""
    proc = STARTED.pop(pid, None)
    if proc is not None:
        if proc.poll() is not None:
            return False
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        if not alive(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    input_text: str | None = None,
    timeout: float = 600.0,
) -> str:
    """Run a command to its end; return its stdout, or fail naming `what` with its output."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=None if env is None else dict(env),
            user=user,
            input=input_text,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout
