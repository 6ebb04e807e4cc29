"""Adapter: reading every row of a CKAN `datastore_search` query, page by page, none lost or repeated.

The client follows the behaviour CKAN documents for `datastore_search`:

- a first call with `limit=0` reads the query's `fields`, `total` and `_backend`;
- pages are requested with `PAGE_SIZE` rows and advanced by the `limit` the server *returned* (CKAN caps it
  at `rows_max`);
- paging mode: keyset (`include_next_page` / `next_page`, CKAN 2.12) when the server offers it and the sort
  is by `_id`; `cursor`/`next_cursor` when `_backend` is `solr`; `after` when it is `versioned-datastore`;
  otherwise offset paging with a stable sort (`_id` unless the user gave one, with `_id` as tie-break);
- the API key goes raw in the `Authorization` header;
- timeouts, connection errors, cut bodies, 429 and 5xx are retried under the service's retry policy
  (packager.core.retrying: backoff with jitter, `Retry-After` honoured, within the job's deadline),
  resuming at the page that failed: a page is only handed on once parsed whole, so no row is written twice
  or skipped;
- `success: false`, 403, 404 and 409 raise `CkanError` carrying CKAN's own message;
- an answer larger than `max_page_bytes` fails the job (a page is held in memory while it is parsed).
- `records_format=lists` (compact, in column order) except with `q`: CKAN 2.12 refuses `q` together with
  `lists` ("Query is not a single statement"), so a query with `q` asks for `objects`, which are put back
  into column order here;
- numbers arrive exactly as CKAN sent them: a query whose `fields` include `numeric`, float or JSON columns is
  parsed by `domain.numbers.loads_exact` (integers of any size, other numbers as `NumberText`); the others
  by orjson, which is exact for them and faster;
- `pages(..., via_dump=True)`, for the csv and tsv writers only, reads CKAN's own streaming export,
  `/datastore/dump/{id}` (same `q`, `plain`, `language`, `filters`, `sort`, `fields`, `offset`, `limit`),
  which a real CKAN 2.12 serves about five times faster than `datastore_search` pages (PostgreSQL's COPY, no
  JSON). Its cells are handed on as the text those writers write for the pages' values (PostgreSQL's own
  text of numbers, dates and text; `t`/`f` as `true`/`false`; JSON and arrays parsed exactly, so they are
  written compactly as the pages' are): the same bytes, which the `real_ckan` tests check. The dump cannot
  tell an empty string from a null, which csv and tsv write alike. Only a CKAN that answers like 2.11 or
  later (`include_next_page` in its answers) is read this way; a portal without the dump (404, not CSV,
  another header) is read by pages instead, and a dump cut mid-way resumes at the row it reached (its sort
  is stable, `_id` last).
"""

from __future__ import annotations

import codecs
import csv
import gc
import io
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from packager.core import retrying
from packager.core.errors import PackagingError
from packager.core.retrying import Backoff, Retryable, retry_after_seconds
from packager.domain.emails import human_size
from packager.domain.numbers import loads_exact, needs_exact_numbers

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Longest wait between two tries, unless the server asks for a longer one with Retry-After.
BACKOFF_CAP = 30.0


def _gave_up(source: str, exc: retrying.GaveUp) -> str:
    """The requester's explanation of a source that kept failing."""
    if exc.at_deadline:
        return f"{source} kept failing ({exc.last}); {exc.reason}"
    return f"{source} kept failing after {exc.attempts} attempts: {exc.last}"


class CkanError(PackagingError):
    """CKAN refused the query; `message` is CKAN's own explanation."""


@dataclass(frozen=True, slots=True)
class DatastoreQuery:
    """The user's query, as the original service forwarded it to CKAN."""

    api_url: str
    resource_id: str
    filters: Mapping[str, Any] = field(default_factory=dict)
    q: str | Mapping[str, Any] | None = None
    plain: bool | None = None
    language: str | None = None
    fields: Sequence[str] | None = None
    sort: str | None = None
    offset: int = 0
    limit: int | None = None  # rows wanted in all; None means every row

    @property
    def records_format(self) -> str:
        """`lists` where CKAN allows it; `objects` with `q`, which CKAN 2.12 refuses with `lists`."""
        return "objects" if self.q else "lists"

    def base_params(self) -> dict[str, Any]:
        """Parameters common to every call, None values left out."""
        params: dict[str, Any] = {"resource_id": self.resource_id}
        if self.filters:
            params["filters"] = dict(self.filters)
        if self.q:
            params["q"] = self.q
        if self.plain is not None:
            params["plain"] = self.plain
        if self.language:
            params["language"] = self.language
        if self.fields:
            params["fields"] = list(self.fields)
        return params


