"""Load on the running service: ingress throughput and latency, and request-to-email latency of small jobs.

    python -m benchmarks.load --requests 20000 --concurrency 64 --repeat 3 --json

Everything runs as separate processes on one real Kafka broker (`KAFKA_BOOTSTRAP_SERVERS` or `--bootstrap`,
else one started with `packager.dev.kafka` and stopped at the end):

1. `ingress`: `python -m packager ingress` (acks=all, read side on) takes valid form-encoded
   `POST /package_url` requests from a client process (aiohttp, `--concurrency` connections), so the client's
   CPU is not counted against the server's loop. No worker runs, so only the ingress and the broker work.
2. `bare`: the same client load against a trivial aiohttp handler (reads the body, answers a small JSON) in
   its own process. The two alternate (bare, ingress, bare, ingress, ...) and the medians of `--repeat`
   rounds are reported, with the ratio ingress ÷ bare. Each server's CPU time (user + system, from
   /proc/<pid>/stat) over each client run, divided by the requests it answered in that run (warm-up
   included), gives `ingress_cpu_ms_per_request` and `bare_cpu_ms_per_request` (CPU-seconds per 1,000
   requests) and `cpu_ratio` (bare ÷ ingress): unlike requests/s, they do not count time spent waiting for a
   core, so they move less when other processes share the machine.
3. `job`: request-to-email latency of a `/package_datastore` job of `--job-rows` rows from the project's CKAN
   server (`packager dev ckan`), with a worker process and an aiosmtpd server in this process; jobs one after
   another, each request distinct (its `doi`), so none is a cache hit.
4. `cache_hit`: the same for a request identical to one already completed (3 and 4: `benchmarks.load_jobs`).

`--limits` adds a second ingress with every fair limit set high enough that nothing is refused (each
request still runs the check), and a projector writing the views it reads; `ingress_limits` then alternates
with the other two (bare, ingress, ingress_limits, ...), and `limits_ratio` is its requests/s ÷ the plain
ingress's. Both ingresses append the same requester's requests to one log, so the views it counts grow.

Peak RSS (VmHWM) of the ingress and the worker is read from /proc before they stop. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SECRET = "load-benchmark-secret-0123456789"
ROOT = Path(__file__).resolve().parents[1]
# Every fair limit on, above what one run can reach: each request is checked, none refused.
GENEROUS_LIMITS = {
    "PACKAGER_MAX_ACTIVE_JOBS_PER_REQUESTER": "1000000",
    "PACKAGER_MAX_REQUESTS_PER_HOUR_PER_REQUESTER": "1000000",
    "PACKAGER_MAX_ACTIVE_JOBS_PER_RESOURCE": "1000000",
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (/proc/<pid>/stat), in seconds."""
    # The command name (field 2) may hold spaces: count the fields after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for_url(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --- the client (its own process) ------------------------------------------------------------------------


