"""A worker whose table recovery stops moving asks its group to rebalance.

After an assignment, Faust restores the worker's tables from their changelogs and only then resumes the
stream partitions. In the chaos campaign a worker frozen past its session timeout came back during a
rebalance, a broker was killed two seconds later, and faust-streaming 0.15.3's recovery then waited for
changelog records that never came: "No event received for active tp ... since recovery start" for nearly
three minutes, every request on its two requests partitions unplanned, until another member's departure
rebalanced the group and the recovery finished at once. The worker stayed in the group the whole time
(its heartbeats went on), so no other member could take the partitions over.

`RecoveryWatch` is a pure state machine over what the worker can observe of its recovery: whether it is
restoring tables with changelog records still to read, and the offsets read so far. When those stay the
same for `stall_after` seconds it says to rejoin the group; a rebalance restarts the recovery from the
offsets the tables already hold. It says so again after each further `stall_after` without progress (a
broker away for good keeps a recovery waiting, and a rejoin then costs nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import cast

import faust
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)

# Longer than any recovery this service's tables need when records arrive (they are small and changelogs
# compacted), and short enough that a stuck partition's requests wait a minute, not for ever.
RECOVERY_STALL = 60.0
CHECK_EVERY = 5.0


@dataclass
class RecoveryWatch:
    """Decides, tick by tick, whether a recovery has stalled long enough to ask for a rebalance."""

    stall_after: float = RECOVERY_STALL
    _marker: Hashable = None
    _since: float | None = None
    rejoins: int = 0

    def observe(self, now: float, recovering: bool, marker: Hashable) -> bool:
        """True when the group should be asked to rebalance now.

        `marker` is anything that changes when the recovery makes progress (a new generation, offsets read).
        """
        if not recovering:
            self._since = None
            return False
        if self._since is None or marker != self._marker:
            self._marker, self._since = marker, now
            return False
        if now - self._since < self.stall_after:
            return False
        self._since = now  # the next request, if any, one more stall period from now
        self.rejoins += 1
        return True


def _recovery(app: faust.App) -> Recovery:
    """The recovery of `app`'s tables (the manager's interface type does not name it)."""
    return cast(TableManager, app.tables).recovery


def recovery_marker(app: faust.App) -> Hashable:
    """What changes when the recovery of `app`'s tables moves on."""
    recovery = _recovery(app)
    return (
        app.consumer_generation_id,
        recovery.in_recovery,
        tuple(sorted((tp, offset) for tp, offset in recovery.active_offsets.items())),
        tuple(sorted((tp, offset) for tp, offset in recovery.standby_offsets.items())),
    )


def recovering(app: faust.App) -> bool:
    """True while `app` restores its tables and changelog records are still to be read."""
    recovery = _recovery(app)
    return bool(recovery.in_recovery) and recovery.active_remaining_total() > 0


def request_rejoin(app: faust.App) -> None:
    """Ask the group coordinator for a rebalance, on the consumer's own thread and event loop.

    faust-streaming runs aiokafka's consumer in a thread of its own (`AIOKafkaConsumerThread`); its
    coordinator's futures belong to that thread's loop.
    """
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._ensure_consumer()
    thread.thread_loop.call_soon_threadsafe(consumer._coordinator.request_rejoin)


def add_recovery_watch(
    app: faust.App,
    clock: Callable[[], float],
    rejoin: Callable[[faust.App], None] = request_rejoin,
    watch: RecoveryWatch | None = None,
) -> RecoveryWatch:
    """Check `app`'s recovery every CHECK_EVERY seconds; ask for a rebalance when it has stalled."""
    watch = watch or RecoveryWatch()

    @app.timer(interval=CHECK_EVERY)
    async def recovery_watch() -> None:
        if not watch.observe(clock(), recovering(app), recovery_marker(app)):
            return
        recovery = _recovery(app)
        log.warning(
            "table recovery made no progress for %.0fs (%d changelog records still to read); "
            "asking the group to rebalance",
            watch.stall_after,
            recovery.active_remaining_total(),
        )
        try:
            rejoin(app)
        except (AttributeError, RuntimeError) as exc:  # the consumer is stopping or not started yet
            log.warning("could not ask the group to rebalance: %r", exc)

    return watch
