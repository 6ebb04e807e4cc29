"""Datastore packaging throughput and memory, against the project's CKAN-compatible server.

    python -m benchmarks.datastore --rows 1000000 --json

Three measurements of the same query (all rows of a synthetic table, pages of PAGE_SIZE), each in its own
process so its peak RSS is its own, against one server process:

- `fetch`: page through the query with the packager's CKAN client and throw the rows away (the limit);
- `packager`: the packager's real job code (`packager.service.packaging.run_job`) writing CSV into a ZIP;
- `baseline`: the original service's algorithm: one page after another with offset paging, `json`, the
  `csv` module with `str()` of each value into a temporary file, then zip.

Prints one JSON object: rows, seconds, rows_per_s, peak_rss_mb (packager), limit_ratio (packager ÷ fetch
throughput), baseline_ratio (packager ÷ baseline throughput), and the median of each mode.

    python -m benchmarks.datastore --real-ckan --rows 1000000 --json

Against a real CKAN 2.12 (`packager.dev.real_ckan`, kept in `~/.cache/ckanpackager/bench-real-ckan` with its
databases, so the table of `--rows` rows is loaded once and reused): the modes are `packager`, `dump` (CKAN's
own streaming export `/datastore/dump/{id}` read to a file: the portal's limit) and `baseline`, and the JSON
has rows_per_s, dump_rows_per_s, baseline_rows_per_s, dump_ratio (packager ÷ dump), baseline_ratio
(packager ÷ baseline) and peak_rss_mb (packager).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import aiohttp

from packager.dev.kafka import free_port

RESOURCE_ID = "bench"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _fetch_only(api_url: str, page_size: int, resource_id: str = RESOURCE_ID) -> int:
    from packager.adapters.ckan import DatastoreClient, DatastoreQuery

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = DatastoreClient(session, page_size=page_size)
        query = DatastoreQuery(api_url=api_url, resource_id=resource_id)
        info = await client.describe(query)
        rows = 0
        async for page in client.pages(query, info):
            rows += len(page)
        return rows


async def _packager(api_url: str, page_size: int, workdir: Path, resource_id: str = RESOURCE_ID) -> int:
    from packager.adapters.resolver import system_resolver
    from packager.adapters.store import FileStore
    from packager.core.settings import load_settings
    from packager.domain.events import PackageCompleted, PackageRequested, envelope
    from packager.service.packaging import JobContext, run_job

    settings = load_settings(  # PACKAGER_* variables apply (e.g. PACKAGER_ZIP_COMPRESSLEVEL)
        None,
        secret="benchmark-secret-0123456789",
        store_directory=str(workdir / "store"),
        page_size=page_size,
        allow_private_urls=True,
    )
    store = FileStore(Path(settings.store_directory), settings.partial_directory)
    request = envelope(
        "bench-job",
        PackageRequested(
            kind="datastore",
            cache_key="bench",
            resource_id=resource_id,
            email="b@example.org",
            ckan_host="127.0.0.1",
            request={"api_url": api_url, "resource_id": resource_id, "format": "csv", "key_sealed": ""},
        ),
    )

    async def emit(_: Any) -> None:
        return None

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        ctx = JobContext(
            settings=settings,
            session=session,
            store=store,
            resolve=system_resolver,
            emit=emit,
            worker="bench",
        )
        result = await run_job(request, "slow", ctx)
    if not isinstance(result, PackageCompleted):
        raise SystemExit(f"the job failed: {result}")
    return int(result.rows or 0)


def _baseline(api_url: str, page_size: int, workdir: Path, resource_id: str = RESOURCE_ID) -> int:
    """The original's loop: offset pages one after another, json, csv.writer(str(v)), then zip."""

    def call(params: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            api_url, data=json.dumps(params).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read())["result"]

    columns = [f["id"] for f in call({"resource_id": resource_id, "limit": 0})["fields"]]
    data_path = workdir / "resource.csv"
    rows = 0
    with open(data_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        offset = 0
        while True:
            records = call({"resource_id": resource_id, "offset": offset, "limit": page_size})["records"]
            if not records:
                break
            for record in records:
                writer.writerow([str(record.get(c)) if record.get(c) is not None else "" for c in columns])
            rows += len(records)
            offset += len(records)
    with zipfile.ZipFile(workdir / "out.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(data_path, "resource.csv")
    return rows


def _dump(api_url: str, resource_id: str, workdir: Path, rows: int) -> int:
    """CKAN's own export of the whole table, streamed to a file as a browser would save it."""
    site = api_url.split("/api/", 1)[0]
    with (
        urllib.request.urlopen(f"{site}/datastore/dump/{resource_id}", timeout=600) as resp,
        open(workdir / "dump.csv", "wb") as out,
    ):
        while chunk := resp.read(1024 * 1024):
            out.write(chunk)
    return rows


def run_mode(
    mode: str, api_url: str, page_size: int, resource_id: str = RESOURCE_ID, rows_in_table: int = 0
) -> dict[str, Any]:
    """Run one measurement in this process (imports happen before the clock starts)."""
    if mode not in ("baseline", "dump"):
        import packager.adapters.ckan
        import packager.service.packaging  # noqa: F401
    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        started = time.perf_counter()
        if mode == "fetch":
            rows = asyncio.run(_fetch_only(api_url, page_size, resource_id))
        elif mode == "packager":
            rows = asyncio.run(_packager(api_url, page_size, Path(tmp), resource_id))
        elif mode == "baseline":
            rows = _baseline(api_url, page_size, Path(tmp), resource_id)
        elif mode == "dump":
            rows = _dump(api_url, resource_id, Path(tmp), rows_in_table)
        else:
            raise SystemExit(f"unknown mode {mode}")
        seconds = time.perf_counter() - started
    return {"mode": mode, "rows": rows, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def _child(
    mode: str, api_url: str, page_size: int, resource_id: str = RESOURCE_ID, rows: int = 0
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.datastore",
            "--mode",
            mode,
            "--api-url",
            api_url,
            "--page-size",
            str(page_size),
            "--resource-id",
            resource_id,
            "--rows",
            str(rows),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Start a server, run every mode `--repeat` times interleaved, print medians and ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="fetch,packager,baseline")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    parser.add_argument("--real-ckan", action="store_true", help="against a real CKAN 2.12")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--resource-id", default=RESOURCE_ID, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.api_url, args.page_size, args.resource_id, args.rows)))
        return
    if args.real_ckan:
        from benchmarks.real_ckan import main as real_ckan_main

        real_ckan_main(args, _child)
        return

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "packager",
            "dev",
            "ckan",
            "--rows",
            str(args.rows),
            "--port",
            str(port),
            "--resource-id",
            RESOURCE_ID,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api_url = f"http://127.0.0.1:{port}/api/3/action/datastore_search"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(api_url + f"?resource_id={RESOURCE_ID}&limit=0", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        modes = [m for m in args.modes.split(",") if m]
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for _ in range(args.repeat):  # interleaved, so drift on a noisy machine hits every mode alike
            for mode in modes:
                result = _child(mode, api_url, args.page_size)
                results[mode].append(result)
                if not args.json:
                    print(json.dumps(result), file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=20)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    def rate(mode: str) -> float:
        return statistics.median(r["rows"] / r["seconds"] for r in results[mode])

    summary: dict[str, Any] = {
        "rows": args.rows,
        "page_size": args.page_size,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
    }
    for mode in modes:
        summary[mode] = {
            "seconds": round(median(mode, "seconds"), 3),
            "rows_per_s": round(rate(mode)),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results[mode]), 1),
            "rows_seen": results[mode][0]["rows"],
        }
    if "packager" in modes:
        summary.update(
            seconds=summary["packager"]["seconds"],
            rows_per_s=summary["packager"]["rows_per_s"],
            peak_rss_mb=summary["packager"]["peak_rss_mb"],
        )
        if "fetch" in modes:
            summary["limit_ratio"] = round(rate("packager") / rate("fetch"), 3)
        if "baseline" in modes:
            summary["baseline_ratio"] = round(rate("packager") / rate("baseline"), 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
