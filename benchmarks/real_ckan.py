"""The `--real-ckan` half of `benchmarks.datastore`: the same measurements against a real CKAN 2.12.

The CKAN (`packager.dev.real_ckan`) lives in `~/.cache/ckanpackager/bench-real-ckan` and is stopped with its
databases kept, so a table of N rows is loaded once: 10,000 rows of `packager.dev.test_tables` through
`datastore_create`, then copied inside PostgreSQL (`INSERT ... SELECT`, which fires the datastore's full-text
trigger as an API insert would) until it has N. Its resource id is remembered in `bench_tables.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packager.dev import postgres, real_ckan
from packager.dev.test_tables import FIELDS, record

SEED_ROWS = 10_000


def state_dir() -> Path:
    """Where the benchmark's CKAN keeps its state between runs."""
    return real_ckan.cache_root() / "bench-real-ckan"


def _total(api: real_ckan.CkanApi, resource_id: str) -> int | None:
    try:
        result = api.action("datastore_search", {"resource_id": resource_id, "limit": 0})
    except real_ckan.CkanApiError:
        return None
    return int(result["total"])


def table_of(found: real_ckan.RealCkan, rows: int, log: Callable[[str], None]) -> str:
    """The resource id of a table of `rows` rows, loading it the first time."""
    api = real_ckan.CkanApi(found.url, found.api_token)
    record_file = Path(found.state_dir) / "bench_tables.json"
    known: dict[str, str] = json.loads(record_file.read_text()) if record_file.exists() else {}
    resource_id = known.get(str(rows))
    if resource_id and _total(api, resource_id) == rows:
        return resource_id
    started = time.monotonic()
    log(f"loading a table of {rows:,} rows into the real CKAN (once)...")
    seed = min(rows, SEED_ROWS)
    resource_id = real_ckan.create_table(
        api, f"bench-{rows}-{int(time.time())}", FIELDS, (record(i) for i in range(seed))
    )
    if rows > seed:
        server = postgres.status(Path(found.state_dir) / "postgres")
        if server is None:
            raise SystemExit("the benchmark CKAN's PostgreSQL is not running")
        names = ", ".join(f'"{f["id"]}"' for f in FIELDS)
        copies = -(-(rows - seed) // seed)
        postgres.psql(
            server,
            f'INSERT INTO "{resource_id}" ({names}) SELECT {names} FROM (SELECT {names} FROM "{resource_id}" '
            f"ORDER BY _id) AS seed CROSS JOIN generate_series(1, {copies}) LIMIT {rows - seed};\n"
            f'ANALYZE "{resource_id}";\n',
            database="datastore_default",
        )
    if _total(api, resource_id) != rows:
        raise SystemExit(f"the loaded table does not hold {rows} rows")
    known[str(rows)] = resource_id
    record_file.write_text(json.dumps(known))
    log(f"loaded in {time.monotonic() - started:.0f}s")
    return resource_id


def main(args: argparse.Namespace, child: Callable[..., dict[str, Any]]) -> None:
    """Start the CKAN, make sure the table is there, run the modes interleaved, print the JSON summary."""

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    found = real_ckan.start(state_dir(), workers=2, log=log)
    try:
        resource_id = table_of(found, args.rows, log)
        modes = ["packager", "dump", "baseline"]
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for _ in range(args.repeat):  # interleaved, so drift on a noisy machine hits every mode alike
            for mode in modes:
                result = child(mode, found.action_url, args.page_size, resource_id, args.rows)
                results[mode].append(result)
                if not args.json:
                    log(json.dumps(result))
    finally:
        real_ckan.stop(state_dir(), keep_data=True)

    def rate(mode: str) -> float:
        return statistics.median(r["rows"] / r["seconds"] for r in results[mode])

    for mode in modes:
        seen = {r["rows"] for r in results[mode]}
        if seen != {args.rows}:
            raise SystemExit(f"{mode} saw {seen} rows, not {args.rows}")
    summary = {
        "rows": args.rows,
        "page_size": args.page_size,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        "rows_per_s": round(rate("packager")),
        "dump_rows_per_s": round(rate("dump")),
        "baseline_rows_per_s": round(rate("baseline")),
        "dump_ratio": round(rate("packager") / rate("dump"), 3),
        "baseline_ratio": round(rate("packager") / rate("baseline"), 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results["packager"]), 1),
        "seconds": {m: round(statistics.median(r["seconds"] for r in results[m]), 2) for m in modes},
    }
    print(json.dumps(summary))
