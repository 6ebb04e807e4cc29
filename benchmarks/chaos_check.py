"""What a chaos campaign checks afterwards: the log, the mailbox and the ZIPs against the accepted requests.

It owns the campaign's expectations (`Job`: what was asked, and the rows it must yield, computed with the same
`SyntheticTable` and query planner the CKAN server answers with), a follower of the events topic, and
`check()`, which turns the log, the mailbox and the ZIPs (a folder: the store's own, or a copy of the bucket's
objects) into the report's figures, `check_downloads()`, which asks every ingress for every ZIP (any ingress
serves any download), and `jobs_per_worker()` (jobs spread over the workers). Pure reading: nothing here
changes the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from packager.core.errors import EventDecodeError
from packager.dev.ckan_server import SyntheticTable, TableIndex, plan_query, validate_params
from packager.domain.events import (
    NOTIFIED_TYPES,
    TERMINAL_TYPES,
    Envelope,
    PackageBuilt,
    PackageCompleted,
    PackageStarted,
    decode,
)

from .chaos_stack import Mail


@dataclass
class Job:
    """One request the ingress answered 2xx, and what it must end as."""

    job_id: str
    kind: str  # distinct | identical | repeat | failing
    params: dict[str, str]
    expect: str  # "completed" or "failed"
    expected_rows: int | None
    submitted_at: float
    ingress: int
    pair: str = ""  # the job submitted at the same time with the same parameters (kind "identical")


class ExpectedRows:
    """Row counts of queries over the campaign's synthetic table, as the CKAN server computes them."""

    def __init__(self, resource_id: str, rows: int, seed: int) -> None:
        self.resource_id = resource_id
        self._index = TableIndex(SyntheticTable(resource_id, rows, seed=seed))

    async def rows(self, filters: dict[str, Any], offset: int, limit: int | None) -> int:
        """Rows the packager must write for `filters`, `offset` and `limit` (its paging semantics)."""
        params = validate_params({"resource_id": self.resource_id, "filters": filters})
        total = len(await self._index.select(plan_query(self._index.table, params)))
        remaining = max(total - offset, 0)
        return remaining if limit is None else min(remaining, limit)


@dataclass
class EventFollower:
    """Reads the events topic from its beginning and keeps following it (in a background task)."""

    bootstrap: str
    topic: str
    partitions: int
    events: list[Envelope] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)  # event id -> "partition@offset"
    undecodable: int = 0
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin following."""
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for messages in batch.values():
                    for m in messages:
                        try:
                            env = decode(m.value)
                        except EventDecodeError:
                            self.undecodable += 1
                            continue
                        self.events.append(env)
                        self.where[env.event_id] = f"{m.partition}@{m.offset}"
        finally:
            await consumer.stop()

    async def caught_up(self, timeout: float = 30.0) -> bool:  # noqa: ASYNC109
        """True once the follower has read up to the topic's end offsets as they are now."""
        probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await probe.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            ends = sum((await probe.end_offsets(tps)).values())
        finally:
            await probe.stop()
        deadline = asyncio.get_running_loop().time() + timeout
        # Every record is one event or one undecodable record (transaction markers are not used).
        while len(self.events) + self.undecodable < ends:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    def check_alive(self) -> None:
        """Raise what ended the follower, if it ended: a campaign must not wait on a reader that is gone."""
        task = self._task
        if task is not None and task.done() and not task.cancelled() and (exc := task.exception()):
            raise RuntimeError("the events follower stopped") from exc

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def outstanding(jobs: dict[str, Job], events: list[Envelope], mails: list[Mail]) -> list[str]:
    """Accepted jobs still without a terminal event, or without the email their terminal event calls for."""
    terminal: dict[str, str] = {}
    for e in events:
        if e.type in TERMINAL_TYPES:
            terminal.setdefault(e.job_id, e.type)
    mailed = {m.job_id for m in mails}
    return [
        job_id
        for job_id in jobs
        if job_id not in terminal or (terminal[job_id] in NOTIFIED_TYPES and job_id not in mailed)
    ]


def building(events: list[Envelope]) -> Counter[int]:
    """Worker pid -> jobs whose latest `PackageStarted` names it and that have no terminal event yet."""
    started: dict[str, int] = {}
    for e in list(events):
        if e.type == PackageStarted.TYPE:
            if (pid := _pid_of(str(getattr(e.payload, "worker", "")))) is not None:
                started[e.job_id] = pid
        elif e.type in TERMINAL_TYPES:
            started.pop(e.job_id, None)
    return Counter(started.values())


def _pid_of(worker: str) -> int | None:
    """The pid of a worker's name in events (`host:pid`), or None."""
    _, _, pid = worker.rpartition(":")
    return int(pid) if pid.isdigit() else None


