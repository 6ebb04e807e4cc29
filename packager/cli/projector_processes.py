"""`packager projector`: one projector, a share of the log's partitions (`--share I/K`), or K processes.

`--processes K` starts K child processes, `packager projector --share i/K` for i in 1..K, and passes SIGTERM
and SIGINT on to them. A child stops only when asked or on a fault its own supervision cannot mend (bad
settings, say): then the others are stopped too and the command exits with the child's status, so whatever
runs the projector (systemd, compose) sees one failure and restarts it, not a projector quietly missing
partitions; a child also gets SIGTERM when the command itself is killed. Each child's batches are
transactions with their positions, so stopping one anywhere is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from packager.adapters.projector_shares import WHOLE, Share
from packager.core.settings import Settings

_PR_SET_PDEATHSIG = 1  # prctl(2)
STOP_SECONDS = 30.0  # how long children get to end their batch after SIGTERM before they are killed


def cmd_projector(args: argparse.Namespace, settings_or_exit: Callable[[], Settings]) -> int:
    """Fold the log into the views database until stopped (or, with --until-caught-up, its end)."""
    if args.processes is not None and args.share:
        print("packager: --processes and --share are alternatives: give one", file=sys.stderr)
        return 2
    try:
        share = Share.parse(args.share) if args.share else WHOLE
    except ValueError as exc:
        print(f"packager: --share: {exc}", file=sys.stderr)
        return 2
    processes = 1 if args.processes is None else args.processes
    if processes < 1:
        print("packager: --processes needs a number of processes, 1 or more", file=sys.stderr)
        return 2
    settings = settings_or_exit()  # checked once here, before any child starts
    count = processes if processes > 1 else share.count
    if count > settings.partitions:
        print(
            f"packager: {count} shares of the log's partitions, but the topics have"
            f" PARTITIONS={settings.partitions}: a share would have nothing to read",
            file=sys.stderr,
        )
        return 2
    if processes > 1:
        return _run_children(args, processes)
    return _run_one(args, settings, share)


def _stop_before_starting(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # asked to stop while still importing: nothing was read or written yet


def _run_one(args: argparse.Namespace, settings: Settings, share: Share) -> int:
    # Until the event loop's handlers below replace these (the imports take seconds on a busy machine).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_starting)
    from packager.adapters.projector import run_projector
    from packager.core.logs import configure_logging

    configure_logging(settings)
    if args.metrics_port:
        import prometheus_client

        # Its own counters (records rejected, folds that raised, restarts, rebuilds), served from a thread.
        from packager.adapters.metrics import projector_registry

        try:
            prometheus_client.start_http_server(
                args.metrics_port, addr=settings.metrics_host, registry=projector_registry()
            )
        except OSError as exc:
            where = f"{settings.metrics_host}:{args.metrics_port}"
            print(f"packager projector: cannot serve metrics on {where} ({exc.strerror})", file=sys.stderr)
            return 2

    async def project() -> int:
        task = asyncio.create_task(run_projector(settings, until_caught_up=args.until_caught_up, share=share))
        loop = asyncio.get_running_loop()
        # SIGTERM stops between batches: a batch either committed with its positions or not at all.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return 0

    applied = asyncio.run(project())
    if args.until_caught_up:
        of = f" (share {share})" if share.count > 1 else ""
        print(f"{applied} events applied{of}", flush=True)
    return 0


def _run_children(args: argparse.Namespace, count: int) -> int:
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True  # `_stop_all` passes SIGTERM on, also to a child started while this ran

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for number in range(1, count + 1):
            if stopping:
                break
            command = [sys.executable, "-m", "packager", "projector", "--share", f"{number}/{count}"]
            if args.until_caught_up:
                command.append("--until-caught-up")
            if args.metrics_port:
                command += ["--metrics-port", str(args.metrics_port + number - 1)]
            # A session of its own: a terminal's Ctrl-C reaches this command, which passes SIGTERM on.
            children.append(
                subprocess.Popen(command, preexec_fn=_end_with(os.getpid()), start_new_session=True)
            )
        _wait(children, follow=not args.until_caught_up, stopping=lambda: stopping)
    finally:
        _stop_all(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _status(children, follow=not args.until_caught_up, stopped=stopping)


def _end_with(parent: int) -> Callable[[], None]:
    """What the child runs before the projector (Linux): SIGTERM it when this command dies, even by SIGKILL,
    so that no share goes on folding unsupervised; a command already gone by then ends it at once."""

    def in_child() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


def _wait(children: list[subprocess.Popen[bytes]], *, follow: bool, stopping: Callable[[], bool]) -> None:
    """Wait until every child has ended (at the log's end), or, when following, one has (said on stderr),
    or this command is asked to stop: `_stop_all` then stops the rest."""
    told: set[int] = set()
    while children and not stopping():
        ended = [
            (number, code) for number, child in enumerate(children, 1) if (code := child.poll()) is not None
        ]
        for number, code in ended:
            if number not in told and (code != 0 or follow):
                told.add(number)
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                print(
                    f"packager: projector share {number}/{len(children)} {how}", file=sys.stderr, flush=True
                )
        if len(ended) == len(children):
            return
        if follow and ended:
            print("packager: stopping the other shares", file=sys.stderr, flush=True)
            return
        time.sleep(0.2)


def _status(children: list[subprocess.Popen[bytes]], *, follow: bool, stopped: bool) -> int:
    """The command's exit status: the worst of the children's. A child ended by the SIGTERM this command
    passed on stopped as asked; unless the command was asked to stop, a share that ended while following,
    even with status 0, left the views behind: a failure."""

    def judged(code: int) -> int:
        if code == -signal.SIGTERM:
            return 0
        return code if stopped else code or int(follow)

    codes = [judged(child.returncode) for child in children if child.returncode is not None]
    worst = max(codes, key=abs, default=0)
    return worst if worst >= 0 else 128 - worst  # killed by signal N: 128 + N, as a shell says


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every child still running, then SIGKILL to those not ended within STOP_SECONDS."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for number, child in enumerate(children, 1):
        if child not in running:
            continue
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"packager: projector share {number}/{len(children)} did not stop within"
                f" {STOP_SECONDS:.0f} s: killing it",
                file=sys.stderr,
                flush=True,
            )
            child.kill()
            child.wait()
