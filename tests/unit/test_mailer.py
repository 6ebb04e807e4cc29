"""The mailer's hand-over of a revoked partition: what may still be sent, what is left to the next owner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from packager.core.settings import load_settings
from packager.domain.events import PackageCompleted, PackageFailed, encode, envelope
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


class CommitsSeen:
    """Stands in for the consumer: keeps what the mailer commits."""

    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))


async def test_a_terminal_event_read_while_its_partition_is_being_revoked_is_left_to_the_next_owner() -> None:
    """The consume loop runs beside the rebalance: a terminal event it reads during the revocation's grace
    must not start a send that outlives the hand-over (it was seen to leave the job unemailed for good)."""
    settings = load_settings({}, secret="unit-test-secret-0123456789abcdef", store_directory=str(Path(".")))
    mailer = Mailer(settings)
    tp = TopicPartition("events", 0)
    consumer = CommitsSeen()
    mailer._consumer = consumer
    conversation_may_end, talking, started = asyncio.Event(), asyncio.Event(), []

    async def being_sent() -> None:
        async with mailer._smtp:
            talking.set()
            await conversation_may_end.wait()

    async def send(env: object) -> None:
        started.append(env)

    mailer._send = send  # type: ignore[method-assign]
    mailer._sends[tp] = {1: asyncio.create_task(being_sent())}
    mailer._settled[tp], mailer._next[tp] = set(), 2
    mailer._scanned.add(tp)
    await talking.wait()
    revoking = asyncio.create_task(mailer.on_partitions_revoked([tp]))
    await asyncio.sleep(0)  # the revocation now waits for the email being sent

    done = PackageCompleted("ck", "res", "a@example.org", "h", "", "fast", "j.zip", 9, "0" * 64, 10, "a", "b")
    await mailer._handle(tp, 5, encode(envelope("job-5", done)))
    conversation_may_end.set()
    await asyncio.wait_for(revoking, timeout=5)

    assert started == [], "a send was started for a partition being revoked"
    assert "job-5" not in mailer._sending
    assert consumer.committed, "the revocation committed nothing"
    assert consumer.committed[-1][tp] <= 5  # not past the terminal event: the next owner reads it again


class OneBatch(CommitsSeen):
    """Stands in for the consumer: one batch of records, then nothing."""

    def __init__(self, batch: dict[TopicPartition, list[Any]]) -> None:
        super().__init__()
        self.batch: dict[TopicPartition, list[Any]] | None = batch

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        batch, self.batch = self.batch, None
        if batch is None:
            await asyncio.sleep(0.01)
            return {}
        return batch

    def pause(self, *_: TopicPartition) -> None:
        pass

    def resume(self, *_: TopicPartition) -> None:
        pass


async def test_the_consume_loop_never_commits_past_a_terminal_event_it_read_while_revoked() -> None:
    """The revocation began while the loop handled a terminal event (its read-ahead was in flight) and
    waited for another email being sent: no send was started for the event, so the offset the revocation
    commits must not pass it (it once did: the next owner started after it and the job was never emailed,
    chaos run 64)."""
    settings = load_settings({}, secret="unit-test-secret-0123456789abcdef", store_directory=str(Path(".")))
    mailer = Mailer(settings)
    tp = TopicPartition("events", 3)
    done = PackageFailed("ck", "res", "a@example.org", "h", "CKAN said no", "CkanError")
    consumer = OneBatch({tp: [SimpleNamespace(offset=3, value=encode(envelope("job-3", done)))]})
    mailer._consumer = consumer
    talking, may_end, revocation_began = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def being_sent() -> None:  # the email of an earlier job, in its SMTP conversation
        async with mailer._smtp:
            talking.set()
            await may_end.wait()

    earlier = asyncio.create_task(being_sent())
    earlier.add_done_callback(lambda task: mailer._sent(tp, 1, task))
    mailer._sends[tp], mailer._settled[tp], mailer._next[tp] = {1: earlier}, set(), 3
    await talking.wait()
    revoking: list[asyncio.Task[None]] = []

    async def read_ahead(partition: TopicPartition, start: int) -> None:
        mailer._scanned.add(partition)
        revoking.append(asyncio.create_task(mailer.on_partitions_revoked([partition])))
        await asyncio.sleep(0)  # the revocation has begun: it waits for the earlier email
        revocation_began.set()

    mailer._read_ahead = read_ahead  # type: ignore[method-assign, assignment]
    consuming = asyncio.create_task(mailer._consume())
    try:
        await asyncio.wait_for(revocation_began.wait(), timeout=5)
        for _ in range(3):  # let the loop finish the record it had in hand
            await asyncio.sleep(0)
        may_end.set()
        await asyncio.wait_for(revoking[0], timeout=5)
    finally:
        consuming.cancel()
    assert consumer.committed, "the revocation committed nothing"
    assert consumer.committed[-1][tp] <= 3, consumer.committed
    assert "job-3" not in mailer._sending


class Records(OneBatch):
    """Stands in for the consumer: the records of one partition from its position on, and `seek`."""

    def __init__(self, tp: TopicPartition, records: list[Any]) -> None:
        super().__init__({})
        self.tp, self.records, self.position = tp, records, 0

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        found = [r for r in self.records if r.offset >= self.position]
        if not found:
            await asyncio.sleep(0.01)
            return {}
        self.position = found[-1].offset + 1
        return {self.tp: found}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset


async def test_a_record_whose_handling_always_raises_is_passed_and_later_jobs_are_emailed(
    monkeypatch: Any, caplog: Any
) -> None:
    """A bug that makes one terminal event raise (the webhook sender once did on PackageCancelled) must not
    hold back every later job of its partition: after HANDLE_ATTEMPTS tries it is logged, counted, passed."""
    from packager.adapters import metrics
    from streams import mailer as mailer_module

    monkeypatch.setattr(mailer_module, "RESTART_DELAY", 0.0)
    settings = load_settings({}, secret="unit-test-secret-0123456789abcdef", store_directory=str(Path(".")))
    mailer = Mailer(settings)
    tp = TopicPartition("events", 0)
    failed = PackageFailed("ck", "res", "a@example.org", "h", "CKAN said no", "CkanError")
    records = [SimpleNamespace(offset=n, value=encode(envelope(f"job-{n}", failed))) for n in range(3)]
    mailer._consumer = Records(tp, records)
    mailer._sends[tp], mailer._settled[tp] = {}, set()
    mailer._scanned.add(tp)
    attempts: list[str] = []
    sent: list[str] = []
    both_sent = asyncio.Event()

    def wants(env: Any) -> bool:
        attempts.append(env.job_id)
        if env.job_id == "job-1":
            raise RuntimeError("a bug in wants()")
        return True

    async def send(env: Any) -> None:
        sent.append(env.job_id)
        if len(sent) == 2:
            both_sent.set()

    mailer.wants = wants  # type: ignore[method-assign]
    mailer._send = send  # type: ignore[method-assign]
    skipped = metrics.NOTIFIER_RECORDS_SKIPPED.labels("mailer")
    before = skipped._value.get()
    running = asyncio.create_task(mailer._run())
    try:
        await asyncio.wait_for(both_sent.wait(), timeout=10)
    finally:
        running.cancel()
    assert sent == ["job-0", "job-2"]
    assert attempts.count("job-1") == mailer_module.HANDLE_ATTEMPTS
    assert skipped._value.get() == before + 1
    assert "passes the record at events:0@1 after 5 failed attempts" in caplog.text
    assert mailer._next[tp] == 3
