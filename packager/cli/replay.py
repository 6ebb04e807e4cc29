"""Replay tooling for audits: rebuild the views from the log, compare them, and print histories.

    packager replay verify [--into URL]     rebuild into a fresh database (default: a temporary SQLite
                                            file) to the live views' positions, compare every view row
                                            by row; print differences, exit 1 if any
    packager replay rebuild --into URL      an audit copy of the views, folded from the whole log
    packager replay stats [--until TIME]    statistics as they stood at TIME (ISO 8601), from the log
    packager replay history (--job ID | --resource ID)    every event of a job or a resource, in order

Everything here runs the projector (`packager.adapters.projector`), so the same folds as the live views.
Settings come from the environment as for every command; on the Quickstart stack (`packager dev up`),
from the `var/stack.toml` it writes, so nothing needs exporting by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from packager.adapters.kafka_log import LogIdentity, Topics, identity_mismatch, log_identity
from packager.adapters.projector import run_projector
from packager.adapters.readside import missing_topics, topic_partitions
from packager.adapters.viewdb import (
    ViewDatabase,
    ViewsUnavailable,
    database_url,
    worker_parameters,
)
from packager.adapters.viewreads import log_end_offsets
from packager.cli.stack_file import STACK_SETTINGS, stack_file_in_use, stack_settings
from packager.core.errors import EventDecodeError
from packager.core.logs import redacted_url as redacted
from packager.core.settings import Settings
from packager.domain.events import Envelope, decode, encode
from projections import view_schema as schema


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
    settings: Settings,
    into: str,
    *,
    stop_at: Mapping[tuple[str, int], int] | None = None,
    until: str = "",
) -> int:
    """Fold the log into the empty views database `into` (its views are dropped first) with the projector;
    returns the number of events folded. Without `stop_at`, up to the log's end as it is now."""
    db = ViewDatabase(into, worker_parameters(settings))
    await asyncio.to_thread(db.reset)
    return await run_projector(
        settings, until_caught_up=stop_at is None, url=into, stop_at=stop_at, until=until
    )


def compare(live: ViewDatabase, live_conn: Any, rebuilt: ViewDatabase, rebuilt_conn: Any) -> Iterator[str]:
    """Every difference between two views databases, table by table, row by row, in key order."""
    for table in schema.COMPARED:
        width = len(table.key)
        left, right = live.rows(live_conn, table), rebuilt.rows(rebuilt_conn, table)
        a, b = next(left, None), next(right, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a[:width] < b[:width]):
                yield f"{table.name} {_key(table, a)}: only in the live views"  # type: ignore[arg-type]
                a = next(left, None)
            elif a is None or b[:width] < a[:width]:
                yield f"{table.name} {_key(table, b)}: only in the rebuilt views"
                b = next(right, None)
            else:
                for name, x, y in zip(table.column_names, a, b, strict=True):
                    if x != y:
                        yield f"{table.name} {_key(table, a)}: {name} live {x!r} != rebuilt {y!r}"
                a, b = next(left, None), next(right, None)


async def _views_from_another_log(settings: Settings, views: ViewDatabase, conn: Any) -> str | None:
    """Why the views were not built from the log the broker holds now, or None (also when they do not say)."""
    saved = await asyncio.to_thread(views.meta, conn, schema.LOG_IDENTITY)
    if not saved:
        return None
    topics = Topics(settings.topic_prefix)
    now = await log_identity(settings.kafka_bootstrap_servers, [topics.requests, topics.events])
    return identity_mismatch(LogIdentity.from_dict(orjson.loads(saved)), now)


def _key(table: schema.Table, row: tuple[Any, ...]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in zip(table.key, row, strict=False))