@dataclass(frozen=True, slots=True)
class QueryInfo:
    """What the first call told us."""

    fields: list[dict[str, Any]]
    total: int
    backend: str | None
    # CKAN 2.11 and later echo `include_next_page` in every answer; only their dump is known to write values
    # as `datastore_search` does (older ones differ, e.g. in timestamps), so only theirs is read.
    dump_like_search: bool = False

    @property
    def columns(self) -> list[str]:
        """Column ids in order."""
        return [str(f["id"]) for f in self.fields]

    def rows_expected(self, query: DatastoreQuery) -> int:
        """How many rows the job will produce."""
        remaining = max(self.total - query.offset, 0)
        return remaining if query.limit is None else min(remaining, query.limit)


def _message(error: Any) -> str:
    if isinstance(error, Mapping):
        text = error.get("message")
        details = {k: v for k, v in error.items() if k not in ("__type", "message")}
        if isinstance(text, str) and text:
            parts = [text]
        elif text:
            parts = [orjson.dumps(text).decode()]
        else:
            parts = []
        if details:
            parts.append("; ".join(f"{k}: {v}" for k, v in details.items()))
        kind = error.get("__type")
        body = " ".join(parts) or "no message"
        return f"{kind}: {body}" if kind else body
    return str(error)


class DatastoreClient:
    """Pages through one CKAN datastore query."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        key: str = "",
        page_size: int = 5000,
        attempts: int = 5,
        backoff: float = 0.5,
        max_page_bytes: int = 0,
    ) -> None:
        self._session = session
        self._max_page_bytes = max_page_bytes  # 0: no cap
        self._headers = {"Authorization": key} if key else {}
        self._page_size = page_size
        self._attempts = attempts
        # `backoff` is the first wait; later ones double, up to BACKOFF_CAP, with jitter
        # (packager.core.retrying).
        self._backoff = Backoff(first=backoff, cap=max(backoff, BACKOFF_CAP))
        self.retries = 0

    async def call(
        self, api_url: str, params: Mapping[str, Any], *, exact_numbers: bool = False
    ) -> dict[str, Any]:
        """One `datastore_search` call with retries; returns `result`.

        With `exact_numbers` the answer is parsed by `loads_exact`, keeping every number's digits.
        """
        body = orjson.dumps(params)
        try:
            return await retrying.call(
                "datastore_search",
                lambda: self._call_once(api_url, body, exact_numbers),
                backoff=self._backoff,
                max_attempts=self._attempts,
                deadline=retrying.current_deadline(),
                on_retry=self._retrying,
            )
        except retrying.GaveUp as exc:
            raise PackagingError(_gave_up(f"CKAN at {api_url}", exc)) from None

    def _retrying(self, exc: BaseException, attempt: int, delay: float) -> None:
        self.retries += 1
        log.warning("CKAN request failed (%s); retry %d in %.1fs", exc, attempt, delay)

    async def _call_once(self, api_url: str, body: bytes, exact_numbers: bool) -> dict[str, Any]:
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            async with self._session.post(api_url, data=body, headers=headers) as resp:
                raw = await self._read_capped(resp)
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise Retryable(type(exc).__name__ + (f": {exc}" if str(exc) else "")) from None
        if status in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {status}", retry_after=retry_after_seconds(retry_after))
        try:
            doc = loads_exact(raw) if exact_numbers else orjson.loads(raw)
        except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError are ValueErrors
            if status >= 400:
                raise CkanError(f"CKAN answered HTTP {status}") from None
            raise Retryable(f"HTTP {status} with a body that is not JSON") from None
        if not isinstance(doc, dict):
            raise CkanError("CKAN's answer is not a JSON object")
        if status >= 400 or doc.get("success") is not True:
            raise CkanError(f"CKAN refused the query: {_message(doc.get('error', f'HTTP {status}'))}")
        result = doc.get("result")
        if not isinstance(result, dict):
            raise CkanError("CKAN's answer has no result")
        return result

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The answer's body, failing as soon as it is known to pass `max_page_bytes`."""
        cap = self._max_page_bytes
        if not cap:
            return await resp.read()
        if resp.content_length is not None and resp.content_length > cap:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > cap:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> PackagingError:
        return PackagingError(
            f"One page of CKAN's answer ({self._page_size:,} rows at most) is larger than this service "
            f"accepts ({human_size(self._max_page_bytes)}); please ask for fewer fields or fewer rows."
        )

    async def describe(self, query: DatastoreQuery) -> QueryInfo:
        """Fields, total and backend of the query (a `limit=0` call)."""
        result = await self.call(query.api_url, {**query.base_params(), "limit": 0})
        fields = result.get("fields") or []
        return QueryInfo(
            fields=list(fields),
            total=int(result.get("total") or 0),
            backend=result.get("_backend"),
            dump_like_search="include_next_page" in result,
        )

    async def pages(
        self, query: DatastoreQuery, info: QueryInfo, *, via_dump: bool = False
    ) -> AsyncIterator[list[list[Any]]]:
        """Yield the query's rows, page by page, as lists in `info.columns` order.

        With `via_dump` (for the csv and tsv writers only), CKAN's `/datastore/dump` is read when the portal
        has it, and the cells are text (see the module docstring).
        """
        wanted = info.rows_expected(query)
        if wanted == 0:
            return
        if (
            via_dump
            and info.dump_like_search
            and info.backend is None
            and (url := dump_url(query)) is not None
        ):
            done = 0
            try:
                async for page in self._dump_pages(url, query, info, wanted):
                    done += len(page)
                    yield page
                return
            except _NoDump as exc:
                if done:
                    raise PackagingError(f"CKAN's dump of the resource failed: {exc}") from None
                log.info("reading pages instead of CKAN's dump: %s", exc)
        if info.backend == "solr":
            pager = self._cursor_pages(query, info, wanted)
        elif info.backend == "versioned-datastore":
            pager = self._after_pages(query, info, wanted)
        else:
            pager = self._datastore_pages(query, info, wanted)
        async for page in pager:
            yield page

    async def _dump_pages(
        self, url: str, query: DatastoreQuery, info: QueryInfo, wanted: int
    ) -> AsyncIterator[list[list[Any]]]:
        columns = info.columns
        converters = [_dump_converter(str(f.get("type") or "")) for f in info.fields]
        done = 0
        try:
            async for attempt in retrying.attempts(
                "CKAN's dump",
                backoff=self._backoff,
                retry_on=(aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, Retryable),
                max_attempts=self._attempts,
                deadline=retrying.current_deadline(),
                on_retry=self._retrying,
            ):
                with attempt:
                    params = _dump_params(query, query.offset + done, wanted - done)
                    async with self._session.get(url, params=params, headers=self._headers) as resp:
                        if resp.status in RETRYABLE_STATUS:
                            asked = retry_after_seconds(resp.headers.get("Retry-After"))
                            raise Retryable(f"HTTP {resp.status}", retry_after=asked)
                        # CKAN 2.12 sends the CSV as application/octet-stream, named in Content-Disposition.
                        kind = resp.headers.get("Content-Type", "")
                        named = resp.headers.get("Content-Disposition", "")
                        if resp.status != 200 or not ("csv" in kind or '.csv"' in named):
                            raise _NoDump(f"HTTP {resp.status} {kind}")
                        # A retry resumes at row `done`: a page is only handed on once parsed whole.
                        async for page in _csv_pages(resp.content, columns, converters, self._page_size):
                            page = page[: wanted - done]
                            done += len(page)
                            if page:
                                yield page
                            if done >= wanted:
                                return
                    return  # a body cut short raises ClientPayloadError; a clean end is the table's end
        except retrying.GaveUp as exc:
            raise PackagingError(_gave_up("CKAN's dump", exc)) from None

    def _page_limit(self, remaining: int) -> int:
        return min(self._page_size, remaining)

    @staticmethod
    def _as_lists(
        records: list[Any], columns: list[str], result_fields: list[dict[str, Any]] | None
    ) -> list[list[Any]]:
        if not records:
            return []
        if isinstance(records[0], dict):
            return [[r.get(c) for c in columns] for r in records]
        got = [str(f["id"]) for f in result_fields or []]
        if got == columns or not got:
            return records
        index = [got.index(c) for c in columns]
        return [[r[i] for i in index] for r in records]

    async def _datastore_pages(
        self, query: DatastoreQuery, info: QueryInfo, wanted: int
    ) -> AsyncIterator[list[list[Any]]]:
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
                    "limit": self._page_limit(wanted - done),
                }
                if first and offset:
                    params["offset"] = offset
                result = await self.call(query.api_url, params, exact_numbers=exact)
                records = self._as_lists(result.get("records") or [], columns, result.get("fields"))[
                    : wanted - done
                ]
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
            params = {**base, "sort": sort, "offset": offset, "limit": self._page_limit(wanted - done)}
            result = await self.call(query.api_url, params, exact_numbers=exact)
            records = self._as_lists(result.get("records") or [], columns, result.get("fields"))[
                : wanted - done
            ]
            if not records:
                return
            done += len(records)
            yield records
            returned_limit = int(result.get("limit") or params["limit"])
            if len(records) < returned_limit:
                return
            offset += returned_limit

    async def _cursor_pages(
        self, query: DatastoreQuery, info: QueryInfo, wanted: int
    ) -> AsyncIterator[list[list[Any]]]:
        async for page in self._token_pages(query, info, wanted, "cursor", "*", "next_cursor"):
            yield page

    async def _after_pages(
        self, query: DatastoreQuery, info: QueryInfo, wanted: int
    ) -> AsyncIterator[list[list[Any]]]:
        async for page in self._token_pages(query, info, wanted, "after", None, "after"):
            yield page

    async def _token_pages(
        self, query: DatastoreQuery, info: QueryInfo, wanted: int, send: str, first: Any, receive: str
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
            params = {**base, "limit": self._page_limit(wanted - done + skip)}
            if token is not None:
                params[send] = token
            result = await self.call(query.api_url, params, exact_numbers=exact)
            records = self._as_lists(result.get("records") or [], columns, result.get("fields"))
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


class _NoDump(Exception):
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


def _json_values(texts: Sequence[str]) -> list[Any]:
    # One parse of the whole column as a JSON array: a parse per cell costs several times more.
    return list(loads_exact("[" + ",".join([t or "null" for t in texts]) + "]"))


def _dump_converter(column_type: str) -> Callable[[Sequence[str]], Sequence[Any]] | None:
    """How one column of the dump's CSV becomes cells the csv and tsv writers write as the pages' values.

    None: the dump's text as it is, which is already what the writers write for the pages' value: PostgreSQL's
    text of integers, numerics and floats (the same digits as in `datastore_search`'s JSON), dates, times and
    text (an empty cell is "" where the pages may hold a null: written alike).
    """
    kind = column_type.strip().lower()
    if kind in ("bool", "boolean"):
        return lambda texts: list(map(_BOOLEAN_TEXT.__getitem__, texts))
    if kind.startswith("_") or kind in ("json", "jsonb"):
        # Parsed exactly, so the writer writes them as compact JSON as it does the pages' values.
        return _json_values
    return None


async def _csv_pages(
    stream: aiohttp.StreamReader, columns: list[str], converters: list[Any], page_size: int
) -> AsyncIterator[list[list[Any]]]:
    """Pages of converted rows from the dump's CSV body, read a chunk at a time (memory stays flat)."""
    pending = ""
    header: list[str] | None = None
    rows: list[list[str]] = []
    decoder = codecs.getincrementaldecoder("utf-8")()
    while True:
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
                raise _NoDump(f"the dump's columns {header} are not the query's {columns}")
        rows.extend(records)
        while len(rows) >= page_size or (not chunk and rows):
            page, rows = rows[:page_size], rows[page_size:]
            yield _without_gc(_convert, page, converters)
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


def _convert(rows: list[list[str]], converters: list[Any]) -> list[list[Any]]:
    if all(convert is None for convert in converters):
        return rows
    columns = [
        column if convert is None else convert(column)
        for column, convert in zip(zip(*rows, strict=True), converters, strict=True)
    ]
    return list(map(list, zip(*columns, strict=True)))
