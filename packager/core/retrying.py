"""The service's one retry policy: exponential backoff with jitter, `Retry-After` honoured, within a deadline.

Every adapter that tries again (the CKAN client, URL fetches, SMTP delivery, the Kafka readers and producers
of the agents and the read side) builds its loop here, on tenacity, instead of writing its own:

- the n-th wait is drawn at random between half and all of `min(first * 2**(n-1), cap)`, so the retries of
  many jobs hitting one failing portal spread out instead of arriving together;
- a failure raised as `Retryable(..., retry_after=s)` (an HTTP 429/503 with a `Retry-After` header) waits
  at least those `s` seconds, since the server said when it will answer again;
- a deadline (absolute, `time.monotonic()`) caps everything: a retry whose wait would end past it is not
  made, and the loop gives up at once with `GaveUp`, saying why. Builds run under JOB_TIMEOUT:
  `job_deadline()` enters it for the adapters a build calls (`current_deadline()`), so a server asking to
  wait longer than the job may still take fails the job at once, with a message saying so.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

log = logging.getLogger(__name__)
T = TypeVar("T")

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("retry_deadline", default=None)


class Retryable(Exception):
    """A failure worth another try; `retry_after` is the wait (seconds) the server asked for, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GaveUp(Exception):
    """The retries ended without success: `last` is the last failure, `attempts` how many were made.

    `at_deadline` says the deadline stopped them (`reason` then says why), not the number of attempts.
    """

    def __init__(self, last: BaseException, attempts: int, reason: str, *, at_deadline: bool) -> None:
        super().__init__(f"{last} ({reason})")
        self.last = last
        self.attempts = attempts
        self.reason = reason
        self.at_deadline = at_deadline


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: wait n is uniform in [b/2, b], b = min(first * 2**(n-1), cap)."""

    first: float = 0.5
    cap: float = 10.0

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The range the wait after failed attempt number `attempt` (1, 2, ...) is drawn from."""
        # The exponent is bounded so a loop retrying for days never overflows a float.
        base = min(self.first * 2 ** min(attempt - 1, 64), self.cap)
        return base / 2, base

    def delay(self, attempt: int) -> float:
        """A jittered wait after failed attempt number `attempt`."""
        low, high = self.bounds(attempt)
        return random.uniform(low, high)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """The wait a `Retry-After` header asks for (seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an obsolete date format without a zone: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def current_deadline() -> float | None:
    """The deadline (monotonic time) of the build this code runs in, if any."""
    return _deadline.get()


@contextlib.contextmanager
def job_deadline(seconds: float) -> Iterator[float]:
    """Retries made inside (in tasks started inside too) give up rather than wait past `seconds`."""
    at = time.monotonic() + seconds
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)


def _describe(exc: BaseException) -> str:
    """Our own failures read as sentences; a library's (a KafkaError, an OSError) keep their type."""
    return str(exc) if isinstance(exc, Retryable) else repr(exc)


def attempts(
    what: str,
    *,
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...] = (Retryable,),
    max_attempts: int | None = None,
    deadline: float | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> AsyncRetrying:
    """Attempts to run under the policy: `async for attempt in attempts(...): with attempt: ...`.

    `retry_on` failures are tried again until `max_attempts` (None: no limit) or `deadline` (monotonic
    time; None: none) says stop; then `GaveUp` is raised from the last failure. Any other exception
    (cancellation included) passes through at once. `on_retry(error, attempt, wait)` runs before each wait;
    by default the wait is logged as a warning naming `what`.
    """
    state: dict[str, str] = {}  # why `stop` ended the loop, for GaveUp

    def wait(rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        delay = backoff.delay(rs.attempt_number)
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            delay = max(delay, float(asked))
        return delay

    def stop(rs: RetryCallState) -> bool:
        if max_attempts is not None and rs.attempt_number >= max_attempts:
            state["reason"] = f"after {rs.attempt_number} attempts"
            return True
        if deadline is not None and time.monotonic() + rs.upcoming_sleep > deadline:
            state["deadline"] = "yes"
            exc = rs.outcome.exception() if rs.outcome is not None else None
            asked = getattr(exc, "retry_after", None)
            if asked is not None and asked >= rs.upcoming_sleep:
                state["reason"] = (
                    f"the server asked to be retried after {asked:g} seconds, past the time allowed"
                )
            else:
                state["reason"] = f"no time left to try again after {rs.attempt_number} attempts"
            return True
        return False

    def before_sleep(rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        assert exc is not None
        if on_retry is not None:
            on_retry(exc, rs.attempt_number, rs.upcoming_sleep)
        else:
            log.warning(
                "%s failed (%s); attempt %d, retry in %.1fs",
                what,
                _describe(exc),
                rs.attempt_number,
                rs.upcoming_sleep,
            )

    def give_up(rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        assert exc is not None
        reason = state.get("reason", "gave up")
        raise GaveUp(exc, rs.attempt_number, reason, at_deadline="deadline" in state) from exc

    # A new AsyncRetrying per loop: tenacity keeps a loop's state on the object.
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait,
        stop=stop,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )


async def call(
    what: str,
    fn: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...] = (Retryable,),
    max_attempts: int | None = None,
    deadline: float | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """Await `fn()` under the policy (see `attempts`); its result, or `GaveUp`."""
    async for attempt in attempts(
        what,
        backoff=backoff,
        retry_on=retry_on,
        max_attempts=max_attempts,
        deadline=deadline,
        on_retry=on_retry,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
