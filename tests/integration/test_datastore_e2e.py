"""Datastore packaging on real components: a filtered 100,000-row query in every format, under faults, and
lanes that keep a fast job moving while a slow one runs.

The ingress and workers are separate processes on a real broker; CKAN is the project's compatible server
(`packager.dev.ckan_server`) in this test process; SMTP is aiosmtpd. The expected rows are read from the
server with a deliberately plain reader (offset pages of `objects`), independent of the packager's client.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import openpyxl
import orjson
import pytest

from packager.adapters.kafka_log import Topics
from packager.dev.ckan_server import Faults, SyntheticTable, serve_ckan
from packager.domain.events import Envelope
from packager.domain.numbers import NumberText, loads_exact
from tests.integration.conftest import SECRET
from tests.integration.support import (
    SmtpSink,
    read_events,
    running_stack,
    wait_for_event,
    wait_until_group_settled,
)
from tests.integration.support import submit as submit_request

pytestmark = pytest.mark.kafka

TABLE = SyntheticTable("specimens", 200_000, seed=7)
FILTERS = {"country": ["Kenya", "Brazil", "Norway", "Japan"]}  # half the table: about 100,000 rows


@pytest.fixture(scope="module")
def expected_query_rows() -> list[dict[str, Any]]:
    """The filtered rows as the table holds them, in `_id` order."""
    wanted = set(FILTERS["country"])
    return [TABLE.row(i) for i in range(TABLE.rows) if TABLE.country_of(i) in wanted]


@pytest.fixture
async def ckan() -> AsyncIterator[str]:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        yield url


async def plain_read(
    api_url: str, filters: dict[str, Any], resource_id: str = TABLE.resource_id
) -> tuple[list[str], list[dict[str, Any]]]:
    """Every row of the query, by offset pages sorted by `_id`: the test's own oracle of the server."""
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        offset = 0
        while True:
            body = {
                "resource_id": resource_id,
                "filters": filters,
                "sort": "_id",
                "offset": offset,
                "limit": 32000,
            }
            async with http.post(api_url, json=body) as resp:
                result = (await resp.json(loads=loads_exact))["result"]
            if not result["records"]:
                return [f["id"] for f in result["fields"]], rows
            rows.extend(result["records"])
            offset += len(result["records"])


def as_text(value: Any) -> str:
    """How a value must read in CSV and TSV."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def tsv_unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def read_back(fmt: str, data: bytes) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a packaged data file, read with standard readers."""
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        return rows[0], rows[1:]
    if fmt == "tsv":
        lines = data.decode("utf-8").split("\n")
        assert lines[-1] == ""
        rows = [[tsv_unescape(v) for v in line.split("\t")] for line in lines[:-1]]
        return rows[0], rows[1:]
    if fmt == "jsonl":
        objects = [loads_exact(line) for line in data.splitlines()]
        header = list(objects[0])
        return header, [[o[k] for k in header] for o in objects]
    sheet = openpyxl.load_workbook(io.BytesIO(data), read_only=True)["Data"]
    # OOXML stores a carriage return as the escape `_x000D_`, which openpyxl's reader leaves as it is.
    rows = [
        [v.replace("_x000D_", "\r") if isinstance(v, str) else v for v in r]
        for r in sheet.iter_rows(values_only=True)
    ]
    return [str(h) for h in rows[0]], rows[1:]


def expected_cells(fmt: str, columns: Sequence[str], records: list[dict[str, Any]]) -> list[list[Any]]:
    if fmt in ("csv", "tsv"):
        return [[as_text(r[c]) for c in columns] for r in records]
    if fmt == "jsonl":
        return [[r[c] for c in columns] for r in records]
    # XLSX: lists and objects as JSON text; an empty string is an empty cell, as a null is.
    return [[_cell(r[c]) for c in columns] for r in records]


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    if isinstance(value, NumberText):  # a number where a cell holds its 15 digits, else its text
        digits = value.text.lstrip("-").replace(".", "").strip("0")
        return float(value.text) if len(digits) <= 15 else value.text
    return None if value == "" else value


async def submit(port: int, **params: str) -> str:
    return await submit_request(port, "package_datastore", SECRET, **params)


async def events_of(bootstrap: str, prefix: str) -> list[Envelope]:
    return await read_events(bootstrap, Topics(prefix).events)


