"""The packager against a real CKAN 2.12: its files equal CKAN's own answers cell by cell.

CKAN's own answer to a query is its streaming export, `/datastore/dump/{id}`, given the same `q`, `plain`,
`language`, `filters`, `sort`, `fields`, `offset` and `limit`: PostgreSQL's own text of every value. The
packager's file must hold the same text in every cell, except where the documented formats differ on purpose:
booleans are `true`/`false` (the dump writes `t`/`f`), and JSON and array values are compact JSON (the dump
keeps PostgreSQL's spacing), so those are compared as parsed JSON with numbers kept exact.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from packager.adapters.ckan import CkanError, DatastoreClient, DatastoreQuery
from packager.adapters.resolver import system_resolver
from packager.adapters.store import FileStore
from packager.core.settings import load_settings
from packager.dev.test_tables import BIG_ROWS, FIELDS
from packager.domain.events import PackageCompleted, PackageFailed, PackageRequested, envelope
from packager.domain.numbers import NumberText, loads_exact
from packager.domain.secrets import seal
from packager.domain.writers import open_writer
from packager.service.packaging import JobContext, run_job
from tests.real_ckan.conftest import Portal

pytestmark = pytest.mark.real_ckan

SECRET = "real-ckan-tests-secret-0123456789"
TYPES = {f["id"]: f["type"] for f in FIELDS} | {"_id": "int", "rank": "float"}


def dump(
    portal: Portal, resource_id: str, params: dict[str, Any], token: str | None = None
) -> list[list[str]]:
    """CKAN's own CSV export of a query: header and rows."""
    query = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
    if isinstance(query.get("fields"), list):
        query["fields"] = ",".join(query["fields"])
    path = f"/datastore/dump/{resource_id}?" + urllib.parse.urlencode(query)
    status, body = portal.api.raw(path, token=token)
    assert status == 200, body[:500]
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


async def package(
    portal: Portal,
    resource_id: str,
    params: dict[str, Any],
    tmp_path: Path,
    *,
    fmt: str = "csv",
    key: str = "",
) -> PackageCompleted | PackageFailed:
    """Run the packager's real job code on a datastore request; returns its terminal event."""
    settings = load_settings(
        None, secret=SECRET, store_directory=str(tmp_path / "store"), page_size=1000, allow_private_urls=True
    )
    request = {"api_url": portal.api_url, "resource_id": resource_id, "format": fmt, **params}
    request["key_sealed"] = seal(SECRET, key) if key else ""
    requested = envelope(
        f"job-{tmp_path.name}",
        PackageRequested(
            kind="datastore",
            cache_key=f"key-{tmp_path.name}",
            resource_id=resource_id,
            email="r@example.org",
            ckan_host="127.0.0.1",
            request=request,
        ),
    )

    async def emit(_: Any) -> None:
        return None

    async with aiohttp.ClientSession() as session:
        ctx = JobContext(
            settings=settings,
            session=session,
            store=FileStore(Path(settings.store_directory), settings.partial_directory),
            resolve=system_resolver,
            emit=emit,
            worker="real-ckan-test",
        )
        result = await run_job(requested, "slow", ctx)
    assert isinstance(result, PackageCompleted | PackageFailed)
    return result


def data_file(tmp_path: Path, result: PackageCompleted | PackageFailed, name: str = "resource.csv") -> bytes:
    assert isinstance(result, PackageCompleted), result
    [archive] = (tmp_path / "store").rglob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        return zf.read(name)


def as_dump_text(column: str, text: str) -> Any:
    """A packager CSV cell in the form the dump writes it (see the module docstring)."""
    kind = TYPES.get(column, "text")
    if kind == "bool":
        return {"true": "t", "false": "f"}.get(text, text)
    if kind in ("json",) or kind.startswith("_"):
        return None if text == "" else loads_exact(text)
    return text


def dump_cell(column: str, text: str) -> Any:
    kind = TYPES.get(column, "text")
    if kind in ("json",) or kind.startswith("_"):
        return None if text in ("", "null") else loads_exact(text)
    return text


