"""The chaos campaign: every fault a process can suffer, thrown at random at the real stack, then counted.

    python -m benchmarks.chaos --quick --json --store s3   # CI: <= 5 minutes, >= 150 jobs, every fault once
    python -m benchmarks.chaos --duration 1800 --jobs 2000   # the long run, by hand

The stack (`benchmarks.chaos_stack`): a 3-node KRaft cluster (replication factor 3, min.insync.replicas=2),
2 ingress processes, 3 worker processes, the package store (`--store folder`, the default: one folder all
share; `--store s3`: an s3proxy bucket, see `benchmarks.chaos_store`), a real SMTP server and the
CKAN-compatible server, all on loopback.
A client submits a mix to both ingresses all along: distinct datastore queries (small, medium and large, up
to 40,000 rows, CSV, TSV and JSON lines), identical pairs (the same query to both ingresses at once), repeats
of earlier queries (cache hits) and failing ones (an unknown resource, an unknown column). A nemesis injects,
at random times and on random targets, each kind at least once: `sigterm`, `kill9` and `sigstop` (past the
session timeout) of a worker, `broker_kill` (kill -9 of the node leading most partitions of the requests
topic, restarted later), `smtp_outage` (30 s) and `ckan_5xx` (a burst of 5xx answers); see
`benchmarks.chaos_nemesis`. Process faults run one at a time; SMTP and CKAN faults run beside them.

Afterwards (client stopped, faults healed, then waiting with a deadline until every accepted job has a
terminal event and its email) `benchmarks.chaos_check` reads the whole events topic, the mailbox and the
ZIPs (from the store: the folder, or each object read through the service's S3 client), fetches every ZIP
through both ingresses and counts the jobs each worker built (`jobs_per_worker`). The exit
code is 1 when a job was lost or got two terminal events, 2 when the campaign itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import platform
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from packager.adapters.kafka_log import Topics
from packager.dev.ckan_table import COUNTRIES, FIRST_YEAR, YEARS
from packager.domain.events import PackageCompleted

from .chaos_check import (
    EventFollower,
    ExpectedRows,
    Job,
    building,
    check,
    check_downloads,
    jobs_per_worker,
    outstanding,
    place_requests,
)
from .chaos_nemesis import FAULT_KINDS, Nemesis, Plan, heal
from .chaos_stack import (
    PARTITIONS,
    RESOURCE_ID,
    SECRET,
    TABLE_ROWS,
    TABLE_SEED,
    Stack,
    StackConfig,
    log,
)
from .chaos_store import STORES

QUICK_BUDGET = 300.0  # seconds of wall clock for --quick, start-up and teardown included


# --- the client ----------------------------------------------------------------------------------------


@dataclass
class Client:
    """Submits the mix to both ingresses and remembers every job answered 2xx."""

    stack: Stack
    expected: ExpectedRows
    rng: random.Random
    jobs: dict[str, Job] = field(default_factory=dict)
    submitted: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    _seen: set[str] = field(default_factory=set)
    _turn: int = 0
    _http: aiohttp.ClientSession | None = None

    async def run(self, plan: Plan, stop_at: float) -> None:
        """Submit about `plan.jobs` requests evenly until `stop_at` (monotonic)."""
        interval = plan.duration / max(plan.jobs, 1)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as self._http:
            try:
                while time.monotonic() < stop_at and self.submitted < plan.jobs:
                    task = asyncio.create_task(self._one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    await asyncio.sleep(interval * self.rng.uniform(0.5, 1.5))
                if tasks:
                    await asyncio.wait(tasks, timeout=40)
            finally:
                for task in tasks:
                    task.cancel()

    async def _one(self) -> None:
        roll = self.rng.random()
        if roll < 0.15:
            params = await self._distinct()
            self.submitted += 2
            await asyncio.gather(*(self._submit("identical", params, ingress=i, pair=True) for i in (0, 1)))
            return
        self.submitted += 1
        if roll < 0.35 and (old := self._earlier()) is not None:
            await self._submit("repeat", old.params, expected=old.expected_rows)
        elif roll < 0.5:
            await self._submit("failing", self._failing(), expect="failed")
        else:
            await self._submit("distinct", await self._distinct())

    async def _distinct(self) -> dict[str, str]:
        """Parameters no earlier request had: small, medium or large."""
        while True:
            size = self.rng.random()
            offset, limit = 0, None
            if size < 0.6:  # about 120 rows
                year = FIRST_YEAR + self.rng.randrange(YEARS)
                filters: dict[str, Any] = {"country": self.rng.choice(COUNTRIES), "year": year}
            elif size < 0.9:  # hundreds to thousands of rows
                filters = {"country": self.rng.choice(COUNTRIES)}
                offset, limit = self.rng.randrange(300), self.rng.randrange(200, 4000)
            else:  # tens of thousands: the slow lane
                filters, limit = {}, self.rng.randrange(10_001, TABLE_ROWS + 1)
            fmt = self.rng.choices(("csv", "tsv", "jsonl"), weights=(7, 2, 2))[0]
            params = {
                "api_url": self.stack.api_url,
                "resource_id": RESOURCE_ID,
                "filters": orjson.dumps(filters).decode(),
                "offset": str(offset),
                "format": fmt,
                **({"limit": str(limit)} if limit is not None else {}),
            }
            identity = orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
            if identity not in self._seen:
                self._seen.add(identity)
                rows = await self.expected.rows(filters, offset, limit)
                return {**params, "_rows": str(rows)}

    def _failing(self) -> dict[str, str]:
        n = self.rng.randrange(10**9)
        if self.rng.random() < 0.5:  # CKAN answers 404
            return {"api_url": self.stack.api_url, "resource_id": f"chaos-missing-{n}"}
        return {  # CKAN answers 409: no such column
            "api_url": self.stack.api_url,
            "resource_id": RESOURCE_ID,
            "filters": orjson.dumps({f"no_such_column_{n}": 1}).decode(),
        }

    def _earlier(self) -> Job | None:
        """A job accepted at least 20 s ago that should have completed by now."""
        now = time.monotonic()
        done = [j for j in self.jobs.values() if j.expect == "completed" and now - j.submitted_at > 20]
        return self.rng.choice(done) if done else None

    async def _submit(
        self,
        kind: str,
        params: dict[str, str],
        *,
        ingress: int | None = None,
        pair: bool = False,
        expect: str = "completed",
        expected: int | None = None,
    ) -> None:
        assert self._http is not None
        if ingress is None:
            ingress, self._turn = self._turn, (self._turn + 1) % len(self.stack.ingress_ports)
        rows = params.get("_rows")
        expected_rows = expected if expected is not None else (int(rows) if rows is not None else None)
        form = {k: v for k, v in params.items() if not k.startswith("_") and k != "email"}
        email = f"requester{self.rng.randrange(10**6)}@example.org"
        url = f"http://127.0.0.1:{self.stack.ingress_ports[ingress]}/package_datastore"
        submitted_at = time.monotonic()
        self.kinds[kind] += 1
        try:
            async with self._http.post(url, data={"secret": SECRET, "email": email, **form}) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.answers[type(exc).__name__] += 1
            return
        self.answers[str(status)] += 1
        if 200 <= status < 300:
            job = Job(
                job_id=str(body["job_id"]),
                kind=kind,
                params={**form, "email": email},
                expect=expect,
                expected_rows=expected_rows if expect == "completed" else None,
                submitted_at=submitted_at,
                ingress=ingress,
            )
            self.jobs[job.job_id] = job
            if pair:
                params.setdefault("_pair", "")
                if partner := params["_pair"]:
                    job.pair, self.jobs[partner].pair = partner, job.job_id
                else:
                    params["_pair"] = job.job_id


# --- the campaign --------------------------------------------------------------------------------------


async def wait_settled(
    jobs: dict[str, Job], follower: EventFollower, stack: Stack, deadline: float, quiet: float
) -> list[str]:
    """Wait until every job is finished and emailed, then until nothing new arrives for `quiet` seconds."""
    left = outstanding(jobs, follower.events, stack.mailbox.snapshot())
    last_report = 0.0
    while left and time.monotonic() < deadline:
        await asyncio.sleep(1)
        follower.check_alive()
        left = outstanding(jobs, follower.events, stack.mailbox.snapshot())
        if time.monotonic() - last_report > 15:
            log(f"waiting for {len(left)} of {len(jobs)} jobs to finish and be emailed")
            last_report = time.monotonic()
    # Duplicates arrive after the first copy: count only once the log and the mailbox are quiet.
    seen = (-1, -1)
    while time.monotonic() < deadline:
        await follower.caught_up(timeout=max(1.0, deadline - time.monotonic()))
        now = (len(follower.events), len(stack.mailbox.snapshot()))
        if now == seen:
            break
        seen = now
        await asyncio.sleep(quiet)
    return left


async def campaign(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack, run client and nemesis, heal, wait, check; always stop the stack."""
    began = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    config = StackConfig(session_timeout=args.session_timeout, keep=args.keep, store=args.store)
    stack = await Stack.start(config)
    follower: EventFollower | None = None
    try:
        startup = time.monotonic() - began
        if args.quick:
            # What the budget leaves after start-up, a drain of at least 60 s and the teardown.
            duration = max(60.0, min(args.duration or 150.0, QUICK_BUDGET - startup - 80))
            plan = Plan(duration, args.jobs or 190, drain=0, quick=True, seed=seed, gap=(2, 6))
        else:
            plan = Plan(args.duration or 1800, args.jobs or 2000, 300, quick=False, seed=seed, gap=(10, 40))
        log(f"seed {seed}; client {plan.duration:.0f}s, {plan.jobs} submissions; started in {startup:.0f}s")
        follower = EventFollower(stack.bootstrap, Topics(stack.prefix).events, PARTITIONS)
        await follower.start()
        client = Client(stack, ExpectedRows(RESOURCE_ID, TABLE_ROWS, TABLE_SEED), rng)
        nemesis = Nemesis(stack, random.Random(rng.random()), plan, lambda: building(follower.events))
        client_start = time.monotonic()
        stop_at = client_start + plan.duration
        await asyncio.gather(client.run(plan, stop_at), nemesis.run(stop_at))
        client_s = time.monotonic() - client_start
        log(f"client done: {len(client.jobs)} of {client.submitted} accepted; healing")
        await heal(stack)
        drain = plan.drain if not args.quick else max(45.0, QUICK_BUDGET - (time.monotonic() - began) - 30)
        left = await wait_settled(
            client.jobs, follower, stack, time.monotonic() + drain, 3 if args.quick else 10
        )
        settled_s = time.monotonic() - client_start
        zips = await stack.store.readable_copy(
            e.payload.zip_file_name for e in follower.events if isinstance(e.payload, PackageCompleted)
        )
        figures, details = check(client.jobs, follower.events, stack.mailbox.snapshot(), zips, follower.where)
        details["unfinished_at_deadline"] = left
        downloads, details["downloads_bad"] = await check_downloads(
            stack.ingress_ports, follower.events, client.jobs
        )
        figures.update(downloads)
        figures["store"] = stack.store.kind
        figures["jobs_per_worker"] = jobs_per_worker(client.jobs, follower.events, stack.worker_names())
        if lost := set(details["lost"]):
            with contextlib.suppress(Exception):  # a report aid: never the reason a campaign fails
                details["lost_requests"] = await place_requests(
                    stack.bootstrap, Topics(stack.prefix).requests, f"{stack.prefix}-worker", PARTITIONS, lost
                )
        if figures["lost"] or figures["duplicate_terminal"] or figures["emails_missing"]:
            # The workers' logs are what explains a failure: the folder outlives the run then.
            stack.config = dataclasses.replace(stack.config, keep=True)
            details["kept"] = str(stack.root)
        details["fault_log"] = nemesis.record
        figures["faults"] = {kind: nemesis.counts.get(kind, 0) for kind in FAULT_KINDS}
        figures.update(
            submitted=client.submitted,
            submitted_by_kind=dict(client.kinds),
            answers=dict(client.answers),
            jobs_per_s=round(figures["terminal_once"] / settled_s, 2) if settled_s else 0.0,
            startup_s=round(startup, 1),
            client_s=round(client_s, 1),
            settle_s=round(settled_s - client_s, 1),
            seed=seed,
            topic_replicas=stack.replicas,
            machine=machine(),
            load_avg_at_start=load_at_start,
            load_avg_at_end=round(os.getloadavg()[0], 2),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            details=details,
        )
        return figures
    finally:
        if follower is not None:
            with contextlib.suppress(Exception):
                await follower.stop()
        stack.close()
        log(f"stack stopped after {time.monotonic() - began:.0f}s")


