"""Adapter: delivering a rendered message over SMTP with aiosmtplib, retrying while the server is down."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib

from packager.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of delivering one message."""

    ok: bool
    attempts: int
    error: str = ""


async def deliver(settings: Settings, message: EmailMessage, *, first_delay: float = 1.0) -> Delivery:
    """Send `message`; retry connection errors and 4xx answers with backoff for `SMTP_RETRY_FOR` seconds."""
    deadline = time.monotonic() + settings.smtp_retry_for
    delay, attempt, error = first_delay, 0, ""
    while True:
        attempt += 1
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
            return Delivery(ok=True, attempts=attempt)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            error = "; ".join(f"SMTP {r.code} {r.message} ({r.recipient})" for r in exc.recipients)
            if codes and min(codes) >= 500:  # permanent: every recipient refused
                return Delivery(ok=False, attempts=attempt, error=error)
        except aiosmtplib.SMTPResponseException as exc:
            error = f"SMTP {exc.code} {exc.message}"
            if exc.code >= 500:  # permanent: the address or the message is refused
                return Delivery(ok=False, attempts=attempt, error=error)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + delay > deadline:
            return Delivery(ok=False, attempts=attempt, error=error)
        log.warning("email delivery failed (%s); attempt %d, retry in %.1fs", error, attempt, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.smtp_retry_max_delay)
