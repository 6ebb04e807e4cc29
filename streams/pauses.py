"""Noticing that this process was frozen (SIGSTOP, a paused VM) for longer than the group's session.

While a worker is frozen past SESSION_TIMEOUT, the broker gives its partitions to other workers. When it
runs again it still holds records it fetched before, and until its consumer learns of the new assignment
it would handle them as if they were still its own: a second planning, a second email. A `PauseWatch`
tells such a worker that it was frozen, so that it leaves those records to their new owners.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

TICK = 0.5


class PauseWatch:
    """Compares the loop's clock with the last tick of a heartbeat; a gap past `limit` means a freeze."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._tick: float | None = None

    def beat(self) -> float:
        """Record a heartbeat; return how long it was since the previous one (0 for the first)."""
        now = asyncio.get_running_loop().time()
        gap = 0.0 if self._tick is None else now - self._tick
        self._tick = now
        if gap > self.limit:
            log.warning("this process was paused for %.0fs, longer than the session timeout", gap)
        return gap

    def frozen(self) -> bool:
        """True when the last heartbeat is older than `limit`: the process was paused, not beaten since."""
        if self._tick is None:
            return False
        return asyncio.get_running_loop().time() - self._tick > self.limit