def jobs_per_worker(jobs: Iterable[str], events: list[Envelope], names: Mapping[int, str]) -> dict[str, int]:
    """Worker process name -> accepted jobs whose terminal event is the outcome that worker built.

    The builder of a job is the worker of its last `PackageBuilt` before its first terminal event; a job
    ended without a build of its own (a cache hit, a request failed while planned) counts for no worker.
    `names` maps every pid a worker ran under to its name (a restarted worker keeps its name); a pid it does
    not know counts as "unknown". Every name appears, with 0 if that worker built nothing.
    """
    wanted = set(jobs)
    builder: dict[str, str] = {}
    ended: set[str] = set()
    for e in events:
        if e.job_id not in wanted or e.job_id in ended:
            continue
        if isinstance(e.payload, PackageBuilt):
            builder[e.job_id] = e.payload.worker
        elif e.type in TERMINAL_TYPES:
            ended.add(e.job_id)
    counts = dict.fromkeys(sorted(set(names.values())), 0)
    for job_id in ended:
        if (worker := builder.get(job_id)) is None:
            continue
        pid = _pid_of(worker)
        name = names.get(pid, "unknown") if pid is not None else "unknown"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _count_rows(fmt: str, data: bytes) -> int:
    if fmt == "csv":
        return sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8"), newline=""))) - 1
    lines = data.count(b"\n")
    return lines if fmt == "jsonl" else lines - 1  # tsv has a header row and escapes line breaks


def check_zip(path: Path, event: PackageCompleted) -> tuple[int | None, str]:
    """(data rows, problem) of a published ZIP against its PackageCompleted ("" when it agrees)."""
    if not path.is_file():
        return None, "ZIP missing from the store"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != event.sha256:
        return None, f"sha256 {digest[:12]} != event's {event.sha256[:12]}"
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = orjson.loads(zf.read("manifest.json"))
            entry = manifest["data_file"]
            data = zf.read(entry["name"])
    except (zipfile.BadZipFile, KeyError, orjson.JSONDecodeError) as exc:
        return None, f"unreadable ZIP: {exc!r}"
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return None, "data file sha256 differs from manifest.json"
    rows = _count_rows(str(manifest.get("format", "csv")), data)
    if rows != manifest.get("row_count"):
        return rows, f"{rows} data rows but manifest.json says {manifest.get('row_count')}"
    if event.rows is not None and rows != event.rows:
        return rows, f"{rows} data rows but the event says {event.rows}"
    return rows, ""


def check(
    jobs: dict[str, Job],
    events: list[Envelope],
    mails: list[Mail],
    store: Path,
    where: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, details) of the campaign: terminal events, emails and ZIPs of every accepted job.

    `store` is a folder where every ZIP the store holds can be read under its name in the events.

    `where` (event id -> "partition@offset") places each event of a reported job in the log.
    """
    where = where or {}
    by_job: dict[str, list[Envelope]] = defaultdict(list)
    for e in events:
        by_job[e.job_id].append(e)
    terminals = {job_id: [e for e in evs if e.type in TERMINAL_TYPES] for job_id, evs in by_job.items()}
    emails = Counter(m.job_id for m in mails)

    lost = [j for j in jobs if not terminals.get(j)]
    duplicated = [j for j in jobs if len(terminals.get(j, [])) > 1]
    notified = [j for j in jobs if terminals.get(j) and terminals[j][0].type in NOTIFIED_TYPES]
    missing_mail = [j for j in notified if emails[j] == 0]
    duplicate_emails = sum(max(emails[j] - 1, 0) for j in jobs)

    zip_results: dict[str, tuple[int | None, str]] = {}
    zip_bad: dict[str, str] = {}
    unexpected: dict[str, str] = {}
    completed = 0
    for job_id, job in jobs.items():
        if not terminals.get(job_id):
            continue
        first = terminals[job_id][0]
        outcome = {PackageCompleted.TYPE: "completed", "PackageFailed": "failed"}.get(first.type, first.type)
        if outcome != job.expect:
            unexpected[job_id] = f"{job.kind}: expected {job.expect}, got {first.type}: " + str(
                getattr(first.payload, "error", "")
            )
        if not isinstance(first.payload, PackageCompleted):
            continue
        completed += 1
        name = first.payload.zip_file_name
        if name not in zip_results:  # a cache hit names the ZIP another job built: check it once
            zip_results[name] = check_zip(store / name, first.payload)
        rows, problem = zip_results[name]
        if not problem and job.expected_rows is not None and rows != job.expected_rows:
            problem = f"{rows} data rows, the query has {job.expected_rows}"
        later = [t.payload for t in terminals[job_id][1:] if isinstance(t.payload, PackageCompleted)]
        if problem and any(not check_zip(store / name, t)[1] for t in later):
            problem += " (it is a later duplicate build's file, which replaced the first event's)"
        if problem:
            zip_bad[job_id] = f"{name}: {problem}"

    pairs = [(a, b.pair) for a, b in jobs.items() if b.pair and a < b.pair and b.pair in jobs]
    shared = 0
    for a, b in pairs:
        ta, tb = terminals.get(a), terminals.get(b)
        if (
            ta
            and tb
            and isinstance(ta[0].payload, PackageCompleted)
            and isinstance(tb[0].payload, PackageCompleted)
        ):
            shared += ta[0].payload.zip_file_name == tb[0].payload.zip_file_name
    types = Counter(e.type for e in events if e.job_id in jobs)
    figures = {
        "accepted": len(jobs),
        "terminal_once": sum(1 for j in jobs if len(terminals.get(j, [])) == 1),
        "lost": len(lost),
        "duplicate_terminal": len(duplicated),
        "duplicate_emails": duplicate_emails,
        "emails_missing": len(missing_mail),
        "zip_ok": completed > 0 and not zip_bad,
        "zips_checked": len(zip_results),
        "completed": completed,
        "zip_bad": len(zip_bad),
        "unexpected_outcome": len(unexpected),
        "identical_pairs": len(pairs),
        "identical_shared_zip": shared,
        "emails_received": len(mails),
        "emails_unattributed": emails.get("", 0),
        "email_failed_events": types.get("EmailFailed", 0),
        "events_by_type": dict(sorted(types.items())),
    }
    details = {
        "lost": {j: _timeline(jobs[j], by_job.get(j, []), where) for j in lost},
        "duplicate_terminal": {j: _timeline(jobs[j], by_job[j], where) for j in duplicated},
        "duplicate_emails": {
            j: {"emails": emails[j], **_timeline(jobs[j], by_job[j], where)} for j in jobs if emails[j] > 1
        },
        "emails_missing": {j: _timeline(jobs[j], by_job[j], where) for j in missing_mail},
        "zip_bad": zip_bad,
        "unexpected_outcome": unexpected,
    }
    return figures, details


def _timeline(job: Job, events: list[Envelope], where: dict[str, str]) -> dict[str, Any]:
    """A lost or duplicated job's request and every event it has, for the report."""
    return {
        "kind": job.kind,
        "ingress": job.ingress,
        "params": {k: v for k, v in job.params.items() if k != "secret"},
        "events": [
            {"type": e.type, "at": e.occurred_at, "where": where.get(e.event_id, ""), **_brief(e)}
            for e in sorted(events, key=lambda e: e.occurred_at)
        ],
    }


