"""`packager dev up` says "up" only once a request would succeed, says what it waits for, and gives up."""

from __future__ import annotations

import pytest

from packager.dev import readiness
from packager.dev.readiness import StackNotReady, wait_for_stack


def test_it_waits_until_nothing_is_missing_and_says_what_it_waits_for() -> None:
    reasons = iter(
        ["ingress not ready: Kafka is unreachable"] * 2
        + ["ingress /status answers 503: GroupCoordinatorNotAvailableError"] * 3
        + [None]
    )
    said: list[str] = []
    wait_for_stack(lambda: next(reasons), lambda: None, timeout=30, say=said.append, poll=0)
    assert [line.split(": ", 1)[1] for line in said] == [
        "ingress not ready: Kafka is unreachable",
        "ingress /status answers 503: GroupCoordinatorNotAvailableError",
    ]


def test_it_gives_up_at_the_deadline_naming_what_is_missing() -> None:
    with pytest.raises(StackNotReady, match=r"not ready within 0s: no worker has joined"):
        wait_for_stack(
            lambda: "no worker has joined the consumer group yet", lambda: None, timeout=0, say=print
        )


def test_it_stops_waiting_when_a_process_ends() -> None:
    with pytest.raises(StackNotReady, match="the worker exited with status 1"):
        wait_for_stack(
            lambda: "worker not ready", lambda: "the worker exited with status 1", timeout=30, say=print
        )


def test_a_silent_part_is_named() -> None:
    stack = readiness.StackAddresses(
        ingress="http://127.0.0.1:9", secret="s" * 20, worker_health=None, mail_port=9
    )
    problem = readiness.stack_problem(stack)
    assert problem is not None and problem.startswith("ingress not ready: no answer")
