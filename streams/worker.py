"""The worker process: Faust's worker, with a graceful drain of running builds on SIGTERM and SIGINT.

Faust's own handling of these signals stops the app at once: agents are cancelled and the offsets of the
records they held are committed. Here the first signal drains the build pools first (no new build, running
ones get DRAIN_TIMEOUT, the rest are released to other workers with `PackageReleased`), then stops the
worker as Faust would. A second signal while draining stops at once; builds still running are released
on the way out all the same.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import faust

from streams.builds import BuildPool

log = logging.getLogger(__name__)


class Worker(faust.Worker):  # type: ignore[misc]
    """A Faust worker that drains `pools` before it stops on SIGTERM or SIGINT."""

    def __init__(self, *args: Any, pools: list[BuildPool], **kwargs: Any) -> None:
        self.pools = pools
        self._drain: asyncio.Future[None] | None = None
        super().__init__(*args, **kwargs)

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
