"""Parts 3 and 4 of `benchmarks.load`: request-to-email latency of small jobs and of cache hits, with one
worker, a CKAN server (`packager dev ckan`) and aiosmtpd in this process; and the helpers the scale-out
benchmark shares (the mailbox, submitting a datastore job, waiting for workers)."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from benchmarks.load import SECRET, _peak_rss_mb, _percentile, _process, _service_env, _wait_for_url


class _Mailbox:
    """aiosmtpd handler: the arrival time of each message, by the job id in its subject."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self._cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        job_id = str(message["Subject"]).rsplit(" ", 1)[-1]
        with self._cond:
            self.arrived[job_id] = now
            self._cond.notify_all()
        return "250 OK"

    def wait(self, job_id: str, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: job_id in self.arrived, timeout=timeout):
                raise TimeoutError(f"no email for job {job_id} within {timeout}s")
            return self.arrived[job_id]


def submit_datastore(ingress_port: int, api_url: str, doi: str, **extra: str) -> str:
    """POST one `/package_datastore` job of the synthetic table (distinct by its `doi`); its job id."""
    fields = {
        "secret": SECRET,
        "api_url": api_url,
        "resource_id": "synthetic",
        "email": "someone@example.org",
        "format": "csv",
        "doi": doi,
        **extra,
    }
    body = urllib.parse.urlencode(fields).encode()
    url = f"http://127.0.0.1:{ingress_port}/package_datastore"
    with urllib.request.urlopen(url, data=body, timeout=60) as resp:
        return str(json.loads(resp.read())["job_id"])


def wait_workers_ready(logs: list[Path], procs: list[Any], timeout: float = 180.0) -> None:
    """Until every worker has said `[^Worker]: Ready` (SystemExit naming its log if one does not)."""
    deadline = time.monotonic() + timeout
    for log_file, proc in zip(logs, procs, strict=True):
        while "[^Worker]: Ready" not in log_file.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"a worker did not start; see {log_file}")
            time.sleep(0.2)


def job_latency(bootstrap: str, workdir: Path, jobs: int, rows: int, log: Any) -> dict[str, Any]:
    """Parts 3 and 4: request-to-email latency of small jobs, then of cache hits, with one worker."""
    from aiosmtpd.controller import Controller

    from packager.dev.kafka import free_port

    mailbox = _Mailbox()
    smtp_port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    prefix = f"load{uuid.uuid4().hex[:8]}"
    ingress_port, ckan_port = free_port(), free_port()
    env = _service_env(bootstrap, workdir, prefix, ingress_port, smtp_port)
    logs = workdir / "logs"
    api_url = f"http://127.0.0.1:{ckan_port}/api/3/action/datastore_search"
    worker_log = logs / "worker.log"
    try:
        with (
            _process(
                ["-m", "packager", "dev", "ckan", "--rows", str(rows), "--port", str(ckan_port)],
                {},
                logs / "ckan.log",
            ),
            _process(["-m", "packager", "worker"], env, worker_log) as worker,
            _process(["-m", "packager", "ingress"], env, logs / "ingress-jobs.log"),
        ):
            _wait_for_url(f"http://127.0.0.1:{ingress_port}/health/live")
            _wait_for_url(api_url + "?resource_id=synthetic&limit=0")
            wait_workers_ready([worker_log], [worker], timeout=120)

            def request(doi: str) -> float:
                started = time.perf_counter()
                job_id = submit_datastore(ingress_port, api_url, doi)
                return mailbox.wait(job_id, timeout=120) - started

            for n in range(2):  # warm-up: connections, first assignment; not counted
                log(json.dumps({"warmup_job_s": round(request(f"10.0/warmup.{n}"), 3)}))
            fresh = []
            for n in range(jobs):
                fresh.append(request(f"10.0/bench.{n}"))
                log(json.dumps({"job": n, "seconds": round(fresh[-1], 3)}))
            hits = []
            for n in range(jobs):
                hits.append(request(f"10.0/bench.{n}"))  # identical to a completed job
                log(json.dumps({"cache_hit": n, "seconds": round(hits[-1], 3)}))
            worker_rss = _peak_rss_mb(worker.pid)
    finally:
        controller.stop()

    def stats(values: list[float]) -> dict[str, Any]:
        return {
            "p50_s": round(statistics.median(values), 3),
            "p95_s": round(_percentile(values, 0.95), 3),
            "max_s": round(max(values), 3),
            "jobs": len(values),
        }

    return {
        "rows": rows,
        "job": stats(fresh),
        "cache_hit": stats(hits),
        "worker_peak_rss_mb": round(worker_rss, 1),
    }
