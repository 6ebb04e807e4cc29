"""The read side at scale: projector throughput, the ingress's memory, and query latency on the views.

    python -m benchmarks.readside --events 1000000 --json [--bootstrap HOST:PORT] [--no-postgres]
                                  [--projectors K]

1. A generated history of N events (jobs of six events: requested, queued, started, progress, completed or
   failed, emailed; 200 resources, 3,000 requesters; see `benchmarks.replay.job_events`) is written to a
   fresh topic prefix on a real broker (`--bootstrap`, `KAFKA_BOOTSTRAP_SERVERS`, else one started here).
2. `packager projector --processes K --until-caught-up` (K shares of the partitions, `--projectors`, 2 by
   default) folds it into a fresh SQLite file, then into a fresh database on a PostgreSQL started with
   `packager dev postgres` (unless `--no-postgres`): events per second for each, from the command's start
   to its end. Beside it, one projector in this process (`run_projector(until_caught_up=True)`) into
   SQLite, for the ratio the shares give in the same run.
3. An ingress process reads the SQLite views of a 1,000-event history (`small`) and of the N-event one
   (`large`), answering the same query mix; its peak RSS (VmHWM) for each, and their ratio.
4. The latency of that mix at N, one request at a time: `/statistics`, `/statistics` for one resource,
   `/statistics/requests` (first page, a deep page, by resource, by requester), `/statistics/errors`,
   and `/jobs/{id}` of random jobs (`/status` is left out: its worker count is a question to Kafka).

Also `decode_us_per_event`: the typed decode (`packager.domain.events.decode`, the projector's boundary) of
up to 50,000 records of the same generated history, best of 3, in this process.

Prints one JSON object with `events`, `projector_events_per_s` (`sqlite`, `postgres`; and
`projector_events_per_cpu_s`, per second of the projectors' own CPU, all processes and threads),
`projector_processes` (K), `projector_events_per_s_one_process` (`sqlite`, when K > 1), `ingress_rss_mb`
(`small`, `large`), `rss_ratio`, `query_p50_ms`, `query_p99_ms`, `decode_us_per_event`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.load import _peak_rss_mb, _percentile, _wait_for_url
from benchmarks.replay import PER_JOB, job_events, produce
from packager.adapters.kafka_log import Topics
from packager.adapters.projector import run_projector
from packager.adapters.viewdb import ViewDatabase
from packager.core.settings import Settings, load_settings
from packager.dev import kafka as dev_kafka
from packager.dev import postgres as dev_postgres
from packager.dev.processes import free_port
from packager.domain.events import decode

SECRET = "readside-benchmark-secret-0123456789"
ROOT = Path(__file__).resolve().parents[1]
QUERIES = 400


def _settings(bootstrap: str, prefix: str, url: str) -> Settings:
    return load_settings(
        {}, secret=SECRET, kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, database_url=url
    )


async def _history(bootstrap: str, events: int) -> str:
    prefix = f"rs{uuid.uuid4().hex[:8]}"
    await produce(bootstrap, Topics(prefix), events, 8)
    return prefix


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _project(bootstrap: str, prefix: str, url: str) -> tuple[int, float, float]:
    """Events applied, wall-clock seconds, and this process's CPU-seconds (all threads) doing it."""
    await asyncio.to_thread(ViewDatabase(url).reset)
    started, cpu = time.perf_counter(), _cpu_seconds()
    applied = await run_projector(_settings(bootstrap, prefix, url), until_caught_up=True)
    return applied, time.perf_counter() - started, _cpu_seconds() - cpu


def _service_env(bootstrap: str, prefix: str, url: str) -> dict[str, str]:
    """The environment of a `packager` process on the history `prefix` and the views at `url`."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PACKAGER_SECRET": SECRET,
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PACKAGER_TOPIC_PREFIX": prefix,
        "PACKAGER_DATABASE_URL": url,
        "PACKAGER_LOG_LEVEL": "WARNING",
    }


async def _project_in(processes: int, bootstrap: str, prefix: str, url: str) -> tuple[int, float, float]:
    """`_project` by `packager projector --processes K --until-caught-up`: events applied, wall-clock seconds
    from the command's start to its end, and the CPU-seconds of its processes."""
    if processes == 1:
        return await _project(bootstrap, prefix, url)
    await asyncio.to_thread(ViewDatabase(url).reset)
    env = _service_env(bootstrap, prefix, url)
    command = [sys.executable, "-m", "packager", "projector", "--processes", str(processes)]
    started, cpu = time.perf_counter(), _cpu_seconds(resource.RUSAGE_CHILDREN)
    done = await asyncio.to_thread(
        subprocess.run, [*command, "--until-caught-up"], env=env, capture_output=True, text=True, check=False
    )
    seconds, cpu = time.perf_counter() - started, _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    applied = sum(int(line.split()[0]) for line in done.stdout.splitlines() if "events applied" in line)
    return applied, seconds, cpu


