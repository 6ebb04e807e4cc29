"""How `packager dev up` stops the processes it started, and what a Ctrl-C during that stop does.

The projector, the ingress and the worker get SIGTERM first (the worker drains its builds for up to
DRAIN_TIMEOUT and sends their emails), the mail sink after them. Such a stop can take twenty seconds and must
not look hung: a Ctrl-C during it says what the stack is still waiting for and for how long at most; the next
one kills the processes still running (SIGKILL, through the handles of the processes this stack started,
never a process found by name). A build killed that way ends no job: once the stack runs again and the
build's lease has run out, the job is queued and built again (docs/delivery.md, "Stops, one by one").

The signal handler only counts; the stop loop reads the count between short sleeps, so nothing is printed
from inside a handler.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

POLL = 0.2  # seconds between looks at the children and at the Ctrl-C count


@dataclass
class StopRequests:
    """Ctrl-C and SIGTERM received so far; `handle` is the signal handler."""

    count: int = 0

    def handle(self, signum: int, frame: object) -> None:
        """Count one request; the code that waits reads the count."""
        self.count += 1

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.count > 0


@dataclass(frozen=True)
class Child:
    """A process the stack started, by the name its log file has."""

    name: str
    proc: subprocess.Popen[bytes]

    def running(self) -> bool:
        """Whether it has not ended yet (reaps it if it has)."""
        return self.proc.poll() is None


def _listed(names: Sequence[str]) -> str:
    """`names` as a user reads them ("mailsink" is the mail sink's log name)."""
    said = ["mail sink" if n == "mailsink" else n for n in names]
    return said[0] if len(said) == 1 else f"{', '.join(said[:-1])} and {said[-1]}"


def still_stopping(running: Sequence[str], elapsed: float, drain_timeout: float, grace: float) -> str:
    """The line a Ctrl-C during the stop prints: what is awaited, for how long at most, what another does."""
    if "worker" not in running:
        return f"Still stopping: waiting for the {_listed(running)} to exit. Ctrl-C again to kill them now."
    if elapsed < drain_timeout:
        waiting = (
            f"the worker is finishing its builds (up to {max(1, round(drain_timeout - elapsed))} s more) "
            "and sending their emails"
        )
    else:
        waiting = f"the worker is closing (killed in {max(1, round(grace - elapsed))} s at most if it hangs)"
    return (
        f"Still stopping: {waiting}. Ctrl-C again to kill it now "
        "(the builds it has not finished are then built again at the next start)."
    )


def killed_line(names: Sequence[str], lease_time: float) -> str:
    """The line printed when a further Ctrl-C kills what is still running."""
    line = f"Killed the {_listed(names)} (SIGKILL)."
    if "worker" in names:
        line += (
            " The worker's unfinished builds are built again once the stack runs again and their lease "
            f"(LEASE_TIME, {lease_time:g} s) has run out; an email it was sending may arrive twice."
        )
    return line


class _Stop:
    """One stop of the stack's children: what was said and done so far."""

    def __init__(
        self,
        children: Sequence[Child],
        requests: StopRequests,
        drain_timeout: float,
        lease_time: float,
        say: Callable[[str], None],
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.children, self.requests, self.say, self.sleep, self.clock = children, requests, say, sleep, clock
        self.drain_timeout, self.lease_time = drain_timeout, lease_time
        self.grace = drain_timeout + 15
        # A stop started by Ctrl-C counts that one; any more, even pressed while the stack was starting,
        # count as pressed during the stop (the second says what it waits for, the third kills).
        self.before = min(requests.count, 1)
        self.began = clock()
        self.warned = self.killed = False

    def wait_for(self, group: Sequence[Child]) -> None:
        """Wait until `group` has ended, answering the Ctrl-Cs that arrive meanwhile."""
        deadline = self.clock() + self.grace
        while left := [c for c in group if c.running()]:
            extra = self.requests.count - self.before
            if extra >= 2 and not self.killed:
                self.killed = True
                victims = [c for c in self.children if c.running()]
                for child in victims:
                    child.proc.kill()
                self.say(killed_line([c.name for c in victims], self.lease_time))
            elif extra == 1 and not self.warned:
                self.warned = True
                elapsed = self.clock() - self.began
                self.say(still_stopping([c.name for c in left], elapsed, self.drain_timeout, self.grace))
            elif self.clock() >= deadline:
                for child in left:
                    child.proc.kill()
            self.sleep(POLL)
        for child in group:
            child.proc.wait()


def stop_children(
    services: Sequence[Child],
    mailsink: Child | None,
    requests: StopRequests,
    *,
    drain_timeout: float,
    lease_time: float,
    say: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """SIGTERM the services, wait for them, then the mail sink; a Ctrl-C meanwhile says why, the next kills.

    The first request started the stop; each further one (the second Ctrl-C, the third) is answered here.
    A child still running `DRAIN_TIMEOUT + 15` s after its SIGTERM is killed as well, Ctrl-C or not.
    """
    children = [*services, *([mailsink] if mailsink is not None else [])]
    stop = _Stop(children, requests, drain_timeout, lease_time, say, sleep, clock)
    for child in services:
        if child.running():
            child.proc.terminate()
    stop.wait_for(services)
    if mailsink is not None:
        if mailsink.running():
            mailsink.proc.terminate()
        stop.wait_for([mailsink])
