"""The paging modes of `datastore_search`: which pages to ask for, and when the last one has come.

- keyset (`include_next_page` / `next_page`, CKAN 2.12) when the sort is by `_id`, falling back to offset
  paging when the first page shows the server does not offer it;
- offset paging with a stable sort (the user's, `_id` as the last key) for any other sort;
- a continuation token: `cursor`/`next_cursor` for the `solr` backend, `after` for `versioned-datastore`.

Each advances by the `limit` the server *returned* (CKAN caps it at `rows_max`) and stops at a short page,
so no row is lost or repeated. The calls themselves (and their retries) are the client's, passed in as `call`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from packager.adapters.ckan_answers import as_lists
from packager.adapters.datastore_query import DatastoreQuery, QueryInfo
from packager.domain.numbers import needs_exact_numbers


class Call(Protocol):
    """One `datastore_search` call, retried, returning its `result` (`DatastoreClient.call`)."""

    async def __call__(
        self, api_url: str, params: Mapping[str, Any], *, exact_numbers: bool = False
    ) -> dict[str, Any]: ...


async def datastore_pages(
    call: Call, page_size: int, query: DatastoreQuery, info: QueryInfo, wanted: int
) -> AsyncIterator[list[list[Any]]]:
    """`wanted` rows of the query by keyset paging where the sort allows it, else by offset."""
    columns = info.columns
    base = {**query.base_params(), "records_format": query.records_format}
    exact = needs_exact_numbers(info.fields)
    user_sort = (query.sort or "").strip()
    done, offset = 0, query.offset

    if user_sort.replace(" ", "") in ("", "_id", "_idasc", "_iddesc"):
        # Keyset paging when the server offers it; the first page tells.
        sort = user_sort or "_id"
        filters = dict(query.filters or {})
        first = True
        while done < wanted:
            params = {
                **base,
                "filters": filters,
                "sort": sort,
                "include_next_page": True,
                "limit": min(page_size, wanted - done),
            }
            if first and offset:
                params["offset"] = offset
            result = await call(query.api_url, params, exact_numbers=exact)
            records = as_lists(result.get("records") or [], columns, result.get("fields"))[: wanted - done]
            if records:
                done += len(records)
                yield records
            returned_limit = int(result.get("limit") or params["limit"])
            if len(records) < returned_limit:
                return  # a short or empty page is the last one
            next_page = result.get("next_page")
            if next_page is None:
                if not first:
                    return
                offset += returned_limit  # no keyset support: go on with offset paging
                break
            filters = {**dict(query.filters or {}), **next_page}
            first = False
        else:
            return
    else:
        # A user sort: offset paging, made stable with `_id` as the last sort key.
        keys = [part.split()[0] for part in user_sort.split(",") if part.strip()]
        sort = user_sort if "_id" in keys else f"{user_sort}, _id"

    while done < wanted:
        params = {**base, "sort": sort, "offset": offset, "limit": min(page_size, wanted - done)}
        result = await call(query.api_url, params, exact_numbers=exact)
        records = as_lists(result.get("records") or [], columns, result.get("fields"))[: wanted - done]
        if not records:
            return
        done += len(records)
        yield records
        returned_limit = int(result.get("limit") or params["limit"])
        if len(records) < returned_limit:
            return
        offset += returned_limit


async def token_pages(
    call: Call,
    page_size: int,
    query: DatastoreQuery,
    info: QueryInfo,
    wanted: int,
    *,
    send: str,
    first: Any,
    receive: str,
) -> AsyncIterator[list[list[Any]]]:
    """Paging by a continuation token (solr's `cursor`, the versioned datastore's `after`).

    These backends do not combine a token with `offset`, so the user's offset is skipped here.
    """
    columns = info.columns
    base = query.base_params()
    if query.sort:
        base["sort"] = query.sort
    token, done, skip = first, 0, query.offset
    exact = needs_exact_numbers(info.fields)
    while done < wanted:
        params = {**base, "limit": min(page_size, wanted - done + skip)}
        if token is not None:
            params[send] = token
        result = await call(query.api_url, params, exact_numbers=exact)
        records = as_lists(result.get("records") or [], columns, result.get("fields"))
        if not records:
            return
        if skip:
            records, skip = records[skip:], max(skip - len(records), 0)
        records = records[: wanted - done]
        if records:
            done += len(records)
            yield records
        next_token = result.get(receive)
        if next_token is None or next_token == token:
            return
        token = next_token


def cursor_pages(
    call: Call, page_size: int, query: DatastoreQuery, info: QueryInfo, wanted: int
) -> AsyncIterator[list[list[Any]]]:
    """solr's `cursor` (`*` first) and `next_cursor`."""
    return token_pages(call, page_size, query, info, wanted, send="cursor", first="*", receive="next_cursor")


def after_pages(
    call: Call, page_size: int, query: DatastoreQuery, info: QueryInfo, wanted: int
) -> AsyncIterator[list[list[Any]]]:
    """The versioned datastore's `after`, sent back as it came."""
    return token_pages(call, page_size, query, info, wanted, send="after", first=None, receive="after")
