"""Adapter: POSTing one signed webhook to one receiver, retried with backoff until it answers 2xx.

The session comes from `http_client.http_session`, so a receiver's host is checked again at connect time
(private addresses refused unless ALLOW_PRIVATE_URLS), as every other outgoing request of the workers is.
Redirects are not followed: a receiver answers where it was named, or the attempt counts as failed.
Nothing logged or returned here holds the URL beyond its host: a callback URL may carry a token.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from packager.adapters.http_client import AddressRefusedError
from packager.core import retrying
from packager.core.retrying import Backoff, GaveUp, Retryable, retry_after_seconds
from packager.domain.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signature_header

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """How one receiver answered: `status` of the 2xx when `ok`, else `error` in words."""

    ok: bool
    attempts: int
    status: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """The key, per-attempt timeout and retry window of every webhook (WEBHOOK_* settings)."""

    secret: str
    timeout: float
    retry_for: float
    max_delay: float
    first_delay: float = 1.0


def receiver_host(url: str) -> str:
    """The host (and port, when not the scheme's) of a receiver's URL: all that is ever logged of it."""
    try:
        parsed = URL(url)
        host = parsed.host or ""
        return f"{host}:{parsed.port}" if parsed.port and not parsed.is_default_port() else host
    except (ValueError, TypeError):
        return ""


async def post_webhook(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    event: str,
    delivery_id: str,
    policy: WebhookPolicy,
    slot: contextlib.AbstractAsyncContextManager[Any] | None = None,
) -> WebhookResult:
    """POST `body` to `url`, signed afresh on each attempt, until a 2xx or `policy.retry_for` runs out.

    `slot` bounds how many webhooks talk to receivers at once; it is held for one attempt, not between
    attempts. Cancellation (a revoked partition) passes through at once.
    """
    host = receiver_host(url)
    tries = 0

    async def attempt() -> int:
        nonlocal tries
        async with slot or contextlib.nullcontext():
            tries += 1
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "ckanpackager-webhooks",
                SIGNATURE_HEADER: signature_header(policy.secret, body),
                EVENT_HEADER: event,
                DELIVERY_HEADER: delivery_id,
            }
            try:
                async with session.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=policy.timeout),
                ) as response:
                    await response.read()
                    status = response.status
                    wait = retry_after_seconds(response.headers.get("Retry-After"))
            except AddressRefusedError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # The exception's text may quote the URL; its type says enough.
                raise Retryable(f"{host} could not be reached ({type(exc).__name__})") from None
        if not 200 <= status < 300:
            raise Retryable(f"{host} answered HTTP {status}", retry_after=wait)
        return status

    try:
        status = await retrying.call(
            f"webhook to {host}",
            attempt,
            backoff=Backoff(first=policy.first_delay, cap=policy.max_delay),
            deadline=time.monotonic() + policy.retry_for,
        )
    except AddressRefusedError as exc:
        return WebhookResult(ok=False, attempts=tries, error=str(exc))
    except GaveUp as exc:
        return WebhookResult(ok=False, attempts=exc.attempts, error=f"{exc.last} ({exc.reason})")
    return WebhookResult(ok=True, attempts=tries, status=status)
