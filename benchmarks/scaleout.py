"""Scale-out: completed jobs per second for the same batch of I/O-bound jobs, by workers and by concurrency.

    python -m benchmarks.scaleout --json [--jobs 144] [--rows 2000] [--delay 0.05] [--bootstrap HOST:PORT]

A batch of `--jobs` distinct `/package_datastore` jobs (distinct `doi`, so none is a cache hit) of `--rows`
rows each, read from the project's CKAN server (`packager dev ckan`) with `--delay` seconds added to every
page, as a remote portal has. The same batch runs against:

- 1, 2 and 3 worker processes, each with `WORKER_CONCURRENCY` 1 (one build per lane at a time);
- one worker with `WORKER_CONCURRENCY` 4.

Each configuration gets fresh topics (6 partitions, so 3 workers get 2 each) and waits until its workers
have joined; a warm-up job per worker is not counted. The clock runs from the first request of the batch to
its last email (an aiosmtpd server in this process). `jobs_per_s` is jobs ÷ that time. The one-worker
concurrency-1 configuration is the baseline of both ratios (`workers_3_vs_1`, `concurrency_4_vs_1`).

Everything but the client and the SMTP server runs as separate processes on one real Kafka broker
(`--bootstrap`, `KAFKA_BOOTSTRAP_SERVERS`, else one started here and stopped at the end). Prints one JSON
object: `jobs`, `rows`, `delay_s`, `jobs_per_s` (`workers_1`, `workers_2`, `workers_3`, `concurrency_4`),
`seconds` (the same keys), `workers_3_vs_1`, `concurrency_4_vs_1`, `machine`, `load_avg_at_start`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .chaos import machine
from .load import _broker, _process, _service_env, _wait_for_url
from .load_jobs import _Mailbox, submit_datastore, wait_workers_ready

PARTITIONS = 6
CONFIGURATIONS = {  # name -> (worker processes, WORKER_CONCURRENCY)
    "workers_1": (1, 1),
    "workers_2": (2, 1),
    "workers_3": (3, 1),
    "concurrency_4": (1, 4),
}


async def builds_per_worker(bootstrap: str, prefix: str, job_ids: set[str]) -> list[int]:
    """How many of `job_ids` each worker started (`PackageStarted.worker`), busiest first."""
    from aiokafka import AIOKafkaConsumer

    from packager.adapters.kafka_log import Topics
    from packager.adapters.readside import topic_partitions
    from packager.domain.events import PackageStarted, decode

    partitions = await topic_partitions(bootstrap, [Topics(prefix).events])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    counts: dict[str, int] = {}
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError("could not read the events topic to its end")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = decode(record.value or b"")
                    if isinstance(event.payload, PackageStarted) and event.job_id in job_ids:
                        worker = event.payload.worker
                        counts[worker] = counts.get(worker, 0) + 1
    finally:
        await consumer.stop()
    return sorted(counts.values(), reverse=True)


def run_configuration(
    name: str, bootstrap: str, workdir: Path, api_url: str, args: argparse.Namespace, log: Any
) -> tuple[float, list[int]]:
    """Seconds from the first request of the batch to its last email, for one configuration, and the
    builds each worker started (a job built again after a lost lease counts twice)."""
    from aiosmtpd.controller import Controller

    from packager.dev.kafka import free_port

    workers, concurrency = CONFIGURATIONS[name]
    mailbox = _Mailbox()
    smtp_port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    prefix = f"scale{uuid.uuid4().hex[:8]}"
    ingress_port = free_port()
    env = {
        **_service_env(bootstrap, workdir, prefix, ingress_port, smtp_port),
        "PACKAGER_PARTITIONS": str(PARTITIONS),
        "PACKAGER_WORKER_CONCURRENCY": str(concurrency),
        "PACKAGER_PAGE_SIZE": str(args.page_size),
    }
    logs = workdir / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)

    def request(doi: str) -> str:
        return submit_datastore(ingress_port, api_url, doi, limit=str(args.rows))

    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_process(["-m", "packager", "ingress"], env, logs / "ingress.log"))
            worker_logs = [logs / f"worker-{n}.log" for n in range(workers)]
            procs = [
                stack.enter_context(
                    _process(["-m", "packager", "worker"], {**env, "PACKAGER_METRICS_PORT": "0"}, path)
                )
                for path in worker_logs
            ]
            _wait_for_url(f"http://127.0.0.1:{ingress_port}/health/live")
            wait_workers_ready(worker_logs, procs)
            # Warm-up: connections, the first assignment's recovery. One job per partition, not counted.
            warm = [request(f"10.0/warm.{name}.{n}") for n in range(PARTITIONS)]
            for job_id in warm:
                mailbox.wait(job_id, timeout=300)
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                jobs = list(pool.map(request, [f"10.0/{name}.{n}" for n in range(args.jobs)]))
            last = max(mailbox.wait(job_id, timeout=600) for job_id in jobs)
            seconds = last - started
            split = asyncio.run(builds_per_worker(bootstrap, prefix, set(jobs)))
            log(json.dumps({"configuration": name, "seconds": round(seconds, 2), "builds_per_worker": split}))
            return seconds, split
    finally:
        controller.stop()


def _ratio(per_s: dict[str, float], name: str, base: str) -> float | None:
    return round(per_s[name] / per_s[base], 2) if name in per_s and base in per_s else None


def main() -> None:
    """Run every configuration on the same batch and print one JSON object."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=144, help="jobs in the measured batch")
    parser.add_argument("--rows", type=int, default=2000, help="rows per job")
    parser.add_argument("--page-size", type=int, default=250, help="rows per CKAN page")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added to every CKAN page")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--only", default="", help="comma-separated configurations (default: all)")
    parser.add_argument("--logs", default="", help="keep the processes' logs in this folder")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args()
    names = [n for n in CONFIGURATIONS if not args.only or n in args.only.split(",")]

    def log(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    from packager.dev.kafka import free_port

    load_at_start = round(os.getloadavg()[0], 2)
    seconds: dict[str, float] = {}
    splits: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        workdir = Path(tmp)
        (workdir / "logs").mkdir()
        ckan_port = free_port()
        api_url = f"http://127.0.0.1:{ckan_port}/api/3/action/datastore_search"
        ckan_argv = ["-m", "packager", "dev", "ckan", "--rows", str(args.rows), "--port", str(ckan_port)]
        ckan_argv += ["--slow-page-delay", str(args.delay)]
        with (
            _broker(args.bootstrap, workdir) as bootstrap,
            _process(ckan_argv, {}, workdir / "logs" / "ckan.log"),
        ):
            _wait_for_url(api_url + "?resource_id=synthetic&limit=0")
            for name in names:
                seconds[name], splits[name] = run_configuration(name, bootstrap, workdir, api_url, args, log)
        if args.logs:
            shutil.copytree(workdir / "logs", args.logs, dirs_exist_ok=True)
    per_s = {name: round(args.jobs / s, 3) for name, s in seconds.items()}
    result = {
        "jobs": args.jobs,
        "rows": args.rows,
        "delay_s": args.delay,
        "jobs_per_s": per_s,
        "seconds": {name: round(s, 2) for name, s in seconds.items()},
        "workers_3_vs_1": _ratio(per_s, "workers_3", "workers_1"),
        "concurrency_4_vs_1": _ratio(per_s, "concurrency_4", "workers_1"),
        "builds_per_worker": splits,
        # Jobs go to partitions by the hash of their cache key, and each worker builds only its partitions'
        # jobs: with perfect scaling, 3 workers finish when the busiest does, at most this many times faster.
        "workers_3_split_bound": round(args.jobs / max(splits["workers_3"]), 2)
        if "workers_3" in splits
        else None,
        "machine": machine(),
        "load_avg_at_start": load_at_start,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
