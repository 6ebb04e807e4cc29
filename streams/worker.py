"""The worker process: Faust's worker, with a graceful drain of running builds on SIGTERM and SIGINT.

Faust's own handling of these signals stops the app at once: agents are cancelled and the offsets of the
records they held are committed. Here the first signal drains the build pools first (no new build, running
ones get DRAIN_TIMEOUT, the rest are released to other workers with `PackageReleased`), then stops the
worker as Faust would. A second signal while draining stops at once; builds still running are released
on the way out all the same.

A worker whose broker was wiped under it (`packager dev kafka stop --wipe`, recreated topics) cannot go on:
its tables hold positions past the end of the new, empty changelogs. Faust then stops it (exit status 1)
with a ConsistencyError that speaks of RocksDB; the worker says in plain words what happened and that a
restart rebuilds its tables from the new log.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import faust
from faust.exceptions import ConsistencyError

from streams.builds import BuildPool

log = logging.getLogger(__name__)


def wiped_log_explanation(reason: BaseException | None) -> str | None:
    """What to tell the operator when the worker stops because its log was wiped, else None."""
    if not isinstance(reason, ConsistencyError):
        return None
    return (
        "The Kafka log was wiped or its topics recreated while this worker ran: a table's changelog now "
        "ends before the position the worker had reached, so it stops (exit status 1). Start it again: it "
        f"rebuilds its tables from the new log. Faust's words: {reason}"
    )


class Worker(faust.Worker):
    """A Faust worker that drains `pools` before it stops on SIGTERM or SIGINT."""

    def __init__(self, *args: Any, pools: list[BuildPool], **kwargs: Any) -> None:
        self.pools = pools
        self._drain: asyncio.Future[None] | None = None
        super().__init__(*args, **kwargs)

    def on_worker_shutdown(self) -> None:
        """Say plainly why the worker stops when its log was wiped under it."""
        explanation = wiped_log_explanation(self.crash_reason)
        if explanation is not None:
            log.critical("%s", explanation)
        super().on_worker_shutdown()

    def install_signal_handlers(self) -> None:
        """Faust's handlers, with SIGTERM and SIGINT replaced by a drain first."""
        super().install_signal_handlers()
        self.loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, signal.SIGTERM)
        self.loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, signal.SIGINT)

    def _on_stop_signal(self, signum: signal.Signals) -> None:
        if self._drain is None:
            log.info("%s received: draining builds, then stopping", signum.name)
            self._drain = asyncio.ensure_future(self._drain_then_stop(signum))
        else:
            log.warning("%s received again: stopping now; running builds are released", signum.name)
            self._stop_now(signum)

    async def _drain_then_stop(self, signum: signal.Signals) -> None:
        try:
            await asyncio.gather(*(pool.drain() for pool in self.pools))
        finally:
            self._stop_now(signum)

    def _stop_now(self, signum: signal.Signals) -> None:
        # mode's own signal path (mode-streaming 0.7): stop the services, then end the loop.
        if signum == signal.SIGTERM:
            self._on_sigterm()
        else:
            self._on_sigint()
