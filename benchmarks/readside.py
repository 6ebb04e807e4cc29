"""Read-side benchmark: projector throughput, the ingress's memory against the length of the history, and
the latency of the read endpoints.

    python -m benchmarks.readside --events 1000000 --json [--bootstrap HOST:PORT] [--queries 2000]

Runs on one real Kafka broker (`--bootstrap`, else `KAFKA_BOOTSTRAP_SERVERS`, else one started with
`packager.dev.kafka` and stopped at the end):

1. `history`: a realistic history of `--events` events under a fresh topic prefix, and one of 1,000 under
   another: jobs requested by many requesters (about one per 25 events) for many resources (one per 40, a
   few of them popular), each going through queued, started, 0-3 progress, completed (or failed, one in
   ten), emailed (or the email failed, one in thirty); one job in five is a cache hit (completed at once from
   another job's ZIP), one in twenty fails before it is queued. Produced in batches (acks=1, 20 ms linger).
2. `projector_events_per_s`: the SQL projector (`packager.adapters.projector.run_projector`,
   `until_caught_up`) into SQLite (a file in a temporary folder) and PostgreSQL (`packager dev postgres`, its
   own cluster) when that module exists; on a branch without it, `sqlite` and `postgres` are null and
   `in_memory_readmodel` is the current read side's fold (`packager.cli.replay.rebuild`: Kafka, typed decode
   and the in-memory `ReadModel`), labelled so in `projector`.
3. `ingress_rss_mb`: `python -m packager ingress` started on each history with no snapshot, so it folds it
   all; its peak RSS (VmHWM) once `/health/ready` answers 200 and the queries ran. `rss_ratio`: large ÷ small.
4. `query_p50_ms`, `query_p99_ms`: a mix of requests against the ingress on the large history, `--concurrency`
   at a time: `/statistics` (all, and one resource), `/statistics/requests` and `/statistics/errors` (filtered
   by resource or requester, paged), `/status`, `GET /jobs/{id}` of random jobs; `query_by_endpoint` breaks
   them down.

Also `decode_us_per_event`: the typed decode (`packager.domain.events.decode`) of up to 50,000 of the
generated records, best of 3.
Prints one JSON object (on one line with `--json`, else indented).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from packager.adapters.kafka_log import Topics, ensure_topics
from packager.core.settings import Settings, load_settings
from packager.domain import events as ev

ROOT = Path(__file__).resolve().parents[1]
SECRET = "readside-benchmark-secret-0123456789"
SMALL = 1_000
START = datetime(2026, 1, 1, tzinfo=UTC)


# --- the history ------------------------------------------------------------------------------------------


def _at(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def history(events: int, seed: int = 7) -> Iterator[tuple[str, str, str, bytes]]:
    """(topic suffix, key, job id, encoded event) of a realistic history, exactly `events` records long."""
    rng = random.Random(seed)
    resources = max(20, events // 40)
    requesters = max(50, events // 25)
    written, n, clock = 0, 0, 0.0
    while written < events:
        # A few resources are asked for far more often than the rest (a Pareto draw, capped).
        resource_id = f"res-{min(resources - 1, int(rng.paretovariate(1.2)) - 1)}"
        if rng.random() < 0.5:
            resource_id = f"res-{rng.randrange(resources)}"
        email = f"user{rng.randrange(requesters)}@{rng.choice(('example.org', 'nhm.ac.uk', 'gbif.org'))}"
        job_id, key = str(uuid.UUID(int=rng.getrandbits(128))), f"ck-{n % (resources * 3)}"
        common = {
            "cache_key": key,
            "resource_id": resource_id,
            "email": email,
            "ckan_host": "data.example.org",
        }
        clock += rng.expovariate(2.0)  # about two requests a second
        t = clock
        job: list[tuple[str, ev.Event, float]] = [
            (
                "requests",
                ev.PackageRequested(
                    kind=rng.choice(("datastore", "datastore", "url", "dwc")),
                    request={"resource_id": resource_id, "format": "csv", "q": rng.choice(("", "Quercus"))},
                    **common,
                ),
                t,
            )
        ]
        shape = rng.random()
        terminal: ev.Event
        if shape < 0.05:
            terminal = ev.PackageFailed(
                **common, error="The resource is not in the datastore", error_type="X"
            )
        elif shape < 0.25:
            terminal = _completed(common, job_id, rng, cached_from=f"job-{rng.randrange(n + 1)}")
        else:
            lane = "fast" if rng.random() < 0.8 else "slow"
            total = rng.randrange(100, 200_000)
            job.append(("events", ev.PackageQueued(key, lane, 1), t + 0.01))
            job.append(("events", ev.PackageStarted(key, lane, "w1:7", 1, _at(t + 300)), t + 0.2))
            for step in range(rng.randrange(4)):
                done = total * (step + 1) // 4
                job.append(("events", ev.PackageProgress(key, done, total, done * 80, None, 1), t + 1 + step))
            if rng.random() < 0.1:
                terminal = ev.PackageFailed(**common, error="CKAN refused the query", error_type="CkanError")
            else:
                terminal = _completed(common, job_id, rng, cached_from="")
        t += 6
        job.append(("events", terminal, t))
        about = terminal.TYPE
        if rng.random() < 1 / 30:
            job.append(("events", ev.EmailFailed(key, about, "550 mailbox unavailable", 3), t + 1))
        else:
            job.append(("events", ev.EmailSent(key, about, f"<{job_id}@packager>", 1), t + 1))
        for suffix, payload, when in job[: events - written]:
            yield suffix, key, job_id, ev.encode(ev.envelope(job_id, payload, occurred_at=_at(when)))
        written += len(job)
        n += 1


def _completed(common: dict[str, str], job_id: str, rng: random.Random, *, cached_from: str) -> ev.Event:
    rows = rng.randrange(1, 200_000)
    return ev.PackageCompleted(
        **common,
        doi="",
        lane="cache" if cached_from else "fast",
        zip_file_name=f"{job_id}.zip",
        size=rows * 90,
        sha256="0" * 64,
        rows=rows,
        started_at="",
        finished_at="",
        cached_from=cached_from,
    )


async def produce(bootstrap: str, topics: Topics, events: int, partitions: int) -> dict[str, Any]:
    """Write a history of `events` records; its job ids (a sample) and the decode cost met on the way."""
    await ensure_topics(bootstrap, topics, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1_048_576)
    await producer.start()
    jobs: list[str] = []
    sample: list[bytes] = []  # records to time the decode on, after producing (not between sends)
    started = time.perf_counter()
    try:
        pending = []
        for suffix, key, job_id, value in history(events):
            if suffix == "requests" and len(jobs) < 100_000:
                jobs.append(job_id)
            if len(sample) < 50_000:
                sample.append(value)
            topic = topics.requests if suffix == "requests" else topics.events
            pending.append(await producer.send(topic, value=value, key=key.encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = time.perf_counter() - started
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for value in sample:
            ev.decode(value)
        best = min(best, time.perf_counter() - t)
    return {"jobs": jobs, "seconds": seconds, "decode_us_per_event": best / max(1, len(sample)) * 1e6}


# --- the projector ----------------------------------------------------------------------------------------


async def projector_rates(settings: Settings, workdir: Path, events: int) -> dict[str, Any]:
    """Events/s of the SQL projector into SQLite and PostgreSQL, or of the in-memory fold without one."""
    try:
        from packager.adapters.projector import run_projector  # type: ignore[import-not-found]
    except ImportError:
        from packager.cli.replay import rebuild

        started = time.perf_counter()
        _, folded = await rebuild(settings)
        rate = folded / (time.perf_counter() - started)
        return {
            "projector": "no SQL projector on this branch: in_memory_readmodel is the current read side's "
            "fold (packager.cli.replay.rebuild: Kafka, typed decode, in-memory ReadModel)",
            "projector_events_per_s": {"sqlite": None, "postgres": None, "in_memory_readmodel": round(rate)},
        }
    from packager.dev import postgres

    rates: dict[str, float | None] = {}
    sqlite = dataclasses.replace(settings, database_url=f"sqlite:///{workdir / 'views.sqlite3'}")
    started = time.perf_counter()
    applied = await run_projector(sqlite, until_caught_up=True)
    rates["sqlite"] = round(applied / (time.perf_counter() - started))
    server = await asyncio.to_thread(
        postgres.start, workdir / "postgres", log=lambda m: print(m, file=sys.stderr)
    )
    try:
        on_pg = dataclasses.replace(settings, database_url=server.url())
        started = time.perf_counter()
        applied = await run_projector(on_pg, until_caught_up=True)
        rates["postgres"] = round(applied / (time.perf_counter() - started))
    finally:
        await asyncio.to_thread(postgres.stop, workdir / "postgres")
    return {"projector": "packager.adapters.projector.run_projector", "projector_events_per_s": rates}


# --- the ingress ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def ingress(bootstrap: str, prefix: str, partitions: int, workdir: Path) -> Iterator[tuple[int, int]]:
    """`python -m packager ingress` on `prefix` with an empty state folder: (port, pid); always stopped."""
    from packager.dev.kafka import free_port

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PACKAGER_SECRET": SECRET,
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PACKAGER_TOPIC_PREFIX": prefix,
        "PACKAGER_PARTITIONS": str(partitions),
        "PACKAGER_STORE_DIRECTORY": str(workdir / f"store-{prefix}"),
        "PACKAGER_PORT": str(port),
        "PACKAGER_LOG_LEVEL": "WARNING",
    }
    with open(workdir / f"ingress-{prefix}.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "packager", "ingress"], env=env, stdout=out, stderr=out
        )
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def wait_ready(port: int, timeout: float) -> float:  # noqa: ASYNC109
    """Seconds until the ingress's /health/ready answers 200 (its read model caught up with the log)."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while time.monotonic() - started < timeout:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"http://127.0.0.1:{port}/health/ready") as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the ingress on port {port} was not ready within {timeout:.0f}s")


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def query_mix(jobs: list[str], count: int, seed: int = 11) -> list[tuple[str, str, str, dict[str, str]]]:
    """(label, method, path, form) of `count` read requests, in a fixed random order."""
    rng = random.Random(seed)
    resources = [f"res-{i}" for i in range(20)]
    mix: list[tuple[str, str, str, dict[str, str]]] = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.35:
            mix.append(("jobs", "GET", f"/jobs/{rng.choice(jobs)}", {}))
        elif kind < 0.45:
            mix.append(("status", "POST", "/status", {}))
        elif kind < 0.55:
            mix.append(("statistics", "POST", "/statistics", {}))
        elif kind < 0.65:
            mix.append(("statistics", "POST", "/statistics", {"resource_id": rng.choice(resources)}))
        elif kind < 0.75:
            page = {"offset": str(rng.randrange(0, 500)), "limit": "100"}
            mix.append(("statistics/requests", "POST", "/statistics/requests", page))
        elif kind < 0.85:
            by = {"resource_id": rng.choice(resources), "limit": "50"}
            mix.append(("statistics/requests", "POST", "/statistics/requests", by))
        elif kind < 0.92:
            who = {"email": f"user{rng.randrange(50)}@example.org", "limit": "50"}
            mix.append(("statistics/requests", "POST", "/statistics/requests", who))
        else:
            mix.append(
                ("statistics/errors", "POST", "/statistics/errors", {"resource_id": rng.choice(resources)})
            )
    return mix