def machine() -> str:
    """CPU model and count, memory and Python: the machine line of a recorded run."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {model}, {memory:.0f} GB, Python {platform.python_version()}"


def _report(result: dict[str, Any]) -> str:
    keys = [
        *("accepted", "terminal_once", "lost", "duplicate_terminal", "duplicate_emails", "emails_missing"),
        *(
            "zip_ok",
            "zips_checked",
            "zip_bad",
            "unexpected_outcome",
            "identical_pairs",
            "identical_shared_zip",
            "downloads_checked",
            "downloads_ok",
            "store",
            "jobs_per_worker",
        ),
        *("submitted", "jobs_per_s", "duration_s"),
    ]
    lines = [f"{k:>22}: {result.get(k)}" for k in keys]
    lines.append(f"{'faults':>22}: {result['faults']}")
    lines.append(f"{'answers':>22}: {result['answers']}")
    for name in (
        "lost",
        "duplicate_terminal",
        "emails_missing",
        "duplicate_emails",
        "zip_bad",
        "unexpected_outcome",
        "downloads_bad",
    ):
        items = result["details"].get(name) or {}
        if items:
            lines.append(f"\n{name} ({len(items)}):")
            for job_id, what in list(items.items())[:20]:
                lines.append(f"  {job_id}: {orjson.dumps(what).decode()}")
    lines.append("\nfaults injected:")
    lines += [f"  {f['at_s']:>6}s {f['kind']:<12} {f['detail']}" for f in result["details"]["fault_log"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; print the report (or one JSON object); exit 1 on a lost or duplicated job."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="at most 5 minutes, >= 150 jobs, each fault once"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds the client submits (1800)")
    parser.add_argument("--jobs", type=int, default=None, help="submissions over the duration (2000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, store, data)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the mix and the nemesis")
    parser.add_argument(
        "--store", choices=STORES, default="folder", help="the package store: a shared folder or s3proxy"
    )
    parser.add_argument("--session-timeout", type=float, default=6.0, help="workers' SESSION_TIMEOUT")
    args = parser.parse_args(argv)
    began = time.monotonic()
    # The campaign's own consumer sees every broker it loses: expected here, noise in the report.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def run() -> dict[str, Any]:
        # SIGTERM ends the campaign like Ctrl-C: the stack is stopped on the way out.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await campaign(args)

    try:
        result = asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; everything started was stopped")
        return 130
    except Exception as exc:
        log(f"the campaign failed: {exc!r}")
        raise SystemExit(2) from exc
    result["duration_s"] = round(time.monotonic() - began, 1)
    print(orjson.dumps(result).decode() if args.json else _report(result), flush=True)
    return 1 if result["lost"] or result["duplicate_terminal"] else 0


if __name__ == "__main__":
    sys.exit(main())