async def assert_same_as_dump(
    portal: Portal, tmp_path: Path, params: dict[str, Any], *, resource_id: str | None = None
) -> list[list[str]]:
    resource_id = resource_id or portal.big
    expected = dump(portal, resource_id, params)
    result = await package(portal, resource_id, params, tmp_path)
    rows = list(csv.reader(io.StringIO(data_file(tmp_path, result).decode("utf-8"), newline="")))
    header = rows[0]
    assert header == expected[0]
    assert len(rows) == len(expected), (len(rows), len(expected))
    for number, (got, want) in enumerate(zip(rows[1:], expected[1:], strict=True), start=1):
        mine = [as_dump_text(c, v) for c, v in zip(header, got, strict=True)]
        theirs = [dump_cell(c, v) for c, v in zip(header, want, strict=True)]
        assert mine == theirs, f"row {number} differs"
    return rows


async def test_every_row_of_a_big_table_with_every_type_and_nulls(portal: Portal, tmp_path: Path) -> None:
    rows = await assert_same_as_dump(portal, tmp_path, {})
    assert len(rows) == BIG_ROWS + 1
    header = rows[0]
    for field in FIELDS[2:]:  # every type is there with nulls (code and species have none)
        index = header.index(field["id"])
        values = [row[index] for row in rows[1:]]
        assert "" in values and len(set(values)) > 1, field
    amounts = [row[header.index("amount")] for row in rows[1:]]
    assert any(len(a) >= 30 for a in amounts) and any(a.endswith("0") and "." in a for a in amounts)


async def test_numbers_in_json_lines_are_ckans_own_text(portal: Portal, tmp_path: Path) -> None:
    expected = dump(portal, portal.big, {"limit": 3000})
    result = await package(portal, portal.big, {"limit": 3000}, tmp_path, fmt="jsonl")
    lines = data_file(tmp_path, result, "resource.jsonl").splitlines()
    header = expected[0]
    for line, want in zip(lines, expected[1:], strict=True):
        got = loads_exact(line)
        for column in ("amount", "big", "ratio"):
            value, text = got[column], want[header.index(column)]
            assert (value is None and text == "") or str(value) == text, (column, value, text)
            assert value is None or isinstance(value, NumberText | int)


async def test_list_filters(portal: Portal, tmp_path: Path) -> None:
    params = {"filters": {"species": ["Panthera leo", "Canis lupus"], "verified": False}}
    rows = await assert_same_as_dump(portal, tmp_path, params)
    assert 1000 < len(rows) < BIG_ROWS / 2


@pytest.mark.parametrize(
    "params",
    [
        {"q": "leo"},
        {"q": "leo", "plain": True},
        {"q": "panthera & !tigris", "plain": False},
        {"q": "run", "plain": True, "language": "english"},  # stemming: matches "running" and "runs"
        {"q": "leo", "filters": {"verified": False}},
        {"q": {"species": "tigris"}},
    ],
    ids=["q", "q-plain", "q-not-plain", "q-language", "q-with-filters", "q-per-field"],
)
async def test_full_text_q(portal: Portal, tmp_path: Path, params: dict[str, Any]) -> None:
    # CKAN orders a search by relevance, with ties in no stated order; the packager pages it by `_id`. The
    # dump is asked for the same order so that the rows can be compared one by one.
    rows = await assert_same_as_dump(portal, tmp_path, {**params, "sort": "_id"})
    assert len(rows) > 1
    assert "rank" in rows[0] or isinstance(params["q"], dict)


async def test_sort_on_another_column_with_offset_and_limit(portal: Portal, tmp_path: Path) -> None:
    rows = await assert_same_as_dump(portal, tmp_path, {"sort": "code desc", "offset": 1234, "limit": 4321})
    assert len(rows) == 4322
    codes = [row[rows[0].index("code")] for row in rows[1:]]
    assert codes == sorted(codes, reverse=True)


