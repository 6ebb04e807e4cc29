"""Delivery against a real SMTP server (aiosmtpd): retries while it is down, and permanent refusals."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from packager.adapters.requester_keys import InMemoryRequesterKeys
from packager.adapters.smtp import deliver
from packager.core.settings import load_settings
from packager.dev.kafka import free_port
from packager.domain.events import EmailFailed, PackageCompleted, envelope
from packager.domain.requesters import pseudonym, seal_email
from streams.handlers import ERASED_REQUESTER, notify
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, smtp_sink

JOB = "00000000-0000-0000-0000-00000000e4a5"


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
        # Nothing to wait for: the sink keeps a message before it answers 250, and `deliver` returns only
        # after that answer, its attempts one after another; a second copy would already be here.
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


@dataclass
class Deferring(SmtpSink):
    """A server that defers every recipient (greylisting, a full mailbox): the sender retries."""

    deferred: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        self.deferred += 1
        return "451 4.7.1 Greylisted, try again later"


async def test_a_requester_erased_while_the_server_defers_the_email_gets_no_further_attempt() -> None:
    settings = load_settings(
        {}, secret=SECRET, smtp_host="127.0.0.1", smtp_port=free_port(), smtp_retry_for=60
    )
    handler = Deferring(port=settings.smtp_port)
    controller = Controller(handler, hostname="127.0.0.1", port=settings.smtp_port)
    controller.start()
    keys = InMemoryRequesterKeys()
    who = pseudonym(settings.pseudonym_key, "r@example.org")
    sealed = seal_email(await keys.key_for(who), "r@example.org")
    done = PackageCompleted(
        "ck", "r1", "", "h", "", "fast", "j.zip", 9, "0" * 64, 1, "a", "b", requester=who, email_sealed=sealed
    )
    try:
        sending = asyncio.create_task(notify(settings, envelope(JOB, done), keys=keys))
        deadline = time.monotonic() + 10
        while handler.deferred < 1:  # the first attempt was deferred
            assert time.monotonic() < deadline and not sending.done()
            await asyncio.sleep(0.02)
        await keys.destroy([who])  # the requester is erased while the mailer waits to retry
        outcome = await asyncio.wait_for(sending, 30)
    finally:
        controller.stop()
    assert isinstance(outcome, EmailFailed) and outcome.error == ERASED_REQUESTER
    assert (outcome.attempts, handler.deferred, handler.messages) == (1, 1, [])
