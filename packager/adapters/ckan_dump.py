"""Reading a query through CKAN's own streaming export, `/datastore/dump/{id}`, for the csv and tsv writers.

A real CKAN 2.12 serves it about five times faster than `datastore_search` pages (PostgreSQL's COPY, no JSON).
Its cells are handed on as the text those writers write for the pages' values (see `packager.adapters.ckan`),
all strings, so the writers render nothing again; the CSV body is parsed a chunk at a time, so memory stays
flat. A portal without the dump (404, not CSV, another header) raises `NoDump` before the first row, and the
client reads pages instead; a dump cut mid-way resumes at the row it reached (its sort is stable, `_id`
last), under the service's retry policy.
"""

from __future__ import annotations

import codecs
import csv
import gc
import io
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from packager.adapters.ckan_answers import RETRYABLE_STATUS, gave_up
from packager.adapters.datastore_query import DatastoreQuery, QueryInfo
from packager.core import retrying
from packager.core.errors import PackagingError
from packager.core.retrying import Backoff, Retryable, retry_after_seconds
from packager.domain.numbers import loads_exact
from packager.domain.value_text import column_texts


async def dump_pages(
    session: aiohttp.ClientSession,
    url: str,
    query: DatastoreQuery,
    info: QueryInfo,
    wanted: int,
    *,
    headers: Mapping[str, str],
    page_size: int,
    backoff: Backoff,
    attempts: int,
    on_retry: Callable[[BaseException, int, float], None],
) -> AsyncIterator[list[list[Any]]]:
    """`wanted` rows of the query from the dump at `url`, page by page, retried where it was cut."""
    columns = info.columns
    converters = [_dump_converter(str(f.get("type") or "")) for f in info.fields]
    done = 0
    try:
        async for attempt in retrying.attempts(
            "CKAN's dump",
            backoff=backoff,
            retry_on=(aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, Retryable),
            max_attempts=attempts,
            deadline=retrying.current_deadline(),
            on_retry=on_retry,
        ):
            with attempt:
                params = _dump_params(query, query.offset + done, wanted - done)
                async with session.get(url, params=params, headers=headers) as resp:
                    if resp.status in RETRYABLE_STATUS:
                        asked = retry_after_seconds(resp.headers.get("Retry-After"))
                        raise Retryable(f"HTTP {resp.status}", retry_after=asked)
                    # CKAN 2.12 sends the CSV as application/octet-stream, named in Content-Disposition.
                    kind = resp.headers.get("Content-Type", "")
                    named = resp.headers.get("Content-Disposition", "")
                    if resp.status != 200 or not ("csv" in kind or '.csv"' in named):
                        raise NoDump(f"HTTP {resp.status} {kind}")
                    # A retry resumes at row `done`: a page is only handed on once parsed whole.
                    async for page in _csv_pages(resp.content, columns, converters, page_size, wanted - done):
                        done += len(page)
                        if page:
                            yield page
                        if done >= wanted:
                            return
                return  # a body cut short raises ClientPayloadError; a clean end is the table's end
    except retrying.GaveUp as exc:
        raise PackagingError(gave_up("CKAN's dump", exc)) from None


class NoDump(Exception):
    """The portal does not serve the dump this query needs; pages are read instead."""


_ACTION_PATH = re.compile(r"^(?P<site>.*?)/api(?:/3)?/action/datastore_search/?$")
_DUMP_READ = 1024 * 1024


def dump_url(query: DatastoreQuery) -> str | None:
    """The `/datastore/dump/{id}` URL beside the query's `datastore_search` URL, when the query fits it."""
    match = _ACTION_PATH.match(query.api_url.split("?", 1)[0])
    if match is None or any("," in f for f in query.fields or ()):  # the dump's `fields` is comma-separated
        return None
    return f"{match['site']}/datastore/dump/{quote(query.resource_id, safe='')}"


def _dump_params(query: DatastoreQuery, offset: int, limit: int) -> dict[str, str]:
    """The dump's query string: the query's own parameters, sorted stably as the pages are."""
    params: dict[str, str] = {"format": "csv", "bom": "false"}
    if query.filters:
        params["filters"] = orjson.dumps(dict(query.filters)).decode()
    if query.q:
        params["q"] = query.q if isinstance(query.q, str) else orjson.dumps(dict(query.q)).decode()
    if query.plain is not None:
        params["plain"] = "true" if query.plain else "false"
    if query.language:
        params["language"] = query.language
    if query.fields:
        params["fields"] = ",".join(query.fields)
    user_sort = (query.sort or "").strip()
    keys = [part.split()[0] for part in user_sort.split(",") if part.strip()]
    params["sort"] = user_sort if "_id" in keys else (f"{user_sort}, _id" if user_sort else "_id")
    if offset:
        params["offset"] = str(offset)
    params["limit"] = str(limit)
    return params


