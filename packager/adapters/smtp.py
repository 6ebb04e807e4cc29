"""Adapter: delivering a rendered message over SMTP with aiosmtplib, retrying while the server is down."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from packager.core import retrying
from packager.core.retrying import Backoff, Retryable
from packager.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of delivering one message."""

    ok: bool
    attempts: int
    error: str = ""


async def deliver(
    settings: Settings,
    message: EmailMessage,
    *,
    first_delay: float = 1.0,
    slot: contextlib.AbstractAsyncContextManager[Any] | None = None,
    before_retry: Callable[[], Awaitable[str]] | None = None,
) -> Delivery:
    """Send `message`; retry connection errors and 4xx answers for SMTP_RETRY_FOR seconds (core.retrying).

    Each attempt holds `slot` (when given) only while it talks to the server, never while it waits to
    retry: one address the server keeps deferring does not hold up the other emails. `before_retry`, asked
    before every attempt after the first, gives a reason to stop trying ("" to go on): the requester was
    erased during the retries, say.
    """
    try:
        async for attempt in retrying.attempts(
            "email delivery",
            # Waits start at `first_delay` and double up to SMTP_RETRY_MAX_DELAY, with jitter: the retries of
            # many emails spread out.
            backoff=Backoff(first=first_delay, cap=max(first_delay, settings.smtp_retry_max_delay)),
            deadline=time.monotonic() + settings.smtp_retry_for,
        ):
            with attempt:
                count = attempt.retry_state.attempt_number
                if count > 1 and before_retry is not None and (reason := await before_retry()):
                    return Delivery(ok=False, attempts=count - 1, error=reason)
                async with slot or contextlib.nullcontext():
                    error, permanent = await _attempt(settings, message)
                if not error:
                    return Delivery(ok=True, attempts=count)
                if permanent:
                    return Delivery(ok=False, attempts=count, error=error)
                raise Retryable(error)
    except retrying.GaveUp as exc:
        return Delivery(ok=False, attempts=exc.attempts, error=str(exc.last))
    raise AssertionError("unreachable")  # pragma: no cover - every attempt returns or raises


async def _attempt(settings: Settings, message: EmailMessage) -> tuple[str, bool]:
    """One try: ("", False) when sent, else (error, permanent)."""
    try:
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_login or None,
            password=settings.smtp_password or None,
            start_tls=settings.smtp_starttls,
            use_tls=settings.smtp_tls,
            timeout=settings.smtp_timeout,
        )
        return "", False
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        error = "; ".join(f"SMTP {r.code} {without_addresses(r.message)}" for r in exc.recipients)
        return error, bool(codes) and min(codes) >= 500  # permanent: every recipient refused
    except aiosmtplib.SMTPResponseException as exc:
        # 5xx: the address or message is refused
        return f"SMTP {exc.code} {without_addresses(exc.message)}", exc.code >= 500
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return without_addresses(f"{type(exc).__name__}: {exc}"), False


# An address as an SMTP server quotes it back ("<bob@example.org>: Recipient address rejected").
_ADDRESS = re.compile(r"<?[^\s<>@]+@[^\s<>]+>?")


def without_addresses(text: str) -> str:
    """An SMTP error without the email addresses in it: the error becomes `EmailFailed.error`, kept in the
    log for ever and shown on job pages, where an address would outlive the requester's erasure."""
    return _ADDRESS.sub("<address>", text)
