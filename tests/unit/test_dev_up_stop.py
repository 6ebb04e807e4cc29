"""`packager dev up`'s stop: in order, and a Ctrl-C during it is answered (what it waits for; then a kill)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import cast

from packager.dev.stack_stop import Child, StopRequests, stop_children

DRAIN = 20.0


@dataclass
class Clock:
    """Fake time: advanced by `sleep`, which also delivers the Ctrl-Cs scheduled for the times it passes."""

    requests: StopRequests
    presses: list[float] = field(default_factory=list)  # when further Ctrl-Cs arrive, in seconds
    now: float = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        while self.presses and self.presses[0] <= self.now:
            self.presses.pop(0)
            self.requests.handle(signal.SIGINT, None)


@dataclass
class FakeProc:
    """A child that exits `exits_after` fake seconds after SIGTERM (never, with None), at once on SIGKILL."""

    name: str
    clock: Clock
    journal: list[str]
    exits_after: float | None = 0.5
    ends_at: float | None = None
    returncode: int | None = None

    def terminate(self) -> None:
        self.journal.append(f"TERM {self.name}")
        if self.exits_after is not None:
            self.ends_at = self.clock.now + self.exits_after

    def kill(self) -> None:
        self.journal.append(f"KILL {self.name}")
        self.ends_at = self.clock.now

    def poll(self) -> int | None:
        if self.returncode is None and self.ends_at is not None and self.clock.now >= self.ends_at:
            self.returncode = 0
        return self.returncode

    def wait(self) -> int:
        assert self.poll() is not None, f"{self.name} reaped while running"
        return cast(int, self.returncode)


def stack(
    requests: StopRequests, presses: list[float], worker_exits_after: float | None
) -> tuple[Clock, list[str], list[Child], Child]:
    clock = Clock(requests, presses)
    journal: list[str] = []

    def child(name: str, exits_after: float | None = 0.5) -> Child:
        proc = FakeProc(name, clock, journal, exits_after)
        return Child(name, cast("subprocess.Popen[bytes]", proc))

    services = [child("projector"), child("ingress"), child("worker", worker_exits_after)]
    return clock, journal, services, child("mailsink")


def stop(
    requests: StopRequests, presses: list[float], worker_exits_after: float | None
) -> tuple[list[str], list[str]]:
    """Stop a fake stack whose worker drains for `worker_exits_after` s; (what was said, what was done)."""
    clock, journal, services, mailsink = stack(requests, presses, worker_exits_after)
    said: list[str] = []
    stop_children(
        services,
        mailsink,
        requests,
        drain_timeout=DRAIN,
        lease_time=30,
        say=said.append,
        sleep=clock.sleep,
        clock=lambda: clock.now,
    )
    return said, journal


def test_without_another_ctrl_c_it_says_nothing_and_stops_the_mail_sink_after_the_worker_drained() -> None:
    said, journal = stop(StopRequests(count=1), [], worker_exits_after=12)
    assert said == []
    assert journal == ["TERM projector", "TERM ingress", "TERM worker", "TERM mailsink"]


def test_a_second_ctrl_c_says_what_it_waits_for_and_a_third_kills_what_still_runs() -> None:
    said, journal = stop(StopRequests(count=1), [3.0, 8.0], worker_exits_after=None)
    first, second = said
    assert first.startswith("Still stopping: the worker is finishing its builds (up to 17 s more)")
    assert "Ctrl-C again to kill it now" in first
    assert first.endswith("built again at the next start).")
    assert second.startswith("Killed the worker and mail sink (SIGKILL). The worker's unfinished builds")
    assert "built again once the stack runs again" in second and "LEASE_TIME, 30 s" in second
    # Only the processes still running are killed, each once, and no later than the third Ctrl-C.
    assert journal == [
        "TERM projector",
        "TERM ingress",
        "TERM worker",
        "KILL worker",
        "KILL mailsink",
    ]


def test_ctrl_cs_pressed_while_the_stack_was_starting_count_as_pressed_during_the_stop() -> None:
    said, journal = stop(StopRequests(count=3), [], worker_exits_after=None)
    # Nothing said first: the third Ctrl-C was already pressed. Everything still running is killed.
    assert [line.split(" (")[0] for line in said] == ["Killed the projector, ingress, worker and mail sink"]
    assert not [entry for entry in journal if entry.startswith("TERM mailsink")]


def test_a_stop_after_a_child_exited_answers_the_first_ctrl_c() -> None:
    said, journal = stop(StopRequests(count=0), [1.0], worker_exits_after=5)
    assert len(said) == 1 and said[0].startswith("Still stopping: the worker is finishing its builds")
    assert not [entry for entry in journal if entry.startswith("KILL")]


def test_a_worker_past_its_drain_is_said_to_be_closing_and_killed_after_the_grace() -> None:
    said, journal = stop(StopRequests(count=1), [DRAIN + 2], worker_exits_after=None)
    assert said == [
        "Still stopping: the worker is closing (killed in 13 s at most if it hangs). "
        "Ctrl-C again to kill it now (the builds it has not finished are then built again at "
        "the next start)."
    ]
    assert journal[-2:] == ["KILL worker", "TERM mailsink"]


def test_the_kill_reaches_a_real_process_that_ignores_sigterm() -> None:
    ignoring = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert ignoring.stdout is not None
        ignoring.stdout.readline()  # its SIGTERM handler is set
        requests = StopRequests(count=1)
        said: list[str] = []

        def sleep(seconds: float) -> None:
            requests.handle(signal.SIGINT, None)  # Ctrl-C, Ctrl-C
            time.sleep(seconds)

        started = time.monotonic()
        stop_children(
            [Child("worker", ignoring)],
            None,
            requests,
            drain_timeout=DRAIN,
            lease_time=30,
            say=said.append,
            sleep=sleep,
        )
        assert ignoring.returncode == -signal.SIGKILL
        assert time.monotonic() - started < 5
        assert [line.split(" ")[0] for line in said] == ["Still", "Killed"]
    finally:
        if ignoring.poll() is None:
            ignoring.kill()
            ignoring.wait()
        if ignoring.stdout is not None:
            ignoring.stdout.close()
