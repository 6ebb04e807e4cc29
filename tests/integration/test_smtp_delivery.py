"""Delivery against a real SMTP server (aiosmtpd): retries while it is down, and permanent refusals."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from packager.adapters.smtp import deliver
from packager.core.settings import load_settings
from packager.dev.kafka import free_port
from tests.integration.support import SmtpSink, smtp_sink


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ckanpackager@localhost"
    msg["To"] = "r@example.org"
    msg["Subject"] = "test"
    msg.set_content("hello")
    return msg


async def test_a_server_that_comes_back_gets_the_message_once() -> None:
    port = free_port()
    settings = load_settings(
        {}, smtp_host="127.0.0.1", smtp_port=port, smtp_retry_for=30, smtp_retry_max_delay=0.5
    )
    delivery = asyncio.create_task(deliver(settings, message(), first_delay=0.1))
    await asyncio.sleep(2.0)  # the server is down for two seconds
    assert not delivery.done()
    with smtp_sink(port) as sink:
        result = await asyncio.wait_for(delivery, 10)
        await asyncio.sleep(0.5)
        assert len(sink.messages) == 1
    assert result.ok and result.attempts > 1


async def test_retries_stop_after_the_configured_time() -> None:
    settings = load_settings({}, smtp_host="127.0.0.1", smtp_port=free_port(), smtp_retry_for=1.5)
    started = time.monotonic()
    result = await deliver(settings, message(), first_delay=0.2)
    assert not result.ok and result.attempts >= 2
    assert "ConnectionRefusedError" in result.error or "SMTPConnect" in result.error
    assert time.monotonic() - started < 5


class Refusing(SmtpSink):
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        # As real servers do, the refusal quotes the address back.
        return f"550 5.1.1 <{address}>: Recipient address rejected: No such mailbox"


async def test_a_permanent_refusal_is_not_retried() -> None:
    port = free_port()
    handler = Refusing(port=port)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = load_settings({}, smtp_host="127.0.0.1", smtp_port=port, smtp_retry_for=30)
        result = await deliver(settings, message(), first_delay=0.1)
    finally:
        controller.stop()
    assert not result.ok and result.attempts == 1 and "550" in result.error
    # The error becomes EmailFailed.error (the log, job pages): it must not hold the address.
    assert "r@example.org" not in result.error and "Recipient address rejected" in result.error
