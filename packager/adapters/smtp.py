"""Adapter: delivering a rendered message over SMTP with aiosmtplib, retrying while the server is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib

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
) -> Delivery:
    """Send `message`; retry connection errors and 4xx answers with backoff for `SMTP_RETRY_FOR` seconds.

    Each attempt holds `slot` (when given) only while it talks to the server, never while it waits to
    retry: one address the server keeps deferring does not hold up the other emails.
    """
    deadline = time.monotonic() + settings.smtp_retry_for
    delay, attempt, error = first_delay, 0, ""
    while True:
        attempt += 1
        async with slot or contextlib.nullcontext():
            error, permanent = await _attempt(settings, message)
        if not error:
            return Delivery(ok=True, attempts=attempt)
        if permanent or time.monotonic() + delay > deadline:
            return Delivery(ok=False, attempts=attempt, error=error)
        log.warning("email delivery failed (%s); attempt %d, retry in %.1fs", error, attempt, delay)
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # jitter: retries of many emails spread out
        delay = min(delay * 2, settings.smtp_retry_max_delay)


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
        error = "; ".join(f"SMTP {r.code} {r.message} ({r.recipient})" for r in exc.recipients)
        return error, bool(codes) and min(codes) >= 500  # permanent: every recipient refused
    except aiosmtplib.SMTPResponseException as exc:
        return f"SMTP {exc.code} {exc.message}", exc.code >= 500  # 5xx: the address or message is refused
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}", False
