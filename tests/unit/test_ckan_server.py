"""The CKAN-compatible datastore_search server: paging, filters, formats, errors, faults, as in CKAN 2.12."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.dev.ckan_server import (
    ACTION_PATH,
    ADMIN_PATH,
    STATS,
    Faults,
    SyntheticTable,
    create_ckan_app,
    serve_app,
    serve_ckan,
)
from packager.domain.numbers import NumberText, loads_exact

TABLE = SyntheticTable("res-1", 1000, seed=7)
ROWS = [TABLE.row(i) for i in range(TABLE.rows)]
KENYA = [r["_id"] for r in ROWS if r["country"] == "Kenya"]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_ckan_app({TABLE.resource_id: TABLE}, rows_max=250))) as c:
        yield c


async def search(client: TestClient, expect: int = 200, **params: Any) -> dict[str, Any]:
    """POST a datastore_search call for TABLE and return the decoded answer."""
    resp = await client.post(ACTION_PATH, json={"resource_id": TABLE.resource_id, **params})
    body = await resp.json(loads=loads_exact)
    assert resp.status == expect, body
    assert body["success"] is (expect == 200)
    return body


async def result(client: TestClient, **params: Any) -> dict[str, Any]:
    return (await search(client, **params))["result"]


# ---------------------------------------------------------------------------------------------------------
# The synthetic table


def test_same_seed_gives_same_rows_and_another_seed_other_rows() -> None:
    again = SyntheticTable("other-id", 1000, seed=7)
    assert [again.row(i) for i in range(TABLE.rows)] == ROWS
    other = SyntheticTable("res-1", 1000, seed=8)
    assert [other.row(i) for i in range(50)] != ROWS[:50]


def test_rows_hold_every_kind_of_value_a_packager_must_write() -> None:
    python_types = {
        "int": int,
        "numeric": NumberText,  # the exact digits PostgreSQL prints
        "text": str,
        "bool": bool,
        "_text": list,
        "json": dict,
        "timestamp": str,
    }
    assert TABLE.fields[0] == {"id": "_id", "type": "int"}
    for field in TABLE.fields:
        values = [r[field["id"]] for r in ROWS]
        assert all(v is None or type(v) is python_types[field["type"]] for v in values), field
    assert [r["_id"] for r in ROWS] == list(range(1, 1001))
    nullable = {f["id"] for f in TABLE.fields if any(r[f["id"]] is None for r in ROWS)}
    assert {"count", "measurement", "notes", "verified", "tags", "attributes"} <= nullable
    notes = {r["notes"] for r in ROWS}
    assert {"", 'Zoë, "quoted"\nline', "tab\tseparated\tvalue"} <= notes
    stamps = [r["recorded_at"] for r in ROWS if r["recorded_at"] is not None]
    assert stamps and all(re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.000", s) for s in stamps)
    assert len({r["country"] for r in ROWS}) == 8 and 100 < len(KENYA) < 150


# ---------------------------------------------------------------------------------------------------------
# Paging


async def test_limit_defaults_to_100_and_is_capped_silently_at_rows_max(client: TestClient) -> None:
    default = await result(client)
    assert len(default["records"]) == 100 and default["limit"] == 100
    assert default["total"] == 1000 and default["records"] == ROWS[:100]
    assert "offset" not in default and "_links" not in default and "total_was_estimated" not in default
    capped = await result(client, limit=5000)
    assert len(capped["records"]) == 250 and capped["limit"] == 250


async def test_limit_zero_returns_total_fields_and_no_rows(client: TestClient) -> None:
    answer = await result(client, limit=0, filters={"country": "Kenya"})
    assert answer["records"] == []  # as a real CKAN 2.12 answers (see tests/real_ckan)
    assert answer["total"] == len(KENYA)
    assert answer["fields"] == TABLE.fields


async def test_offset_past_the_end_gives_empty_records_and_is_echoed(client: TestClient) -> None:
    answer = await result(client, offset=5000)
    assert answer["records"] == [] and answer["offset"] == 5000 and answer["total"] == 1000
    middle = await result(client, offset=990, limit=50)
    assert [r["_id"] for r in middle["records"]] == list(range(991, 1001))


async def test_get_with_json_query_values_matches_post_on_both_paths(client: TestClient) -> None:
    query = {
        "resource_id": TABLE.resource_id,
        "filters": orjson.dumps({"country": "Kenya"}).decode(),
        "limit": "7",
        "offset": "3",
        "fields": "_id,year",
        "include_total": "false",
    }
    got = await client.get("/api/action/datastore_search", params=query)
    body = await got.json(loads=loads_exact)
    posted = await result(client, filters={"country": "Kenya"}, limit=7, offset=3, fields=["_id", "year"])
    assert body["success"] is True
    assert body["result"]["records"] == posted["records"]
    assert [r["_id"] for r in posted["records"]] == KENYA[3:10]
    assert "total" not in body["result"] and posted["total"] == len(KENYA)


async def test_keyset_walk_visits_every_filtered_row_once_and_total_counts_rows_ahead(
    client: TestClient,
) -> None:
    filters: dict[str, Any] = {"country": "Kenya"}
    seen: list[int] = []
    pages = 0
    while True:
        answer = await result(client, filters=filters, limit=37, include_next_page=True, sort="_id")
        records = answer["records"]
        assert answer["total"] == len(KENYA) - len(seen)
        if not records:
            assert "next_page" not in answer
            break
        seen.extend(r["_id"] for r in records)
        # A short last page still carries next_page; the call after it returns nothing.
        assert answer["next_page"] == {"_id": {"gt": records[-1]["_id"]}}
        filters = {**filters, **answer["next_page"]}
        pages += 1
    assert seen == KENYA
    assert pages == -(-len(KENYA) // 37)


async def test_keyset_walk_backwards_uses_lt(client: TestClient) -> None:
    filters: dict[str, Any] = {"year": {"gte": 2000}}
    expected = [r["_id"] for r in reversed(ROWS) if r["year"] >= 2000]
    seen: list[int] = []
    while True:
        answer = await result(client, filters=filters, limit=200, include_next_page=True, sort="_id desc")
        if not answer["records"]:
            break
        seen.extend(r["_id"] for r in answer["records"])
        assert list(answer["next_page"]["_id"]) == ["lt"]
        filters = {**filters, **answer["next_page"]}
    assert seen == expected


async def test_unfiltered_pages_of_three_million_rows_cost_nothing_up_front() -> None:
    big = SyntheticTable("big", 3_000_000)
    async with TestClient(TestServer(create_ckan_app({"big": big}))) as c:
        resp = await c.post(ACTION_PATH, json={"resource_id": "big", "offset": 2_999_990, "limit": 20})
        answer = (await resp.json(loads=loads_exact))["result"]
        assert [r["_id"] for r in answer["records"]] == list(range(2_999_991, 3_000_001))
        assert answer["total"] == 3_000_000
        resp = await c.post(
            ACTION_PATH,
            json={
                "resource_id": "big",
                "filters": {"_id": {"gt": 2_000_000}},
                "limit": 2,
                "include_next_page": True,
            },
        )
        answer = (await resp.json(loads=loads_exact))["result"]
        assert [r["_id"] for r in answer["records"]] == [2_000_001, 2_000_002]
        assert answer["total"] == 1_000_000 and answer["next_page"] == {"_id": {"gt": 2_000_002}}


# ---------------------------------------------------------------------------------------------------------
# Filters, q, fields, sort


async def test_filters_equality_list_and_operators(client: TestClient) -> None:
    kenya = await result(client, filters={"country": "Kenya"}, limit=250)
    assert [r["_id"] for r in kenya["records"]] == KENYA and kenya["total"] == len(KENYA)

    either = await result(client, filters={"country": ["Kenya", "Perú"]}, limit=0)
    assert either["total"] == sum(r["country"] in ("Kenya", "Perú") for r in ROWS)

    window = await result(client, filters={"year": {"gte": 2000, "lt": 2005}, "country": "Kenya"}, limit=250)
    expected = [r["_id"] for r in ROWS if 2000 <= r["year"] < 2005 and r["country"] == "Kenya"]
    assert [r["_id"] for r in window["records"]] == expected and expected

    as_text = await result(client, filters={"year": "2001"}, limit=0)
    assert as_text["total"] == sum(r["year"] == 2001 for r in ROWS) > 0

    flagged = await result(client, filters={"verified": "true"}, limit=0)
    assert flagged["total"] == sum(r["verified"] is True for r in ROWS)

    empty_notes = await result(client, filters={"notes": ""}, limit=0)
    assert empty_notes["total"] == sum(r["notes"] == "" for r in ROWS) > 0


async def test_a_null_filter_matches_nothing(client: TestClient) -> None:
    assert (await result(client, filters={"notes": None}))["total"] == 0
    assert (await result(client, filters={"count": {"gt": None}}))["total"] == 0
    with_null = await result(client, filters={"country": [None, "Kenya"]}, limit=0)
    assert with_null["total"] == len(KENYA)


async def test_q_matches_words_case_insensitively_and_adds_rank(client: TestClient) -> None:
    answer = await result(client, q="LEO", limit=250, include_next_page=True)
    expected = {
        r["_id"]
        for r in ROWS
        if "leo" in " ".join([r["species"], r["country"], r["notes"] or "", *(r["tags"] or [])]).lower()
    }
    assert {r["_id"] for r in answer["records"]} == expected and answer["total"] == len(expected)
    assert answer["fields"][-1] == {"id": "rank", "type": "float"}
    ranks = [float(r["rank"]) for r in answer["records"]]
    assert ranks == sorted(ranks, reverse=True) and all(0 < r < 1 for r in ranks)
    assert "next_page" not in answer  # relevance order: no keyset paging without sort=_id

    by_field = await result(client, q={"species": "panthera leo"}, sort="_id", include_next_page=True)
    assert {r["_id"] for r in by_field["records"]} == {
        r["_id"] for r in ROWS if r["species"] == "Panthera leo"
    }
    assert "next_page" in by_field and "rank species" in by_field["records"][0]

    only = await result(client, q="leo", fields="_id")
    assert list(only["records"][0]) == ["_id"]


async def test_fields_selects_columns_in_the_requested_order(client: TestClient) -> None:
    answer = await result(client, fields="year, country", limit=3)
    assert answer["fields"] == [{"id": "year", "type": "int"}, {"id": "country", "type": "text"}]
    assert [list(r) for r in answer["records"]] == [["year", "country"]] * 3
    assert answer["records"][0] == {"year": ROWS[0]["year"], "country": ROWS[0]["country"]}


async def test_sort_ascending_descending_and_by_several_columns(client: TestClient) -> None:
    down = await result(client, sort="_id desc", limit=3)
    assert [r["_id"] for r in down["records"]] == [1000, 999, 998]
    answer = await result(client, sort="year desc, _id", limit=250, offset=100)
    expected = sorted(ROWS, key=lambda r: (-r["year"], r["_id"]))[100:350]
    assert [r["_id"] for r in answer["records"]] == [r["_id"] for r in expected]
    nulls = await result(client, sort="count", fields="count", limit=250, offset=900)
    assert nulls["records"][-1] == {"count": None}  # PostgreSQL puts nulls last when ascending


# ---------------------------------------------------------------------------------------------------------
# Other backends


async def test_solr_cursor_walk_visits_every_row_once() -> None:
    app = create_ckan_app({TABLE.resource_id: TABLE}, backend="solr")
    async with TestClient(TestServer(app)) as c:
        cursor, seen = "*", list[Any]()
        for _ in range(100):
            resp = await c.post(
                ACTION_PATH,
                json={
                    "resource_id": TABLE.resource_id,
                    "cursor": cursor,
                    "limit": 150,
                    "filters": {"country": "Kenya"},
                },
            )
            answer = (await resp.json(loads=loads_exact))["result"]
            assert answer["_backend"] == "solr" and answer["total"] == len(KENYA)
            seen.extend(r["_id"] for r in answer["records"])
            if answer.get("next_cursor") in (None, cursor):
                assert answer["records"] == []
                break
            cursor = answer["next_cursor"]
        assert seen == KENYA


async def test_versioned_datastore_after_walk_visits_every_row_once() -> None:
    app = create_ckan_app({TABLE.resource_id: TABLE}, backend="versioned-datastore")
    async with TestClient(TestServer(app)) as c:
        params: dict[str, Any] = {"resource_id": TABLE.resource_id, "limit": 300}
        seen: list[int] = []
        pages = 0
        while True:
            answer = (await (await c.post(ACTION_PATH, json=params)).json(loads=loads_exact))["result"]
            assert answer["_backend"] == "versioned-datastore"
            seen.extend(r["_id"] for r in answer["records"])
            pages += 1
            if "after" not in answer:
                break
            params["after"] = answer["after"]
        assert seen == list(range(1, 1001)) and pages == 4
        resp = await c.get(ACTION_PATH, params={"resource_id": TABLE.resource_id, "after": "[990]"})
        assert [r["_id"] for r in (await resp.json(loads=loads_exact))["result"]["records"]] == list(
            range(991, 1001)
        )


# ---------------------------------------------------------------------------------------------------------
# Records formats


def _first(predicate: Any) -> dict[str, Any]:
    return next(r for r in ROWS if predicate(r))


async def test_records_format_lists_follow_the_fields(client: TestClient) -> None:
    answer = await result(client, records_format="lists", fields="country,_id", limit=2)
    assert answer["records"] == [[ROWS[0]["country"], 1], [ROWS[1]["country"], 2]]
    whole = await result(client, records_format="lists", limit=1)
    assert whole["records"] == [list(ROWS[0].values())]


async def test_records_format_csv_as_postgres_copy_writes_it(client: TestClient) -> None:
    empty_false = _first(lambda r: r["notes"] == "" and r["verified"] is False and r["tags"])
    null_true = _first(lambda r: r["notes"] is None and r["verified"] is True and r["tags"] is None)
    quoted = _first(lambda r: r["notes"] == 'Zoë, "quoted"\nline' and r["verified"] is None)
    ids = [empty_false["_id"], null_true["_id"], quoted["_id"]]
    answer = await result(
        client, records_format="csv", fields="_id,notes,verified,tags", filters={"_id": ids}, sort="_id"
    )
    tags = orjson.dumps(empty_false["tags"]).decode().replace('"', '""')
    expected = {
        empty_false["_id"]: f'{empty_false["_id"]},"",f,"{tags}"',
        null_true["_id"]: f"{null_true['_id']},,t,null",
        quoted["_id"]: f'{quoted["_id"]},"Zoë, ""quoted""\nline",,'
        + (
            "null"
            if quoted["tags"] is None
            else '"' + orjson.dumps(quoted["tags"]).decode().replace('"', '""') + '"'
        ),
    }
    assert isinstance(answer["records"], str)
    assert answer["records"] == "".join(expected[i] + "\n" for i in sorted(ids))

    attributes = _first(lambda r: r["attributes"] is not None)
    as_json = await result(
        client, records_format="csv", fields="attributes", filters={"_id": attributes["_id"]}
    )
    line = as_json["records"].rstrip("\n")
    assert line.startswith('"{') and orjson.loads(line[1:-1].replace('""', '"')) == attributes["attributes"]


async def test_records_format_tsv_quotes_tabs_not_commas(client: TestClient) -> None:
    tabbed = _first(lambda r: r["notes"] == "tab\tseparated\tvalue")
    commas = _first(lambda r: r["notes"] == "a,b,c")
    answer = await result(
        client, records_format="tsv", fields="_id,notes", filters={"_id": [tabbed["_id"], commas["_id"]]}
    )
    lines = dict(line.split("\t", 1) for line in answer["records"].splitlines() if not line.startswith('"'))
    assert lines[str(commas["_id"])] == "a,b,c"
    assert f'{tabbed["_id"]}\t"tab\tseparated\tvalue"\n' in answer["records"]


# ---------------------------------------------------------------------------------------------------------
# Errors


async def test_unknown_resource_is_a_404_not_found_error(client: TestClient) -> None:
    resp = await client.post(ACTION_PATH, json={"resource_id": "nope"})
    body = await resp.json(loads=loads_exact)
    assert resp.status == 404
    assert body["success"] is False and body["error"]["__type"] == "Not Found Error"
    assert "nope" in body["error"]["message"] and "help" in body


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"filters": "{not json"}, "filters"),
        ({"fields": "_id,nope"}, "fields"),
        ({"sort": "nope desc"}, "sort"),
        ({"limit": "-1"}, "limit"),
        ({"records_format": "xml"}, "records_format"),
    ],
)
async def test_bad_parameters_are_a_409_validation_error(
    client: TestClient, params: dict[str, str], field: str
) -> None:
    resp = await client.get(ACTION_PATH, params={"resource_id": TABLE.resource_id, **params})
    body = await resp.json(loads=loads_exact)
    assert resp.status == 409
    assert body["success"] is False and body["error"]["__type"] == "Validation Error"
    assert isinstance(body["error"]["message"][field], list)
    assert body["error"][field] == body["error"]["message"][field]  # where CKAN itself puts them


async def test_api_token_is_the_raw_authorization_header() -> None:
    app = create_ckan_app({TABLE.resource_id: TABLE}, api_token="tok-123")
    async with TestClient(TestServer(app)) as c:
        payload = {"resource_id": TABLE.resource_id, "limit": 1}
        for headers in (
            {},
            {"Authorization": "Bearer tok-123"},
            {"X-CKAN-API-Key": "tok-123"},
            {"Authorization": "wrong"},
        ):
            resp = await c.post(ACTION_PATH, json=payload, headers=headers)
            body = await resp.json(loads=loads_exact)
            assert resp.status == 403, headers
            assert body["error"]["__type"] == "Authorization Error" and body["success"] is False
        resp = await c.post(ACTION_PATH, json=payload, headers={"Authorization": "tok-123"})
        assert resp.status == 200 and len((await resp.json(loads=loads_exact))["result"]["records"]) == 1


# ---------------------------------------------------------------------------------------------------------
# Faults and serving


async def _statuses(app_faults: Faults, calls: int) -> tuple[list[int], dict[str, int]]:
    app = create_ckan_app({TABLE.resource_id: TABLE}, faults=app_faults)
    async with TestClient(TestServer(app)) as c:
        statuses = []
        for offset in range(calls):
            resp = await c.post(
                ACTION_PATH, json={"resource_id": TABLE.resource_id, "offset": offset, "limit": 1}
            )
            statuses.append(resp.status)
            await resp.read()
            if resp.status != 200:
                retry = await c.post(
                    ACTION_PATH, json={"resource_id": TABLE.resource_id, "offset": offset, "limit": 1}
                )
                assert retry.status == 200  # the same request never fails twice in a row
                await retry.read()
        stats: dict[str, int] = app[STATS]
        return statuses, dict(stats)


async def test_error_rate_answers_5xx_at_about_the_rate_and_deterministically() -> None:
    statuses, stats = await _statuses(Faults(error_rate=0.3, seed=4), 200)
    failures = [s for s in statuses if s != 200]
    assert 40 <= len(failures) <= 80
    assert set(failures) <= {500, 502, 503} and len(set(failures)) > 1
    assert stats["errors_injected"] == len(failures) and stats["requests"] == 200 + len(failures)
    again, _ = await _statuses(Faults(error_rate=0.3, seed=4), 200)
    assert again == statuses


async def test_reset_cuts_the_body_and_the_retry_gets_through() -> None:
    app = create_ckan_app({TABLE.resource_id: TABLE}, faults=Faults(reset_rate=1.0))
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        payload = {"resource_id": TABLE.resource_id, "limit": 200}
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(url, json=payload) as resp:
                assert resp.status == 200
                await resp.read()
        async with session.post(url, json=payload) as resp:
            assert len((await resp.json(loads=loads_exact))["result"]["records"]) == 200
    assert app[STATS]["resets_injected"] == 1


async def test_timeout_rate_delays_the_answer() -> None:
    app = create_ckan_app(
        {TABLE.resource_id: TABLE}, faults=Faults(timeout_rate=1.0, timeout_seconds=5.0, slow_page_delay=0.01)
    )
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        payload = {"resource_id": TABLE.resource_id, "limit": 1}
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=0.2)) as resp:
                await resp.read()
        async with session.post(url, json=payload) as resp:
            assert resp.status == 200
    assert app[STATS]["timeouts_injected"] == 1


async def test_serve_ckan_listens_on_a_free_port_and_cleans_up() -> None:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url, aiohttp.ClientSession() as session:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api/3/action/datastore_search")
        async with session.get(url, params={"resource_id": TABLE.resource_id, "limit": "2"}) as resp:
            assert [r["_id"] for r in (await resp.json(loads=loads_exact))["result"]["records"]] == [1, 2]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url, params={"resource_id": TABLE.resource_id}):
                pass


async def test_admin_endpoint_switches_a_burst_of_5xx_on_and_off_at_run_time() -> None:
    app = create_ckan_app({TABLE.resource_id: TABLE}, admin=True)
    payload = {"resource_id": TABLE.resource_id, "limit": 1}
    async with TestClient(TestServer(app)) as c:

        async def statuses(n: int) -> list[int]:
            found = []
            for offset in range(n):  # distinct requests: none is exempt as another's retry
                resp = await c.post(ACTION_PATH, json={**payload, "offset": offset})
                await resp.read()
                found.append(resp.status)
            return found

        assert set(await statuses(20)) == {200}
        switched = await c.post(ADMIN_PATH, json={"error_rate": 1.0, "seed": 3})
        assert switched.status == 200 and (await switched.json())["faults"]["error_rate"] == 1.0
        assert set(await statuses(20)) <= {500, 502, 503}
        healed = await c.post(ADMIN_PATH, json={})
        assert (await healed.json())["faults"] is None
        assert set(await statuses(20)) == {200}
        shown = await (await c.get(ADMIN_PATH)).json()
        assert shown["stats"]["errors_injected"] == 20
        assert (await c.post(ADMIN_PATH, json={"no_such_fault": 1})).status == 400


async def test_admin_endpoint_is_absent_unless_asked_for(client: TestClient) -> None:
    assert (await client.post(ADMIN_PATH, json={"error_rate": 1.0})).status in (404, 405)
