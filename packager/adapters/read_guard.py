"""Adapter: the read side's strict boundary and its supervision, shared by the ingress's read side and any
projector that folds the log.

- `decode_record`: the typed decode of one record; a record that fails is logged, counted
  (`packager_records_rejected_total{topic,reason}`) and skipped. The read side never writes to the log: the
  workers' agent owning the topic dead-letters the same record (same decode, same verdict) with one
  `RecordRejected`, however many ingress processes and projectors read it (docs/events.md).
- `FoldHealth`: what went wrong while folding (the projector publishes it in the views' `meta` table, where
  the ingress's readiness reads it). A fold that raised is logged with its event (topic,
  partition, offset, type, job id) and counted, and stays reported (`problem()`, which readiness shows as
  "degraded") for as long as the process runs; the same for the last time the reading loop stopped.
- `supervise`: run the reading loop for ever, restarting it with backoff and a log line when it fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from packager.adapters import metrics
from packager.adapters.kafka_log import LogReplaced
from packager.core import retrying
from packager.core.errors import EventDecodeError
from packager.domain.events import Envelope, decode

log = logging.getLogger(__name__)

RESTART_BACKOFF = retrying.Backoff(first=1.0, cap=30.0)


def decode_record(topic: str, partition: int, offset: int, value: bytes | None) -> Envelope | None:
    """The record's event, or None (logged and counted) when it is not a valid one."""
    try:
        return decode(value if value is not None else b"")
    except EventDecodeError as exc:
        metrics.RECORDS_REJECTED.labels(topic, exc.reason).inc()
        log.error(
            "rejected record at %s:%d@%d (%s): %s",
            topic,
            partition,
            offset,
            exc.reason,
            exc.message,
            extra={"topic": topic, "partition": partition, "offset": offset, "reason": exc.reason},
        )
        return None


@dataclass
class FoldHealth:
    """Fold failures and stops of a read side, as readiness reports them."""

    fold_failures: int = 0
    last_fold_failure: str = ""
    stopped: str = ""  # why the reading loop last stopped, until it runs again
    restarts: int = 0

    def fold_failed(self, topic: str, partition: int, offset: int, event: Envelope, exc: Exception) -> None:
        """Log a fold that raised, with its event; the caller keeps the view's last good state."""
        where = f"{topic}:{partition}@{offset}"
        self.fold_failures += 1
        self.last_fold_failure = (
            f"{event.type} of job {event.job_id} at {where}: {type(exc).__name__}: {str(exc)[:200]}"
        )
        metrics.FOLD_FAILURES.labels(topic, event.type).inc()
        log.error(
            "the fold of %s (job %s) at %s raised; the view keeps its state without it",
            event.type,
            event.job_id,
            where,
            exc_info=exc,
            extra={
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "type": event.type,
                "job_id": event.job_id,
            },
        )

    def running(self) -> None:
        """The reading loop (re)started and reads the log."""
        self.stopped = ""

    def problem(self) -> str | None:
        """Why the view may be wrong or stale, or None when nothing went wrong."""
        reasons = []
        if self.stopped:
            reasons.append(f"the read side stopped ({self.stopped}) and is being restarted")
        if self.fold_failures:
            reasons.append(
                f"{self.fold_failures} event(s) could not be folded, the view lacks them; "
                f"the latest: {self.last_fold_failure}"
            )
        return "; ".join(reasons) or None


async def supervise(
    what: str,
    run: Callable[[], Awaitable[object]],
    health: FoldHealth,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Await `run()` again whenever it fails (it is not meant to return), with backoff and a log line.

    The backoff (the project's policy: exponential, jittered, capped) starts again from its first step once
    a run got as far as reading the log (`health.running()`), so a failure after hours of good work is
    retried at once, and only a loop that keeps failing waits longer and longer. `on_stop` (best effort: its
    own failure is only logged) publishes the stop, e.g. where readiness reads it.
    """
    attempt = 0
    while True:
        try:
            await run()
            raise RuntimeError("it returned")  # a reading loop never ends by itself
        except Exception as exc:  # anything, so the read side never dies silently; cancellation passes
            attempt = attempt + 1 if health.stopped else 1
            wait = RESTART_BACKOFF.delay(attempt)
            health.stopped = f"{type(exc).__name__}: {str(exc)[:200]}"
            health.restarts += 1
            metrics.READ_SIDE_RESTARTS.inc()
            # A lost broker or a replaced log is an operations matter; anything else is a bug: its traceback.
            expected = isinstance(exc, KafkaError | OSError | LogReplaced)
            log.error(
                "%s stopped (%s); restarting it in %.1fs (restart %d)",
                what,
                health.stopped,
                wait,
                health.restarts,
                exc_info=None if expected else exc,
            )
            if on_stop is not None:
                try:
                    await on_stop()
                except Exception:  # what failed may well be the place the stop is published to
                    log.debug("could not publish that %s stopped", what, exc_info=True)
        await asyncio.sleep(wait)
