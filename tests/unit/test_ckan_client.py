"""The CKAN client against the project's CKAN-compatible server: every paging mode yields each row once."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from packager.adapters.ckan import CkanError, DatastoreClient, DatastoreQuery
from packager.core.errors import PackagingError
from packager.dev.ckan_server import (
    ACTION_PATH,
    STATS,
    Faults,
    SyntheticTable,
    create_ckan_app,
    serve_app,
    serve_ckan,
)

TABLE = SyntheticTable("t1", 2_345, seed=5)


def expected(filters: dict[str, Any] | None = None) -> list[list[Any]]:
    rows = [list(TABLE.values(i)) for i in range(TABLE.rows)]
    if filters and "country" in filters:
        wanted = filters["country"] if isinstance(filters["country"], list) else [filters["country"]]
        rows = [r for r in rows if r[TABLE.position["country"]] in wanted]
    return rows


async def fetch_all(
    api_url: str, query: DatastoreQuery, **client_kwargs: Any
) -> tuple[list[str], list[list[Any]]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=2)) as session:
        client = DatastoreClient(session, **{"page_size": 300, "backoff": 0.01, **client_kwargs})
        info = await client.describe(query)
        rows = [row async for page in client.pages(query, info) for row in page]
        return info.columns, rows


@pytest.mark.parametrize("backend", [None, "solr", "versioned-datastore"])
async def test_every_paging_mode_yields_each_row_once_in_order(backend: str | None) -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}, backend=backend) as url:
        columns, rows = await fetch_all(url, DatastoreQuery(api_url=url, resource_id=TABLE.resource_id))
    assert columns == list(TABLE.names)
    assert rows == expected()


async def test_filters_offset_and_limit_are_applied() -> None:
    filters = {"country": ["Kenya", "Japan"]}
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        query = DatastoreQuery(
            api_url=url, resource_id=TABLE.resource_id, filters=filters, offset=7, limit=401
        )
        _, rows = await fetch_all(url, query)
    assert rows == expected(filters)[7 : 7 + 401]


async def test_pages_follow_the_limit_the_server_returns_when_it_caps_rows() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}, rows_max=250) as url:
        _, rows = await fetch_all(
            url, DatastoreQuery(api_url=url, resource_id=TABLE.resource_id), page_size=1000
        )
    assert rows == expected()


async def test_a_user_sort_pages_by_offset_with_id_as_tie_break() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        query = DatastoreQuery(api_url=url, resource_id=TABLE.resource_id, sort="year desc")
        _, rows = await fetch_all(url, query)
    year, rid = TABLE.position["year"], TABLE.position["_id"]
    assert rows == sorted(expected(), key=lambda r: (-r[year], r[rid]))


async def test_selected_fields_come_in_the_requested_order() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        query = DatastoreQuery(api_url=url, resource_id=TABLE.resource_id, fields=["year", "_id", "country"])
        columns, rows = await fetch_all(url, query)
    assert columns == ["year", "_id", "country"]
    assert rows[:3] == [[TABLE.year_of(i), i + 1, TABLE.country_of(i)] for i in range(3)]


async def test_the_key_goes_raw_in_the_authorization_header() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}, api_token="tok-123") as url:
        _, rows = await fetch_all(
            url, DatastoreQuery(api_url=url, resource_id=TABLE.resource_id), key="tok-123"
        )
        assert len(rows) == TABLE.rows
        with pytest.raises(CkanError, match="Authorization"):
            await fetch_all(url, DatastoreQuery(api_url=url, resource_id=TABLE.resource_id), key="wrong")


@pytest.mark.parametrize(
    ("query_changes", "message"),
    [
        ({"resource_id": "nope"}, "Not Found"),
        ({"sort": "no_such_column"}, "Validation Error"),
        ({"filters": {"no_such_column": 1}}, "Validation Error"),
    ],
)
async def test_ckan_refusals_carry_ckans_message(query_changes: dict[str, Any], message: str) -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        query = DatastoreQuery(**{"api_url": url, "resource_id": TABLE.resource_id, **query_changes})
        with pytest.raises(CkanError, match=message):
            await fetch_all(url, query)


async def test_5xx_timeouts_and_cut_bodies_are_retried_without_losing_or_repeating_rows() -> None:
    faults = Faults(error_rate=0.25, timeout_rate=0.1, timeout_seconds=3, reset_rate=0.1, seed=4)
    app = create_ckan_app({TABLE.resource_id: TABLE}, faults=faults)
    async with serve_app(app) as url:
        _, rows = await fetch_all(url, DatastoreQuery(api_url=url, resource_id=TABLE.resource_id), attempts=8)
    stats = app[STATS]
    assert stats["errors_injected"] > 0 and stats["resets_injected"] + stats["timeouts_injected"] > 0
    assert rows == expected()


async def test_a_server_that_keeps_failing_fails_the_job_with_a_clear_message() -> None:
    async def always_503(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")

    app = web.Application()
    app.router.add_post(ACTION_PATH, always_503)
    async with serve_app(app) as url:
        with pytest.raises(PackagingError, match="kept failing after 3 attempts"):
            await fetch_all(url, DatastoreQuery(api_url=url, resource_id=TABLE.resource_id), attempts=3)


@pytest.mark.parametrize("backend", ["solr", "versioned-datastore"])
async def test_token_paging_honours_offset_and_limit(backend: str) -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}, backend=backend) as url:
        query = DatastoreQuery(api_url=url, resource_id=TABLE.resource_id, offset=450, limit=700)
        _, rows = await fetch_all(url, query)
    assert rows == expected()[450:1150]


@pytest.mark.parametrize("announced", [True, False])
async def test_a_page_over_max_page_bytes_fails_at_once_whether_or_not_its_size_is_announced(
    announced: bool,
) -> None:
    """No retry (it would only be as large again), and an unannounced body is cut off at the cap."""
    calls: list[int] = []
    record = ["1" * 50, "x" * 200]
    body = orjson.dumps({"success": True, "result": {"records": [record] * 2_000, "limit": 2_000}})

    async def big_page(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if announced:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse()  # chunked: no Content-Length
        await resp.prepare(request)
        for start in range(0, len(body), 16_384):
            await resp.write(body[start : start + 16_384])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post(ACTION_PATH, big_page)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        client = DatastoreClient(session, page_size=2_000, max_page_bytes=100_000, backoff=0.01)
        with pytest.raises(PackagingError, match=r"larger than this service accepts \(97.7 KiB\)"):
            await client.call(url, {"resource_id": "r", "limit": 2_000})
    assert calls == [1]
    assert len(body) > 100_000


async def test_a_q_query_is_answered_although_ckan_refuses_q_with_lists() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        query = DatastoreQuery(api_url=url, resource_id=TABLE.resource_id, q="leo", plain=True)
        columns, rows = await fetch_all(url, query)
        # The server refuses the combination the client must avoid, as CKAN 2.12 does.
        with pytest.raises(CkanError, match="Query is not a single statement"):
            async with aiohttp.ClientSession() as session:
                await DatastoreClient(session).call(
                    url, {"resource_id": TABLE.resource_id, "q": "leo", "records_format": "lists"}
                )
    assert columns == [*TABLE.names, "rank"]
    assert rows and all("leo" in str(r).lower() for r in rows)
    assert sorted(r[0] for r in rows) == sorted({r[0] for r in rows})  # each row once


async def test_numerics_keep_every_digit_ckan_sent() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        _, rows = await fetch_all(url, DatastoreQuery(api_url=url, resource_id=TABLE.resource_id))
    measurement = TABLE.position["measurement"]
    long_values = [r[measurement].text for r in rows if r[measurement] and len(r[measurement].text) > 25]
    assert long_values, "the table has numerics longer than a float holds"
    assert rows == expected()  # NumberText compares by its exact text


async def test_via_dump_falls_back_on_pages_where_the_portal_has_no_dump() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url, aiohttp.ClientSession() as session:
        client = DatastoreClient(session, page_size=700)
        query = DatastoreQuery(api_url=url, resource_id=TABLE.resource_id)
        info = await client.describe(query)
        rows = [row async for page in client.pages(query, info, via_dump=True) for row in page]
    assert rows == expected()


class Trickle:
    """A response body handed out a few bytes at a time, so records and characters straddle reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step = data, step

    async def read(self, _n: int = -1) -> bytes:
        chunk, self._data = self._data[: self._step], self._data[self._step :]
        return chunk


