"""PauseWatch: a process frozen for longer than the session knows it when it runs again."""

from __future__ import annotations

import time

import pytest

from streams.pauses import PauseWatch


async def test_a_gap_between_heartbeats_longer_than_the_limit_is_a_freeze(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = PauseWatch(limit=0.05)
    assert not watch.frozen()  # never beaten: nothing to compare with
    assert watch.beat() == 0.0
    assert not watch.frozen()
    time.sleep(0.1)  # noqa: ASYNC251 - the loop itself is held, as SIGSTOP holds the process
    assert watch.frozen()
    assert watch.beat() > 0.05
    assert "paused" in caplog.text
    assert not watch.frozen()  # beating again: the worker runs normally from here