async def verify(settings: Settings, *, into: str | None = None, show: int = 50) -> int:
    """Rebuild the views to the live views' positions and compare; 0 when equal, 1 on any difference."""
    live = ViewDatabase(database_url(settings))
    try:
        live_conn = await asyncio.to_thread(live.connect)
    except ViewsUnavailable as exc:
        hint = (
            ""
            if stack_file_in_use() or os.environ.get("PACKAGER_CONFIG")
            else (
                f" (no {STACK_SETTINGS} here: run it from the folder the stack was started in, or set"
                " PACKAGER_DATABASE_URL)"
            )
        )
        print(f"no live views at {redacted(live.url)}: {exc}{hint}", file=sys.stderr)
        return 2
    try:
        why = await _views_from_another_log(settings, live, live_conn)
        if why is not None:
            print(f"the live views were built from another log: {why} (the projector rebuilds them)")
            return 1
        with tempfile.TemporaryDirectory(prefix="packager-verify-") as scratch:
            target = into or f"sqlite:///{Path(scratch) / 'rebuilt.sqlite3'}"
            if _same_database(target, live.url):
                print("refusing to rebuild into the live views", file=sys.stderr)
                return 2
            # One read transaction on the live views: a snapshot that the running projector cannot move.
            with live.transaction(live_conn, write=False):
                positions = live.positions(live_conn)
                # The worker's views depend on CACHE_TIME and LEASE_TIME: rebuilt with the live views' own.
                folded_with = live.worker_parameters(live_conn)
                if folded_with is not None:
                    settings = dataclasses.replace(
                        settings, cache_time=folded_with.cache_time, lease_time=folded_with.lease_time
                    )
                started = time.perf_counter()
                folded = await rebuild(settings, target, stop_at=positions)
                seconds = time.perf_counter() - started
                rebuilt = ViewDatabase(target)
                rebuilt_conn = rebuilt.connect()
                try:
                    found = await asyncio.to_thread(
                        lambda: list(compare(live, live_conn, rebuilt, rebuilt_conn))
                    )
                    rebuilt_positions = rebuilt.positions(rebuilt_conn)
                finally:
                    rebuilt_conn.close()
    finally:
        live_conn.close()
    wanted = {k: v for k, v in positions.items() if v > 0}
    if rebuilt_positions != wanted:
        found.append(f"positions: live {_positions(wanted)} != rebuilt {_positions(rebuilt_positions)}")
    for line in found[:show]:
        print(line)
    if len(found) > show:
        print(f"... and {len(found) - show} more")
    rate = folded / seconds if seconds else 0.0
    # The verdict is the result, so on stdout after the differences (a report redirected to a file has both).
    print(
        f"{'DIFFERENT' if found else 'identical'}: {folded} events replayed in {seconds:.2f}s "
        f"({rate:,.0f} events/s), {len(found)} difference(s)"
    )
    await _say_what_is_not_folded(settings, positions)
    return 1 if found else 0


async def _say_what_is_not_folded(settings: Settings, positions: Mapping[tuple[str, int], int]) -> None:
    """A note when the live views lag the log: what they have not folded yet was not compared."""
    try:
        ends = await log_end_offsets(settings)
    except (KafkaError, OSError, TimeoutError):
        return  # the verdict stands; the note is a courtesy
    behind = {
        where: end - positions.get(where, 0) for where, end in ends.items() if end > positions.get(where, 0)
    }
    if behind:
        print(
            f"note: the live views have not folded {sum(behind.values())} record(s) of {len(behind)}"
            " partition(s) yet (a projector behind, or a share of them not running): those were not compared"
        )


def _positions(positions: Mapping[tuple[str, int], int]) -> str:
    return "{" + ", ".join(f"{t}:{p}={o}" for (t, p), o in sorted(positions.items())) + "}"


def _same_database(a: str, b: str) -> bool:
    if a.startswith("sqlite:///") and b.startswith("sqlite:///"):
        return Path(a.removeprefix("sqlite:///")).resolve() == Path(b.removeprefix("sqlite:///")).resolve()
    return a == b