async def run_queries(
    port: int, mix: list[tuple[str, str, str, dict[str, str]]], concurrency: int
) -> dict[str, list[float]]:
    """Latency (ms) of every request of `mix`, by label; every answer must be a 200 (a /jobs 404 too)."""
    latencies: dict[str, list[float]] = {}
    queue = list(reversed(mix))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def client() -> None:
            while queue:
                label, method, path, form = queue.pop()
                started = time.perf_counter()
                data = {"secret": SECRET, **form} if method == "POST" else None
                async with http.request(method, base + path, data=data) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{method} {path} answered {resp.status}")
                latencies.setdefault(label, []).append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))] if ordered else float("nan")
    )


# --- orchestration ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def broker(bootstrap: str | None, workdir: Path) -> Iterator[str]:
    """The given broker, or one started for the run (stopped at the end)."""
    if bootstrap:
        yield bootstrap
        return
    from packager.dev import kafka

    state = workdir / "kafka"
    started = kafka.start(state, log=lambda m: print(m, file=sys.stderr))
    try:
        yield started.bootstrap_servers
    finally:
        kafka.stop(state)


async def measure(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    """Every part of the benchmark; the JSON object it prints."""
    small, large = f"rs{uuid.uuid4().hex[:8]}", f"rl{uuid.uuid4().hex[:8]}"
    await produce(bootstrap, Topics(small), SMALL, args.partitions)
    produced = await produce(bootstrap, Topics(large), args.events, args.partitions)
    settings = load_settings(
        {}, kafka_bootstrap_servers=bootstrap, topic_prefix=large, partitions=args.partitions, secret=SECRET
    )
    result: dict[str, Any] = {
        "events": args.events,
        "produce_seconds": round(produced["seconds"], 2),
        "decode_us_per_event": round(produced["decode_us_per_event"], 2),
    }
    result.update(await projector_rates(settings, workdir, args.events))
    rss: dict[str, float] = {}
    for label, prefix in (("small", small), ("large", large)):
        with ingress(bootstrap, prefix, args.partitions, workdir) as (port, pid):
            ready = await wait_ready(port, timeout=max(120.0, args.events / 2000))
            if label == "large":
                result["ingress_catch_up_seconds"] = round(ready, 2)
                mix = query_mix(produced["jobs"], args.queries)
                await run_queries(port, mix[: max(1, len(mix) // 10)], args.concurrency)  # warm-up
                latencies = await run_queries(port, mix, args.concurrency)
            rss[label] = round(peak_rss_mb(pid), 1)
    every = [v for values in latencies.values() for v in values]
    result["ingress_rss_mb"] = rss
    result["rss_ratio"] = round(rss["large"] / rss["small"], 2)
    result["query_p50_ms"] = round(percentile(every, 0.5), 2)
    result["query_p99_ms"] = round(percentile(every, 0.99), 2)
    result["query_by_endpoint"] = {
        label: {"n": len(v), "p50_ms": round(percentile(v, 0.5), 2), "p99_ms": round(percentile(v, 0.99), 2)}
        for label, v in sorted(latencies.items())
    }
    result["queries"] = len(every)
    result["concurrency"] = args.concurrency
    return result


def main() -> None:
    """Parse the arguments, run, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="readside-bench-") as tmp,
        broker(args.bootstrap, Path(tmp)) as servers,
    ):
        result = asyncio.run(measure(args, servers, Path(tmp)))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
