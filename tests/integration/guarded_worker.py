"""A real Faust worker, one agent reading through the offset guard (for test_offsets_on_kafka.py).

Run as `python -m tests.integration.guarded_worker BOOTSTRAP TOPIC GROUP JOURNAL`. It wires the guard
exactly as `streams.app.create_app` does (shared resume points, the commit rule, the stall sweep, the
concurrency check) and keeps Faust's commit settings, but its agent does what its records say, so a test
can force the situations the guard exists for:

- `hold`: the agent works on the record until the file JOURNAL.release exists (a long build);
- `skip-ahead:N`: once done, the agent seeks its partition N records past the next one, so Faust never
  delivers those N records (what faust-streaming does to records fetched between assignment and seek);
- `rejoin`: once done, the agent asks the group to rebalance (streams.recovery_watch.request_rejoin, what
  the worker does when its table recovery stalls), the first time only (the record may be read again);
- anything else: done at once.

The agent appends `start <partition> <offset> <value> g<generation> <pid> <time>` and
`done <partition> <offset> g<generation> <pid> <time>` lines to JOURNAL.
`PACKAGER_TEST_RESEEK_AFTER` shortens the guard's wait before it seeks again (and gives up on a hole).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import faust
from aiokafka.errors import KafkaError
from faust.types import TP

from streams import offsets
from streams.offsets import (
    OffsetGuard,
    ResumePoints,
    acknowledge_missing,
    group_starts,
    patch_commit_offsets,
    require_single_actor,
)
from streams.recovery_watch import request_rejoin


def build(bootstrap: str, topic_name: str, group: str, journal: Path) -> faust.App:
    """The worker's app: one guarded agent on `topic_name`, consumer group `group`."""
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_replication_factor=1,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        datadir=str(journal.parent / f".faust-{group}"),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # As streams/app.py: commit after every ack, at most every second.
        broker_commit_every=1,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        stream_wait_empty=False,
    )
    resume_points = ResumePoints(
        fetch=group_starts(bootstrap, app.conf.id), generation=lambda: app.consumer_generation_id
    )
    patch_commit_offsets(resume_points)
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    release = journal.with_suffix(".release")
    guards: list[OffsetGuard] = []

    def stamp() -> str:
        return f"g{app.consumer_generation_id} {os.getpid()} {time.time():.3f}"

    def write(line: str) -> None:
        with journal.open("a") as out:
            out.write(line + "\n")

    async def admitted(stream: faust.StreamT) -> AsyncIterator[faust.types.EventT]:
        # The same wiring as `admitted` in streams/app.py.
        guard = OffsetGuard(
            topics=tuple(getattr(stream.channel, "topics", ())),
            generation=lambda: app.consumer_generation_id,
            starts=resume_points,
            assigned=lambda: app.consumer.assignment(),
            seek=lambda tp, offset: app.consumer.seek(tp, offset),
            skip=lambda tp, offsets: acknowledge_missing(app.consumer, tp, offsets),
        )
        guards.append(guard)
        try:
            async for record in stream.events():
                message = record.message
                if await guard.admit(message.tp, message.offset):
                    guard.busy = True
                    yield record
                    guard.busy = False
        finally:
            guards.remove(guard)

    @app.timer(interval=1.0)
    async def stall_watch() -> None:
        def log_end(tp: TP) -> int | None:
            try:
                return app.consumer.highwater(tp)
            except (AssertionError, KafkaError):
                return None

        for guard in list(guards):
            await guard.sweep(log_end)

    @app.agent(topic, name="guarded")
    async def guarded(stream: faust.StreamT) -> None:
        async for record in admitted(stream):
            message, value = record.message, record.value
            where = f"{message.partition} {message.offset}"
            write(f"start {where} {value.decode()} {stamp()}")
            if value == b"hold":
                # The test process creates a file: another process cannot set an asyncio.Event.
                while not release.exists():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            write(f"done {where} {stamp()}")
            if value == b"rejoin" and not (asked := journal.with_suffix(".rejoined")).exists():
                asked.touch()
                request_rejoin(app)
            if value.startswith(b"skip-ahead:"):
                await app.consumer.seek(message.tp, message.offset + 1 + int(value.split(b":")[1]))

    require_single_actor(app)
    return app


def main(argv: list[str]) -> None:
    """Run the worker until SIGTERM/SIGINT."""
    bootstrap, topic_name, group, journal = argv
    if reseek := os.environ.get("PACKAGER_TEST_RESEEK_AFTER"):
        offsets.RESEEK_AFTER = float(reseek)
    app = build(bootstrap, topic_name, group, Path(journal))
    faust.Worker(app, loglevel="info").execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
