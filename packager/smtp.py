"""Adapter: delivering a rendered message over SMTP with aiosmtplib, retrying while the server is down."""

from __future__ import annotations

import asyncio
import logging
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


async def deliver(settings: Settings, message: EmailMessage, *, backoff: float = 1.0) -> Delivery:
    """Send `message`, retrying connection errors and 4xx answers with exponential backoff."""
    error = ""
    for attempt in range(1, settings.smtp_attempts + 1):
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
        except aiosmtplib.SMTPResponseException as exc:
            error = f"SMTP {exc.code} {exc.message}"
            if exc.code >= 500:
                return Delivery(ok=False, attempts=attempt, error=error)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < settings.smtp_attempts:
            delay = backoff * 2 ** (attempt - 1)
            log.warning("email delivery failed (%s); retry in %.1fs", error, delay)
            await asyncio.sleep(delay)
    return Delivery(ok=False, attempts=settings.smtp_attempts, error=error)
