"""One contract, two servers: the CKAN-compatible server the project ships answers as a real CKAN 2.12 does.

Every test runs against both (`datastore` is parametrised, as the event log's contract suite is): the shipped
`packager.dev.ckan_server` over a synthetic table, and the real CKAN of this session over a loaded table. What
the real one does is the contract; a difference found here is a bug in the shipped server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from packager.dev.ckan_server import SyntheticTable, serve_ckan
from packager.domain.numbers import NumberText, loads_exact
from tests.real_ckan.conftest import Portal


@dataclass(frozen=True)
class Datastore:
    """A server under contract and what its table holds."""

    api_url: str
    resource_id: str
    numeric: str  # a `numeric` column with values longer than a float keeps
    word: str  # a word some rows hold, for `q`
    rows: int


@pytest.fixture(params=["shipped", pytest.param("real", marks=pytest.mark.real_ckan)])
async def datastore(request: pytest.FixtureRequest) -> AsyncIterator[Datastore]:
    if request.param == "real":
        portal: Portal = request.getfixturevalue("portal")
        yield Datastore(portal.api_url, portal.big, "amount", "leo", 21_000)
        return
    table = SyntheticTable("contract", 21_000, seed=3)
    async with serve_ckan({table.resource_id: table}) as url:
        yield Datastore(url, table.resource_id, "measurement", "leo", table.rows)


async def search(datastore: Datastore, **params: Any) -> tuple[int, dict[str, Any]]:
    """POST datastore_search; the status and the answer, numbers parsed exactly."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(datastore.api_url, json={"resource_id": datastore.resource_id, **params}) as resp,
    ):
        return resp.status, loads_exact(await resp.read())


@pytest.mark.parametrize("search_key", ["q", "full_text"])
async def test_a_full_text_search_is_refused_with_lists(datastore: Datastore, search_key: str) -> None:
    status, body = await search(datastore, **{search_key: datastore.word}, records_format="lists")
    assert status == 409 and body["success"] is False
    assert body["error"]["__type"] == "Validation Error"
    assert body["error"]["query"] == ["Query is not a single statement."]


async def test_a_search_with_objects_adds_a_rank_column(datastore: Datastore) -> None:
    status, body = await search(datastore, q=datastore.word, records_format="objects", limit=5)
    assert status == 200, body
    result = body["result"]
    assert result["fields"][-1] == {"id": "rank", "type": "float"}
    assert result["records"] and all("rank" in r for r in result["records"])
    assert result["total"] > 0


async def test_numerics_come_as_json_numbers_with_every_digit(datastore: Datastore) -> None:
    status, body = await search(datastore, limit=3000, records_format="lists", fields=[datastore.numeric])
    assert status == 200, body
    assert body["result"]["fields"] == [{"id": datastore.numeric, "type": "numeric"}]
    values = [row[0] for row in body["result"]["records"] if row[0] is not None]
    assert all(isinstance(v, NumberText | int) for v in values)  # numbers, never strings
    longest = max(values, key=lambda v: len(str(v)))
    assert len(str(longest).replace("-", "").replace(".", "")) >= 25  # more digits than a double has


async def test_limit_zero_gives_fields_and_total_only(datastore: Datastore) -> None:
    status, body = await search(datastore, limit=0)
    result = body["result"]
    assert status == 200 and result["records"] == [] and result["total"] == datastore.rows
    assert result["fields"][0] == {"id": "_id", "type": "int"}
    assert "offset" not in result  # left out when not given


async def test_a_limit_above_rows_max_is_capped_silently(datastore: Datastore) -> None:
    status, body = await search(datastore, limit=40_000, fields=["_id"], records_format="lists")
    assert status == 200 and body["result"]["limit"] == 32_000
    assert len(body["result"]["records"]) == datastore.rows


async def test_keyset_pages_carry_next_page(datastore: Datastore) -> None:
    status, body = await search(
        datastore, sort="_id", include_next_page=True, limit=100, records_format="lists"
    )
    assert status == 200
    assert body["result"]["next_page"] == {"_id": {"gt": 100}}
    status, body = await search(
        datastore, sort="_id", include_next_page=True, limit=100, filters={"_id": {"gt": datastore.rows - 50}}
    )
    assert [r["_id"] for r in body["result"]["records"]] == list(
        range(datastore.rows - 49, datastore.rows + 1)
    )
    assert body["result"]["total"] == 50  # a keyset page counts only the rows ahead
    status, body = await search(
        datastore, sort="_id", include_next_page=True, limit=100, filters={"_id": {"gt": datastore.rows}}
    )
    assert body["result"]["records"] == [] and "next_page" not in body["result"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "no_such_column"}, "sort"),
        ({"fields": ["no_such_column"]}, "fields"),
        ({"limit": -1}, "limit"),
    ],
)
async def test_bad_parameters_are_a_409_validation_error(
    datastore: Datastore, params: dict[str, Any], field: str
) -> None:
    status, body = await search(datastore, **params)
    assert status == 409 and body["success"] is False
    assert body["error"]["__type"] == "Validation Error"
    assert field in body["error"]


async def test_a_null_filter_matches_nothing(datastore: Datastore) -> None:
    status, body = await search(datastore, filters={datastore.numeric: None})
    assert status == 200 and body["result"]["records"] == [] and body["result"]["total"] == 0


async def show(datastore: Datastore, action: str, **params: Any) -> tuple[int, dict[str, Any]]:
    """POST another action beside datastore_search; the status and the answer."""
    url = datastore.api_url.rsplit("/", 1)[0] + "/" + action
    async with aiohttp.ClientSession() as session, session.post(url, json=params) as resp:
        return resp.status, loads_exact(await resp.read())


# What the EML of a GBIF-ready archive reads (packager.domain.dwc.eml), with the keys around it.
PACKAGE_KEYS = {
    "id", "name", "title", "notes", "license_id", "license_title", "maintainer", "maintainer_email",
    "author", "author_email", "organization", "owner_org", "extras", "resources", "tags", "groups",
    "num_resources", "num_tags", "isopen", "type", "private", "state", "metadata_created",
    "metadata_modified", "url", "version",
}  # fmt: skip
RESOURCE_KEYS = {"id", "package_id", "name", "description", "url", "state", "datastore_active", "position"}


async def test_a_resource_leads_to_its_dataset(datastore: Datastore) -> None:
    status, body = await show(datastore, "resource_show", id=datastore.resource_id)
    assert status == 200 and body["success"] is True, body
    resource = body["result"]
    assert set(resource) >= RESOURCE_KEYS and resource["datastore_active"] is True
    status, body = await show(datastore, "package_show", id=resource["package_id"])
    assert status == 200 and body["success"] is True, body
    package = body["result"]
    assert set(package) >= PACKAGE_KEYS
    assert package["id"] == resource["package_id"] and package["type"] == "dataset"
    assert [r["id"] for r in package["resources"]] == [datastore.resource_id]
    assert package["num_resources"] == 1 and isinstance(package["extras"], list)


@pytest.mark.parametrize("action", ["resource_show", "package_show"])
async def test_an_unknown_id_is_a_404(datastore: Datastore, action: str) -> None:
    status, body = await show(datastore, action, id="no-such-thing")
    assert status == 404 and body["success"] is False
    assert body["error"] == {"message": "Not found", "__type": "Not Found Error"}