async def _client(url: str, body: bytes, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    sent = [0]
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(record: bool) -> None:
            started = time.perf_counter()
            n = sent[0] = sent[0] + 1  # distinct resource ids: requests spread over the partitions
            async with session.post(url, data=body.replace(b"__N__", b"%d" % n), headers=headers) as resp:
                answer = await resp.read()
                ok = resp.status == 200 and b'"success":true' in answer.replace(b" ", b"")
            if record:
                latencies.append(time.perf_counter() - started)
                if not ok:
                    failures[str(resp.status)] = failures.get(str(resp.status), 0) + 1

        async def loop(count: int, record: bool, counter: list[int]) -> None:
            while counter[0] < count:
                counter[0] += 1
                await one(record)

        # Warm-up: open every connection and let the server settle; not measured.
        counter = [0]
        await asyncio.gather(*(loop(max(warmup, concurrency), False, counter) for _ in range(concurrency)))
        counter = [0]
        started = time.perf_counter()
        await asyncio.gather(*(loop(requests, True, counter) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "warmup_requests": max(warmup, concurrency),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "failures": failures,
    }


def _run_client(url: str, body: str, requests: int, concurrency: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--role",
            "client",
            "--url",
            url,
            "--body",
            body,
            "--requests",
            str(requests),
            "--concurrency",
            str(concurrency),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- the bare server (its own process) --------------------------------------------------------------------


def _bare_server(port: int) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"success": True, "status": "success"})

    app = web.Application()
    app.router.add_post("/package_url", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- orchestration ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, always stopped (SIGTERM, then SIGKILL) when the block ends."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def _broker(bootstrap: str | None, workdir: Path) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from packager.dev import kafka

    state = workdir / "kafka"
    broker = kafka.start(state, log=lambda m: print(m, file=sys.stderr))
    try:
        yield broker.bootstrap_servers
    finally:
        kafka.stop(state)


def _service_env(bootstrap: str, workdir: Path, prefix: str, port: int, smtp_port: int) -> dict[str, str]:
    from packager.dev.kafka import free_port

    return {
        "PACKAGER_SECRET": SECRET,
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PACKAGER_TOPIC_PREFIX": prefix,
        "PACKAGER_STORE_DIRECTORY": str(workdir / f"store-{prefix}"),
        "PACKAGER_ALLOW_PRIVATE_URLS": "true",
        "PACKAGER_PORT": str(port),
        "PACKAGER_SMTP_HOST": "127.0.0.1",
        "PACKAGER_SMTP_PORT": str(smtp_port),
        "PACKAGER_METRICS_PORT": str(free_port()),
        # The subject names the job, so each email is matched to its request (a cache hit links another ZIP).
        "PACKAGER_EMAIL_SUBJECT": "Resource from {ckan_host} job {job_id}",
    }


def throughput(
    bootstrap: str,
    workdir: Path,
    requests: int,
    concurrency: int,
    repeat: int,
    log: Any,
    *,
    distinct_emails: bool = False,
    limits: bool = False,
) -> dict[str, Any]:
    """Parts 1 and 2: the ingress and the bare handler under the same client load, interleaved.

    `distinct_emails`: every request from a new requester, so the ingress stores a data key for each
    (docs/privacy.md); otherwise one requester, whose key is stored once. `limits`: also an ingress with
    the fair limits on (generous: the check runs, nothing is refused) and the projector it reads.
    """
    from packager.dev.kafka import free_port

    prefix = f"load{uuid.uuid4().hex[:8]}"
    ingress_port, bare_port = free_port(), free_port()
    env = _service_env(bootstrap, workdir, prefix, ingress_port, free_port())
    body = urllib.parse.urlencode(
        {
            "secret": SECRET,
            "resource_id": "bench-resource-__N__",
            "resource_url": "http://127.0.0.1:9/data.csv",
            "email": "someone-__N__@example.org" if distinct_emails else "someone@example.org",
        }
    )
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "ingress": []}
    logs = workdir / "logs"
    with contextlib.ExitStack() as stack:
        ingress = stack.enter_context(_process(["-m", "packager", "ingress"], env, logs / "ingress.log"))
        bare = stack.enter_context(
            _process(
                ["-m", "benchmarks.load", "--role", "bare", "--port", str(bare_port)], {}, logs / "bare.log"
            )
        )
        _wait_for_url(f"http://127.0.0.1:{ingress_port}/health/live")
        _wait_for_url(f"http://127.0.0.1:{bare_port}/")
        urls = {
            "bare": f"http://127.0.0.1:{bare_port}/package_url",
            "ingress": f"http://127.0.0.1:{ingress_port}/package_url",
        }
        pids = {"bare": bare.pid, "ingress": ingress.pid}
        if limits:
            runs["ingress_limits"] = []
            stack.enter_context(_process(["-m", "packager", "projector"], env, logs / "projector.log"))
            limited_port = free_port()
            limited_env = {**env, **GENEROUS_LIMITS, "PACKAGER_PORT": str(limited_port)}
            limited_env["PACKAGER_METRICS_PORT"] = str(free_port())
            limited = stack.enter_context(
                _process(["-m", "packager", "ingress"], limited_env, logs / "ingress-limits.log")
            )
            _wait_for_url(f"http://127.0.0.1:{limited_port}/health/live")
            urls["ingress_limits"] = f"http://127.0.0.1:{limited_port}/package_url"
            pids["ingress_limits"] = limited.pid
        for _ in range(repeat):
            for mode in runs:
                cpu_before = _cpu_seconds(pids[mode])
                result = _run_client(urls[mode], body, requests, concurrency)
                # Per request the server answered in the run, warm-up included (its CPU is in the span).
                served = result["requests"] + result["warmup_requests"]
                result["cpu_ms_per_request"] = (_cpu_seconds(pids[mode]) - cpu_before) * 1000 / served
                result["mode"] = mode
                runs[mode].append(result)
                log(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))
        ingress_rss = _peak_rss_mb(ingress.pid)
        limited_rss = _peak_rss_mb(pids["ingress_limits"]) if limits else 0.0

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    summary: dict[str, Any] = {
        mode: {
            "rps": round(med(mode, "rps")),
            "p50_ms": round(med(mode, "p50_ms"), 2),
            "p99_ms": round(med(mode, "p99_ms"), 2),
            "rps_runs": [round(r["rps"]) for r in runs[mode]],
            "failures": sum(sum(r["failures"].values()) for r in runs[mode]),
        }
        for mode in runs
    }
    summary["ratio"] = round(
        statistics.median(i["rps"] / b["rps"] for i, b in zip(runs["ingress"], runs["bare"], strict=True)), 3
    )
    for mode in runs:
        # CPU-milliseconds of the server per request = its CPU-seconds per 1,000 requests; steadier than
        # requests/s on a shared machine, since time spent waiting for a core is not counted.
        summary[f"{mode}_cpu_ms_per_request"] = round(med(mode, "cpu_ms_per_request"), 4)
        summary[mode]["cpu_ms_per_request_runs"] = [round(r["cpu_ms_per_request"], 4) for r in runs[mode]]
    summary["cpu_ratio"] = round(
        statistics.median(
            b["cpu_ms_per_request"] / i["cpu_ms_per_request"]
            for i, b in zip(runs["ingress"], runs["bare"], strict=True)
        ),
        3,
    )
    summary["ingress_peak_rss_mb"] = round(ingress_rss, 1)
    if limits:
        summary["limits_ratio"] = round(
            statistics.median(
                li["rps"] / i["rps"] for li, i in zip(runs["ingress_limits"], runs["ingress"], strict=True)
            ),
            3,
        )
        summary["ingress_limits_peak_rss_mb"] = round(limited_rss, 1)
    return summary