# A boolean as the csv and tsv writers write it; "" is a null.
_BOOLEAN_TEXT: dict[str, str] = {"t": "true", "f": "false", "": ""}


def _boolean_texts(texts: Sequence[str]) -> list[str]:
    return list(map(_BOOLEAN_TEXT.__getitem__, texts))


def _json_texts(texts: Sequence[str]) -> Sequence[str]:
    # One exact parse of the whole column as a JSON array (a parse per cell costs several times more), then
    # the writers' own rendering of those values: compact JSON, a JSON string as its text, null as "".
    return column_texts(loads_exact("[" + ",".join([t or "null" for t in texts]) + "]"))


def _dump_converter(column_type: str) -> Callable[[Sequence[str]], Sequence[str]] | None:
    """How one column of the dump's CSV becomes the texts the csv and tsv writers write for the pages' values.

    None: the dump's text as it is, which is already that text: PostgreSQL's text of integers, numerics and
    floats (the same digits as in `datastore_search`'s JSON), dates, times and text (an empty cell is "" where
    the pages may hold a null: written alike). Booleans and JSON (and arrays, which CKAN sends as JSON) are
    rewritten, as texts too: every cell is a string, which the writers use as it is (building Python values
    for the writers to render again cost more than the parse).
    """
    kind = column_type.strip().lower()
    if kind in ("bool", "boolean"):
        return _boolean_texts
    if kind.startswith("_") or kind in ("json", "jsonb"):
        return _json_texts
    return None


async def _csv_pages(
    stream: aiohttp.StreamReader, columns: list[str], converters: list[Any], page_size: int, most: int
) -> AsyncIterator[list[list[str]]]:
    """At most `most` converted rows from the dump's CSV body, in pages, read a chunk at a time (memory stays
    flat)."""
    pending = ""
    header: list[str] | None = None
    rows: list[list[str]] = []
    decoder = codecs.getincrementaldecoder("utf-8")()
    while most > 0:
        chunk = await stream.read(_DUMP_READ)
        text = pending + decoder.decode(chunk, final=not chunk)
        if chunk:
            cut = _last_record_end(text)
            complete, pending = text[:cut], text[cut:]
        else:
            complete, pending = text, ""
        records = _parse_csv(complete) if complete else []
        if header is None and records:
            header = records.pop(0)
            if header != columns:
                raise NoDump(f"the dump's columns {header} are not the query's {columns}")
        if len(columns) == 1:  # a one-column row holding null or "" is a blank line, which csv reads as []
            records = [record or [""] for record in records]
        records = records[:most]
        most -= len(records)
        rows.extend(records)
        # Whole pages only, until the last: a page is sliced off once, not the rest of the rows each time.
        whole = len(rows) if not chunk or most <= 0 else len(rows) - len(rows) % page_size
        for start in range(0, whole, page_size):
            yield _without_gc(_convert, rows[start : start + page_size], converters)
        del rows[:whole]
        if not chunk:
            return


def _parse_csv(text: str) -> list[list[str]]:
    # newline="": lines end only at LF or CR (quoted inside values), never at U+2028 and the like.
    return _without_gc(lambda: list(csv.reader(io.StringIO(text, newline=""))))


def _without_gc(build: Callable[..., Any], *args: Any) -> Any:
    """`build(*args)` with the cyclic garbage collector paused: it makes thousands of lists that all live
    on, which the collector would scan again and again for nothing (a quarter of the time of a dump)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return build(*args)
    finally:
        if enabled:
            gc.enable()


def _last_record_end(text: str) -> int:
    """Where the last complete CSV record in `text` ends: after a newline outside quotes (0 if none)."""
    quotes = text.count('"')
    end = len(text)
    while True:
        newline = text.rfind("\n", 0, end)
        if newline < 0:
            return 0
        quotes -= text.count('"', newline, end)
        if quotes % 2 == 0:  # an even number of quotes before it: the newline is outside any quoted field
            return newline + 1
        end = newline


def _convert(rows: list[list[str]], converters: list[Any]) -> list[list[str]]:
    """The rows with the columns that have a converter rewritten in place (most have none)."""
    for index, convert in enumerate(converters):
        if convert is not None:
            texts = convert([row[index] for row in rows])
            for row, text in zip(rows, texts, strict=True):
                row[index] = text
    return rows