async def rebuild_copy(settings: Settings, into: str) -> int:
    """`replay rebuild --into URL`: an audit copy of the views, folded from the whole log."""
    if _same_database(into, database_url(settings)):
        print("refusing to rebuild into the live views", file=sys.stderr)
        return 2
    started = time.perf_counter()
    folded = await rebuild(settings, into)
    print(f"rebuilt {redacted(into)}: {folded} events in {time.perf_counter() - started:.2f}s")
    return 0


async def stats_until(settings: Settings, until: str | None) -> int:
    """Print `/statistics` totals as they stood at `until`."""
    with tempfile.TemporaryDirectory(prefix="packager-stats-") as scratch:
        target = f"sqlite:///{Path(scratch) / 'stats.sqlite3'}"
        await rebuild(settings, target, until=until or "")
        db = ViewDatabase(target)
        conn = db.connect()
        try:
            totals = db.totals(conn)
        finally:
            conn.close()
    print(orjson.dumps({"until": until, "totals": totals}, option=orjson.OPT_INDENT_2).decode())
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
    if not selected:
        of = f"job {job_id}" if job_id else f"resource {resource_id}"
        print(f"no events of {of}", file=sys.stderr)
    return 0 if selected else 1


def log_time(text: str) -> str:
    """A time given on the command line in the log's own format (UTC, milliseconds, `Z`), for comparison."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def main(argv: list[str], prog: str = "packager replay") -> int:
    """`packager replay verify|rebuild|stats|history ...` (`prog`: the command it is run as)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("verify", help="rebuild from the log and compare with the live views")
    check.add_argument("--into", help="database to rebuild into (emptied first; default: a temporary file)")
    copy = sub.add_parser("rebuild", help="an audit copy of the views, folded from the whole log")
    copy.add_argument("--into", required=True, help="sqlite:///path or postgresql://... (emptied first)")
    stats = sub.add_parser("stats", help="statistics as they stood at a moment")
    stats.add_argument("--until", help="ISO 8601 UTC time, e.g. 2026-11-26T12:00:00Z (default: now)")
    hist = sub.add_parser("history", help="the full event history of a job or a resource")
    who = hist.add_mutually_exclusive_group(required=True)
    who.add_argument("--job")
    who.add_argument("--resource")
    args = parser.parse_args(argv)
    settings = stack_settings()
    try:
        missing = asyncio.run(_missing_topics(settings))
        if missing:
            print(
                f"{prog}: the log at {settings.kafka_bootstrap_servers} has no topic {', '.join(missing)},"
                f" so nothing to read: is the topic prefix {settings.topic_prefix!r} right? This uses"
                f" {_settings_source()}; PACKAGER_TOPIC_PREFIX sets the prefix.",
                file=sys.stderr,
            )
            return 2
        if args.action == "verify":
            return asyncio.run(verify(settings, into=args.into))
        if args.action == "rebuild":
            return asyncio.run(rebuild_copy(settings, args.into))
        if args.action == "stats":
            return asyncio.run(stats_until(settings, log_time(args.until) if args.until else None))
        return asyncio.run(history(settings, job_id=args.job, resource_id=args.resource))
    except (KafkaError, OSError) as exc:
        print(
            f"{prog}: cannot read the log at {settings.kafka_bootstrap_servers} ({exc}). It uses "
            f"{_settings_source()}: is the stack running (bash scripts/up)? Run this from the folder the"
            " stack was started in, or set PACKAGER_KAFKA_BOOTSTRAP_SERVERS and PACKAGER_TOPIC_PREFIX.",
            file=sys.stderr,
        )
        return 2


async def _missing_topics(settings: Settings) -> list[str]:
    """The service's topics the broker does not have (a wrong topic prefix names topics nobody writes)."""
    topics = Topics(settings.topic_prefix)
    followed = [topics.requests, topics.events]
    return missing_topics(await log_identity(settings.kafka_bootstrap_servers, followed), followed)


def _settings_source() -> str:
    if stack_file_in_use():
        return f"the settings of {STACK_SETTINGS.resolve()}"
    return f"no {STACK_SETTINGS} here, so the environment's settings"
