"""Guards of `packager dev up`: one local stack per state folder, and its ports free before anything starts.

Without them a second `dev up` on the same folder answered its readiness checks from the first stack's
ingress, said "ckanpackager is up", failed on the port in use, and on its way out halted the broker the
first stack was using.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO


class StackBusy(Exception):
    """Another stack holds the state folder, or a port it needs is taken (the message says what to do)."""


def hold_state_folder(var: Path) -> IO[str]:
    """Lock `var` for this process's lifetime (the lock goes with the process, however it ends); keep the
    returned file open. StackBusy when another `dev up` holds it."""
    lock = open(var / "stack.lock", "a+")  # noqa: SIM115 - held open for the stack's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise StackBusy(
            f"a stack is already running from {var} (process {holder}): stop it (Ctrl-C in its terminal, "
            f"or kill -TERM {holder}), or start this one with another --var"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def check_ports_free(ports: dict[str, tuple[str, int]]) -> None:
    """StackBusy naming the first of `ports` (what -> (host, port)) that cannot be listened on."""
    for what, (host, port) in ports.items():
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise StackBusy(
                    f"the {what}'s address {host}:{port} is in use ({exc.strerror}): stop what listens "
                    "there (another stack?) or choose another port"
                ) from None