def main() -> None:
    """Run the parts asked for and print one JSON object."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests per client run")
    parser.add_argument("--concurrency", type=int, default=64, help="client connections")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of bare + ingress")
    parser.add_argument("--jobs", type=int, default=30, help="sequential jobs (and as many cache hits)")
    parser.add_argument("--job-rows", type=int, default=1000)
    parser.add_argument("--parts", default="throughput,jobs")
    parser.add_argument(
        "--distinct-emails", action="store_true", help="every request from a new requester (a key each)"
    )
    parser.add_argument(
        "--limits", action="store_true", help="also an ingress with generous fair limits (and a projector)"
    )
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    parser.add_argument("--role", choices=["client", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "client":
        warmup = min(2000, max(200, args.requests // 10))
        result = asyncio.run(_client(args.url, args.body.encode(), args.requests, args.concurrency, warmup))
        print(json.dumps(result))
        return
    if args.role == "bare":
        _bare_server(args.port)
        return

    def log(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    summary: dict[str, Any] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, _broker(args.bootstrap, Path(tmp)) as boot:
        workdir = Path(tmp)
        (workdir / "logs").mkdir()
        if "throughput" in parts:
            summary["throughput"] = throughput(
                boot,
                workdir,
                args.requests,
                args.concurrency,
                args.repeat,
                log,
                distinct_emails=args.distinct_emails,
                limits=args.limits,
            )
        if "jobs" in parts:
            from benchmarks.load_jobs import job_latency  # it uses this module's helpers

            summary["latency"] = job_latency(boot, workdir, args.jobs, args.job_rows, log)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