def zip_of(store_dir: Path, job_id: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(store_dir / f"{job_id}.zip")


async def test_a_filtered_query_is_packaged_row_for_row_in_every_format(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    ckan: str,
    store_dir: Path,
    tmp_path: Path,
    expected_query_rows: list[dict[str, Any]],
) -> None:
    port = int(service_env["PACKAGER_PORT"])
    columns, server_rows = await plain_read(ckan, FILTERS)
    assert server_rows == expected_query_rows  # the server holds what the table says
    assert 90_000 < len(server_rows) < 110_000
    filters = orjson.dumps(FILTERS).decode()
    formats = ("csv", "tsv", "jsonl", "xlsx")
    with running_stack(service_env, tmp_path / "logs") as stack:
        jobs = {
            fmt: await submit(
                port,
                api_url=ckan,
                resource_id=TABLE.resource_id,
                email="r@example.org",
                filters=filters,
                format=fmt,
                doi="10.5072/test-doi",
            )
            for fmt in formats
        }
        try:
            await smtp.wait_for(len(formats), timeout=300)
        except TimeoutError:
            pytest.fail(f"not every job emailed.\nworker log:\n{stack.worker.log()}")

    events = await events_of(kafka_bootstrap, topic_prefix)
    for fmt, job_id in jobs.items():
        mine = [e for e in events if e.job_id == job_id]
        counts = Counter(e.type for e in mine)
        assert (counts["PackageCompleted"], counts["PackageFailed"], counts["EmailSent"]) == (1, 0, 1), fmt
        progress = [e.payload for e in mine if e.type == "PackageProgress"]
        assert progress and progress[-1].rows_done == len(server_rows)  # type: ignore[attr-defined]
        assert all(p.rows_total == len(server_rows) for p in progress)  # type: ignore[attr-defined]

        with zip_of(store_dir, job_id) as zf:
            assert sorted(zf.namelist()) == sorted([f"resource.{fmt}", "manifest.json"])
            data = zf.read(f"resource.{fmt}")
            manifest = orjson.loads(zf.read("manifest.json"))
        header, rows = read_back(fmt, data)
        assert header == columns, fmt
        assert len(rows) == len(server_rows), fmt
        assert rows == expected_cells(fmt, columns, server_rows), fmt
        assert manifest["row_count"] == len(server_rows)
        assert manifest["job_id"] == job_id
        assert manifest["query"]["filters"] == FILTERS
        assert manifest["doi"] == "10.5072/test-doi"
        assert "key" not in manifest["query"] and "key_sealed" not in manifest["query"]
        assert manifest["data_file"]["sha256"] == hashlib.sha256(data).hexdigest()


async def test_injected_errors_timeouts_and_resets_change_nothing_in_the_output(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    store_dir: Path,
    tmp_path: Path,
) -> None:
    table = SyntheticTable("faulty", 30_000, seed=3)
    faults = Faults(error_rate=0.2, timeout_rate=0.05, timeout_seconds=4.0, reset_rate=0.05, seed=11)
    env = {**service_env, "PACKAGER_PAGE_SIZE": "1000", "PACKAGER_FETCH_READ_TIMEOUT": "1.5"}
    port = int(env["PACKAGER_PORT"])
    async with (
        serve_ckan({table.resource_id: table}, faults=faults) as faulty_url,
        serve_ckan({table.resource_id: table}) as clean_url,
    ):
        columns, expected = await plain_read(clean_url, {}, table.resource_id)
        with running_stack(env, tmp_path / "logs") as stack:
            job_id = await submit(
                port, api_url=faulty_url, resource_id=table.resource_id, email="r@example.org"
            )
            try:
                await smtp.wait_for(1, timeout=240)
            except TimeoutError:
                pytest.fail(f"the job did not finish.\nworker log:\n{stack.worker.log()}")
    counts = Counter(e.type for e in await events_of(kafka_bootstrap, topic_prefix) if e.job_id == job_id)
    assert (counts["PackageCompleted"], counts["PackageFailed"]) == (1, 0)
    with zip_of(store_dir, job_id) as zf:
        header, rows = read_back("csv", zf.read("resource.csv"))
    assert header == columns
    assert rows == expected_cells("csv", columns, expected)


async def test_a_fast_job_finishes_while_a_slow_one_runs(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    big = SyntheticTable("big", 20_000, seed=1)
    small = SyntheticTable("small", 500, seed=2)
    env = {**service_env, "PACKAGER_SLOW_REQUEST": "5000", "PACKAGER_PAGE_SIZE": "1000"}
    port = int(env["PACKAGER_PORT"])
    async with (
        serve_ckan({big.resource_id: big}, faults=Faults(slow_page_delay=0.6)) as slow_url,
        serve_ckan({small.resource_id: small}) as fast_url,
    ):
        with running_stack(
            env,
            tmp_path / "logs",
            workers=(["worker", "--lanes", "fast,slow"], ["worker", "--lanes", "fast"]),
        ) as stack:
            worker_a, worker_b = stack.workers
            # Both workers in the group and assigned before the first job: this test is about lanes, not about
            # a rebalance in the middle of planning (issue 7's fault suite covers those).
            await worker_a.wait_for_output("[^Worker]: Ready")
            await worker_b.wait_for_output("[^Worker]: Ready")
            await wait_until_group_settled(kafka_bootstrap, f"{topic_prefix}-worker", members=2)
            slow_job = await submit(
                port, api_url=slow_url, resource_id=big.resource_id, email="s@example.org"
            )
            try:  # wait until the slow job is running
                await wait_for_event(
                    kafka_bootstrap,
                    topic_prefix,
                    lambda e: e.job_id == slow_job and e.type == "PackageStarted",
                )
            except TimeoutError:
                seen = [
                    e.type for e in await events_of(kafka_bootstrap, topic_prefix) if e.job_id == slow_job
                ]
                pytest.fail(f"the slow job never started (events: {seen}).\nA:\n{worker_a.log()}")
            fast_job = await submit(
                port, api_url=fast_url, resource_id=small.resource_id, email="f@example.org"
            )
            try:
                await smtp.wait_for(2, timeout=240)
            except TimeoutError:
                pytest.fail(f"jobs did not finish.\nA:\n{worker_a.log()}\nB:\n{worker_b.log()}")

    events = await events_of(kafka_bootstrap, topic_prefix)
    queued = {e.job_id: e.payload.lane for e in events if e.type == "PackageQueued"}  # type: ignore[attr-defined]
    assert queued == {slow_job: "slow", fast_job: "fast"}
    order = [e.job_id for e in events if e.type == "PackageCompleted"]
    completed_at = {e.job_id: e.occurred_at for e in events if e.type == "PackageCompleted"}
    assert set(order) == {slow_job, fast_job}
    assert completed_at[fast_job] < completed_at[slow_job], "the fast job waited for the slow one"