@contextlib.contextmanager
def _ingress(bootstrap: str, prefix: str, url: str, logs: Path) -> Iterator[tuple[int, int]]:
    """An ingress process on the views at `url`: (port, pid)."""
    port = free_port()
    env = {**_service_env(bootstrap, prefix, url), "PACKAGER_PORT": str(port)}
    with open(logs / f"ingress-{port}.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "packager", "ingress"], env=env, stdout=out, stderr=out
        )
    try:
        _wait_for_url(f"http://127.0.0.1:{port}/health/live")
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _mix(jobs: int, rng: random.Random) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, form) of one round of the query mix."""
    job = str(uuid.UUID(int=rng.randrange(max(1, jobs))))
    resource = f"res-{rng.randrange(200)}"
    who = f"user{rng.randrange(3000)}@example.org"
    return [
        ("POST", "/statistics", {}),
        ("POST", "/statistics", {"resource_id": resource}),
        ("POST", "/statistics/requests", {}),
        ("POST", "/statistics/requests", {"offset": "5000", "limit": "100"}),
        ("POST", "/statistics/requests", {"resource_id": resource}),
        ("POST", "/statistics/requests", {"email": who}),
        ("POST", "/statistics/errors", {"resource_id": resource}),
        ("GET", f"/jobs/{job}", {}),
    ]


async def _queries(port: int, jobs: int, rounds: int) -> list[float]:
    """Latencies (ms) of `rounds` rounds of the mix, one request at a time."""
    rng = random.Random(7)
    latencies: list[float] = []
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(rounds):
            for method, path, form in _mix(jobs, rng):
                started = time.perf_counter()
                if method == "GET":
                    async with http.get(base + path) as resp:
                        await resp.read()
                else:
                    async with http.post(base + path, data={"secret": SECRET, **form}) as resp:
                        await resp.read()
                if resp.status not in (200, 404):
                    raise RuntimeError(f"{path} answered {resp.status}: {(await resp.read())[:300]!r}")
                latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def decode_us_per_event(events: int) -> float:
    """Microseconds the typed decode takes per record of the generated history (up to 50,000, best of 3)."""
    sample = [value for n in range(max(1, min(events, 50_000) // PER_JOB)) for _, _, value in job_events(n)]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for value in sample:
            decode(value)
        best = min(best, time.perf_counter() - started)
    return best / len(sample) * 1e6


async def run(args: argparse.Namespace, bootstrap: str, scratch: Path) -> dict[str, Any]:
    """Every measurement; the JSON result."""
    small_prefix = await _history(bootstrap, 1000)
    large_prefix = await _history(bootstrap, args.events)
    small_url = f"sqlite:///{scratch / 'small.sqlite3'}"
    large_url = f"sqlite:///{scratch / 'large.sqlite3'}"
    await _project(bootstrap, small_prefix, small_url)
    one: dict[str, float] = {}
    if args.projectors > 1:  # one projector first, on the same history, for the ratio
        one_applied, one_seconds, _ = await _project(bootstrap, large_prefix, large_url)
        one["sqlite"] = round(one_applied / one_seconds)
    applied, seconds, cpu = await _project_in(args.projectors, bootstrap, large_prefix, large_url)
    rates: dict[str, float | None] = {"sqlite": round(applied / seconds), "postgres": None}
    # Per second of the projectors' own CPU: what idle cores would give, whatever else the machine runs.
    per_cpu: dict[str, float | None] = {"sqlite": round(applied / cpu), "postgres": None}
    if not args.no_postgres:
        server = await asyncio.to_thread(dev_postgres.start, scratch / "postgres", log=lambda m: None)
        try:
            pg_applied, pg_seconds, pg_cpu = await _project_in(
                args.projectors, bootstrap, large_prefix, server.url()
            )
            rates["postgres"] = round(pg_applied / pg_seconds)
            per_cpu["postgres"] = round(pg_applied / pg_cpu)
        finally:
            await asyncio.to_thread(dev_postgres.stop, scratch / "postgres")
    rss: dict[str, float] = {}
    latencies: list[float] = []
    for name, prefix, url, events in (
        ("small", small_prefix, small_url, 1000),
        ("large", large_prefix, large_url, args.events),
    ):
        with _ingress(bootstrap, prefix, url, scratch) as (port, pid):
            measured = await _queries(port, events // PER_JOB, QUERIES // 8 + 1)
            rss[name] = round(_peak_rss_mb(pid), 1)
            if name == "large":
                latencies = measured
    return {
        "events": applied,
        "projector_events_per_s": rates,
        "projector_events_per_cpu_s": per_cpu,
        "projector_processes": args.projectors,
        **({"projector_events_per_s_one_process": one} if one else {}),
        "ingress_rss_mb": rss,
        "rss_ratio": round(rss["large"] / rss["small"], 3),
        "query_p50_ms": round(_percentile(latencies, 0.5), 2),
        "query_p99_ms": round(_percentile(latencies, 0.99), 2),
        "queries": len(latencies),
        "decode_us_per_event": round(decode_us_per_event(args.events), 2),
    }


def main() -> None:
    """Parse the options, find or start a broker, run, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""))
    parser.add_argument("--no-postgres", action="store_true", help="measure SQLite only")
    parser.add_argument(
        "--projectors", type=int, default=2, help="projector processes, each a share of the partitions"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="readside-") as tmp:
        scratch = Path(tmp)
        broker_dir = scratch / "kafka"
        bootstrap = args.bootstrap
        if not bootstrap:
            bootstrap = dev_kafka.start(broker_dir, log=lambda m: None).bootstrap_servers
        try:
            result = asyncio.run(run(args, bootstrap, scratch))
        finally:
            if not args.bootstrap:
                dev_kafka.stop(broker_dir)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