@pytest.mark.parametrize("step", [1, 3, 7, 64, 10_000])
async def test_the_dumps_csv_is_parsed_whole_however_it_is_cut(step: int) -> None:
    from packager.adapters.ckan_dump import _csv_pages, _dump_converter

    body = (
        '_id,note,ok,tags\r\n1,"two\nlines, and ""quotes""",t,"[""a,b""]"\n2,Zoë 東京 \u2028 x,f,null\n'
        '3,"",,[]\n4,,t,"[""x""]"\n'
    ).encode()
    converters = [_dump_converter(t) for t in ("int", "text", "bool", "_text")]
    pages = [
        page
        async for page in _csv_pages(Trickle(body, step), ["_id", "note", "ok", "tags"], converters, 3, 10)  # type: ignore[arg-type]
    ]
    assert [len(page) for page in pages] == [3, 1]
    assert [row for page in pages for row in page] == [
        ["1", 'two\nlines, and "quotes"', "true", '["a,b"]'],
        ["2", "Zoë 東京 \u2028 x", "false", ""],
        ["3", "", "", "[]"],
        ["4", "", "true", '["x"]'],
    ]


async def test_a_one_column_dump_keeps_its_empty_rows() -> None:
    # PostgreSQL writes a one-column row holding null as a blank line; it is a row, with one empty cell.
    from packager.adapters.ckan_dump import _csv_pages, _dump_converter

    body = b"ok\nt\n\nf\n"
    pages = [
        page
        async for page in _csv_pages(Trickle(body, 2), ["ok"], [_dump_converter("bool")], 10, 10)  # type: ignore[arg-type]
    ]
    assert [row for page in pages for row in page] == [["true"], [""], ["false"]]
