"""When a worker asks its group to rebalance: its table recovery stopped moving (streams.recovery_watch)."""

from __future__ import annotations

from streams.recovery_watch import RecoveryWatch


def test_a_recovery_that_moves_is_left_alone_however_long_it_takes() -> None:
    watch = RecoveryWatch(stall_after=60.0)
    asked = [watch.observe(t, recovering=True, marker=("offsets", t)) for t in range(0, 600, 5)]
    assert not any(asked)


def test_a_recovery_stuck_for_the_stall_period_asks_once_then_once_per_further_period() -> None:
    watch = RecoveryWatch(stall_after=60.0)
    asked = [t for t in range(0, 200, 5) if watch.observe(float(t), recovering=True, marker="same")]
    assert asked == [60, 120, 180]
    assert watch.rejoins == 3


def test_progress_or_the_end_of_recovery_restarts_the_clock() -> None:
    watch = RecoveryWatch(stall_after=60.0)
    assert not watch.observe(0.0, recovering=True, marker="a")
    assert not watch.observe(55.0, recovering=True, marker="a")
    assert not watch.observe(58.0, recovering=True, marker="b")  # a record read: progress
    assert not watch.observe(110.0, recovering=True, marker="b")
    assert not watch.observe(115.0, recovering=False, marker="b")  # done
    assert not watch.observe(200.0, recovering=True, marker="b")  # a new recovery starts its own clock
    assert watch.observe(260.0, recovering=True, marker="b")


def test_a_worker_not_recovering_is_never_asked_to_rejoin() -> None:
    watch = RecoveryWatch(stall_after=1.0)
    assert not any(watch.observe(float(t), recovering=False, marker="same") for t in range(100))