async def test_fields_in_the_order_asked(portal: Portal, tmp_path: Path) -> None:
    rows = await assert_same_as_dump(portal, tmp_path, {"fields": ["amount", "_id", "tags", "seen_at"]})
    assert rows[0] == ["amount", "_id", "tags", "seen_at"]


async def test_a_private_resource_needs_the_token(portal: Portal, tmp_path: Path) -> None:
    refused = await package(portal, portal.private, {}, tmp_path / "anonymous")
    assert isinstance(refused, PackageFailed)
    assert "Authorization Error" in refused.error or "403" in refused.error, refused.error
    expected = dump(portal, portal.private, {}, token=portal.ckan.api_token)
    result = await package(portal, portal.private, {}, tmp_path, key=portal.ckan.api_token)
    rows = list(csv.reader(io.StringIO(data_file(tmp_path, result).decode("utf-8"), newline="")))
    header = rows[0]
    assert header == expected[0] and len(rows) == len(expected)
    for got, want in zip(rows[1:], expected[1:], strict=True):
        assert [as_dump_text(c, v) for c, v in zip(header, got, strict=True)] == [
            dump_cell(c, v) for c, v in zip(header, want, strict=True)
        ]


class RecordingClient(DatastoreClient):
    """The packager's client, noting the parameters of every call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    async def call(self, api_url: str, params: Any, *, exact_numbers: bool = False) -> dict[str, Any]:
        self.calls.append(dict(params))
        return await super().call(api_url, params, exact_numbers=exact_numbers)


async def test_pages_follow_ckans_next_page_keyset(portal: Portal) -> None:
    async with aiohttp.ClientSession() as session:
        client = RecordingClient(session, page_size=4000)
        query = DatastoreQuery(api_url=portal.api_url, resource_id=portal.big)
        info = await client.describe(query)
        ids = [row[0] async for page in client.pages(query, info) for row in page]
    assert ids == list(range(1, BIG_ROWS + 1))
    pages = client.calls[1:]
    assert len(pages) == BIG_ROWS // 4000 + 1
    assert "offset" not in pages[0] and pages[0]["include_next_page"] is True
    # Every later page starts after the last `_id` CKAN's `next_page` gave, never at an offset.
    for number, params in enumerate(pages[1:], start=1):
        assert params["filters"] == {"_id": {"gt": 4000 * number}} and "offset" not in params


async def test_a_query_ckan_refuses_fails_with_ckans_message(portal: Portal) -> None:
    async with aiohttp.ClientSession() as session:
        client = DatastoreClient(session)
        query = DatastoreQuery(api_url=portal.api_url, resource_id=portal.big, sort="no_such_column")
        with pytest.raises(CkanError, match="no_such_column"):
            info = await client.describe(query)
            async for _ in client.pages(query, info):
                pass


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": "lion", "plain": True, "fields": ["notes", "amount", "_id", "tags"], "offset": 3, "limit": 700},
        {"filters": {"species": ["Apis mellifera"]}, "sort": "amount desc", "offset": 10},
    ],
    ids=["all", "q-fields-offset-limit", "filters-sort"],
)
@pytest.mark.parametrize("fmt", ["csv", "tsv"])
async def test_reading_ckans_dump_writes_the_same_bytes_as_reading_pages(
    portal: Portal, params: dict[str, Any], fmt: str
) -> None:
    files: dict[bool, bytes] = {}
    async with aiohttp.ClientSession() as session:
        for via_dump in (False, True):
            client = RecordingClient(session, page_size=3000)
            query = DatastoreQuery(api_url=portal.api_url, resource_id=portal.big, **params)
            info = await client.describe(query)
            out = io.BytesIO()
            writer = open_writer(fmt, info.columns, out)
            async for page in client.pages(query, info, via_dump=via_dump):
                writer.write_rows(page)
            writer.close()
            files[via_dump] = out.getvalue()
            if via_dump:
                assert len(client.calls) == 1  # only the `limit=0` call: every row came from the dump
    assert files[True] == files[False]
    assert files[True].count(b"\n") > 100
