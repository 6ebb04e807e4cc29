"""Replay tooling for audits: rebuild the read model from the log, compare it, and print histories.

    packager replay verify [--snapshot PATH]    rebuild to the live model's positions; exit 1 if different
    packager replay stats [--until TIME]        statistics as they stood at TIME (ISO 8601), from the log
    packager replay history (--job ID | --resource ID)    every event of a job or a resource, in order

Everything here runs the same folds (`projections.readmodel.ReadModel.apply`) as the live ingress.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from packager.adapters.kafka_log import LogIdentity, Topics, identity_mismatch, log_identity
from packager.adapters.readside import identity_for, snapshot_path, topic_partitions
from packager.core.errors import EventDecodeError
from packager.core.settings import Settings, load_settings
from packager.domain.events import Envelope, decode, encode
from projections import statistics as stats_fold
from projections.readmodel import ReadModel


async def read_log(
    bootstrap: str, topics: list[str], *, stop_at: Mapping[str, int] | None = None
) -> AsyncIterator[tuple[str, int, int, bytes]]:
    """Every record of `topics` from the start, per partition up to `stop_at` (default: the current end)."""
    partitions = await topic_partitions(bootstrap, topics)
    if not partitions:
        return
    # "earliest": aiokafka resets a newly assigned partition's position in the background, and a reset to
    # the default "latest" racing with seek_to_beginning was seen to skip a whole partition.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        limits = {
            tp: min(ends[tp], stop_at.get(f"{tp.topic}:{tp.partition}", 0))
            if stop_at is not None
            else ends[tp]
            for tp in partitions
        }
        pending = {tp for tp in partitions if limits[tp] > starts[tp]}
        for tp in partitions:
            await consumer.seek_to_beginning(tp)
        # Partitions that are done keep delivering until the loop ends; their records are skipped. No
        # `max_records` on getmany: with aiokafka 0.14 it was seen to leave a partition's tail undelivered.
        while pending:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < limits[tp]:
                        yield tp.topic, tp.partition, record.offset, record.value
                if records and records[-1].offset + 1 >= limits[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()


async def rebuild(
    settings: Settings, *, stop_at: Mapping[str, int] | None = None, until: str | None = None
) -> tuple[ReadModel, int]:
    """A fresh read model folded from the log; returns it and the number of events folded."""
    topics = Topics(settings.topic_prefix)
    model = ReadModel(identity=identity_for(settings))
    folded = 0
    async for topic, partition, offset, value in read_log(
        settings.kafka_bootstrap_servers, [topics.requests, topics.events], stop_at=stop_at
    ):
        try:
            event = decode(value)
        except EventDecodeError:
            model.positions[f"{topic}:{partition}"] = offset + 1
            continue
        if until is not None and event.occurred_at > until:
            model.positions[f"{topic}:{partition}"] = offset + 1
            continue
        try:
            model.apply(topic, partition, offset, event)
        except Exception as exc:  # skipped, as the live read side skips it (packager.adapters.read_guard)
            where = f"{topic}:{partition}@{offset}"
            print(f"the fold of {event.type} at {where} raised {exc!r}; skipped", file=sys.stderr)
            model.positions[f"{topic}:{partition}"] = offset + 1
            continue
        folded += 1
    return model, folded


def differences(live: Any, rebuilt: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values."""
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        out: list[str] = []
        for key in sorted(set(live) | set(rebuilt), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in live:
                out.append(f"{where}: only in the rebuilt model")
            elif key not in rebuilt:
                out.append(f"{where}: only in the live model")
            else:
                out.extend(differences(live[key], rebuilt[key], where))
        return out
    if live != rebuilt:
        shown = (orjson.dumps(v).decode()[:200] for v in (live, rebuilt))
        return [f"{path}: live {next(shown)} != rebuilt {next(shown)}"]
    return []


async def verify(settings: Settings, live: ReadModel) -> int:
    """Rebuild to the live model's positions and compare; 0 when equal, 1 on any difference."""
    if live.log_identity:
        topics = Topics(settings.topic_prefix)
        now = await log_identity(settings.kafka_bootstrap_servers, [topics.requests, topics.events])
        why = identity_mismatch(LogIdentity.from_dict(live.log_identity), now)
        if why is not None:
            print(
                f"the live model was built from another log: {why} (the ingress rebuilds it when it starts)"
            )
            return 1
    started = time.perf_counter()
    rebuilt, folded = await rebuild(settings, stop_at=live.positions)
    seconds = time.perf_counter() - started
    found = differences(live.state(), rebuilt.state())
    if rebuilt.positions != {k: v for k, v in live.positions.items() if v > 0}:
        found.append(f"positions: live {live.positions} != rebuilt {rebuilt.positions}")
    for line in found:
        print(line)
    rate = folded / seconds if seconds else 0.0
    print(
        f"{'DIFFERENT' if found else 'identical'}: {folded} events replayed in {seconds:.2f}s "
        f"({rate:,.0f} events/s), {len(rebuilt.jobs)} jobs, {len(found)} difference(s)",
        file=sys.stderr,
    )
    return 1 if found else 0


async def stats_until(settings: Settings, until: str | None) -> int:
    """Print `/statistics` totals as they stood at `until`."""
    model, _ = await rebuild(settings, until=until)
    print(
        orjson.dumps(
            {"until": until, "totals": stats_fold.totals(model.stats)}, option=orjson.OPT_INDENT_2
        ).decode()
    )
    return 0


async def history(settings: Settings, *, job_id: str | None, resource_id: str | None) -> int:
    """Print every event of one job, or of every job of one resource, as JSON lines in log-time order."""
    topics = Topics(settings.topic_prefix)
    events: list[Envelope] = []
    jobs: set[str] = {job_id} if job_id else set()
    async for _, _, _, value in read_log(settings.kafka_bootstrap_servers, [topics.requests, topics.events]):
        try:
            event = decode(value)
        except EventDecodeError:
            continue
        if resource_id and getattr(event.payload, "resource_id", None) == resource_id:
            jobs.add(event.job_id)
        events.append(event)
    selected = sorted((e for e in events if e.job_id in jobs), key=lambda e: e.occurred_at)
    for event in selected:
        sys.stdout.write(encode(event).decode() + "\n")
    return 0 if selected else 1


def log_time(text: str) -> str:
    """A time given on the command line in the log's own format (UTC, milliseconds, `Z`), for comparison."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def main(argv: list[str]) -> int:
    """`packager replay verify|stats|history ...`."""
    parser = argparse.ArgumentParser(
        prog="packager replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("verify", help="rebuild from the log and compare with the live read model")
    check.add_argument("--snapshot", help="the live model's snapshot (default: the ingress's)")
    stats = sub.add_parser("stats", help="statistics as they stood at a moment")
    stats.add_argument("--until", help="ISO 8601 UTC time, e.g. 2026-11-26T12:00:00Z (default: now)")
    hist = sub.add_parser("history", help="the full event history of a job or a resource")
    who = hist.add_mutually_exclusive_group(required=True)
    who.add_argument("--job")
    who.add_argument("--resource")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.action == "verify":
        path = Path(args.snapshot) if args.snapshot else snapshot_path(settings)
        if not path.exists():
            print(f"no live read model at {path}", file=sys.stderr)
            return 2
        return asyncio.run(verify(settings, ReadModel.load(path, identity_for(settings))))
    if args.action == "stats":
        return asyncio.run(stats_until(settings, log_time(args.until) if args.until else None))
    return asyncio.run(history(settings, job_id=args.job, resource_id=args.resource))