def _brief(e: Envelope) -> dict[str, Any]:
    payload = e.payload
    keep = ("lane", "worker", "error", "zip_file_name", "rows", "cached_from", "about", "attempt")
    return {k: getattr(payload, k) for k in keep if getattr(payload, k, None) not in (None, "")}


async def place_requests(
    bootstrap: str,
    topic: str,
    group: str,
    partitions: int,
    job_ids: set[str],
    timeout: float = 30.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Where the requests of `job_ids` sit in `topic`, beside the `group`'s committed offsets and the end.

    For the report of lost jobs: a request past its partition's committed offset was never planned to the
    group's knowledge (a stuck or paused partition); one before it was read and dropped.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        committed = {tp.partition: await consumer.committed(tp) for tp in tps}
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: dict[str, str] = {}
        left = {tp: end for tp, end in ends.items() if end > 0}
        deadline = asyncio.get_running_loop().time() + timeout
        while left and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batch.items():
                for m in messages:
                    with contextlib.suppress(EventDecodeError):
                        if (env := decode(m.value)).job_id in job_ids:
                            found[env.job_id] = f"{m.partition}@{m.offset}"
                    if m.offset + 1 >= ends[tp]:
                        left.pop(tp, None)
    finally:
        await consumer.stop()
    return {
        "requests": found,
        "committed": {str(p): committed[p] for p in sorted(committed)},
        "end": {str(tp.partition): ends[tp] for tp in tps},
    }


async def check_downloads(
    ports: list[int], events: list[Envelope], jobs: dict[str, Job]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(figures, problems): every ZIP an accepted job completed with, fetched through every ingress's
    `/downloads/{name}` and compared with its event's sha256 (problems: "name via port" -> what differed)."""
    wanted: dict[str, str] = {}
    for e in events:
        if e.job_id in jobs and isinstance(e.payload, PackageCompleted):
            wanted.setdefault(e.payload.zip_file_name, e.payload.sha256)
    problems: dict[str, str] = {}
    fetched = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one(port: int, name: str, sha256: str) -> None:
            nonlocal fetched
            try:
                async with http.get(f"http://127.0.0.1:{port}/downloads/{name}") as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        problems[f"{name} via {port}"] = f"HTTP {resp.status}"
                    elif (digest := hashlib.sha256(body).hexdigest()) != sha256:
                        problems[f"{name} via {port}"] = f"sha256 {digest[:12]} != event's {sha256[:12]}"
                    else:
                        fetched += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                problems[f"{name} via {port}"] = repr(exc)

        pending = [one(port, name, sha) for name, sha in wanted.items() for port in ports]
        for start in range(0, len(pending), 16):  # a few at a time: the ingresses share two cores
            await asyncio.gather(*pending[start : start + 16])
    figures = {
        "downloads_checked": fetched + len(problems),
        "downloads_ok": bool(wanted) and not problems,
    }
    return figures, problems
