"""The mailer's hand-over of a revoked partition: what may still be sent, what is left to the next owner."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import TopicPartition

from packager.core.settings import load_settings
from streams.mailer import Mailer


async def test_a_revoked_partition_keeps_only_the_email_being_sent() -> None:
    """An email retrying through an SMTP outage is dropped at once (the next owner sends it); one in the
    middle of its SMTP conversation may finish."""
    settings = load_settings({}, secret="unit-test-secret-0123456789abcdef", store_directory=str(Path(".")))
    mailer = Mailer(settings)
    tp = TopicPartition("events", 0)
    conversation_may_end = asyncio.Event()
    talking, sent = asyncio.Event(), []

    async def being_sent() -> None:
        async with mailer._smtp:
            talking.set()
            await conversation_may_end.wait()
        sent.append("being sent")

    async def retrying() -> None:
        await asyncio.sleep(3600)  # waiting between two attempts, SMTP being down
        async with mailer._smtp:
            sent.append("retrying")

    tasks = {1: asyncio.create_task(being_sent()), 2: asyncio.create_task(retrying())}
    mailer._sends[tp] = tasks
    await talking.wait()
    settle = asyncio.create_task(mailer._settle([tp], grace=30))
    await asyncio.sleep(0)
    assert tasks[2].cancelled() or tasks[2].cancelling(), "the retrying email was not dropped at once"
    conversation_may_end.set()
    await asyncio.wait_for(settle, timeout=5)  # long before the grace: nothing else was waited for
    assert sent == ["being sent"]
    assert tasks[2].cancelled()


async def test_a_send_between_attempts_is_not_let_back_to_smtp_after_revocation() -> None:
    settings = load_settings({}, secret="unit-test-secret-0123456789abcdef", store_directory=str(Path(".")))
    mailer = Mailer(settings)
    tp = TopicPartition("events", 0)
    in_first_attempt, first_attempt_over, attempts = asyncio.Event(), asyncio.Event(), []

    async def two_attempts() -> None:
        async with mailer._smtp:
            attempts.append(1)
            in_first_attempt.set()
            await first_attempt_over.wait()
        async with mailer._smtp:  # the retry: refused, the partition is someone else's now
            attempts.append(2)

    task = asyncio.create_task(two_attempts())
    mailer._sends[tp] = {7: task}
    await in_first_attempt.wait()
    settle = asyncio.create_task(mailer._settle([tp], grace=30))
    await asyncio.sleep(0)
    first_attempt_over.set()
    await asyncio.wait_for(settle, timeout=5)
    assert attempts == [1]
    assert task.cancelled()
