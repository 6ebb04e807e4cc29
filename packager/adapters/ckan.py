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

Where each part lives: `datastore_query` (the query and what CKAN says of it), `ckan_answers` (decoding an
answer, `CkanError`, which statuses are retried), `ckan_paging` (the paging modes), `ckan_dump` (the dump).
This module is the client: the calls, their retries and the body's size cap, and the choice of a mode. Its
names are the ones callers import.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from packager.adapters.ckan_answers import RETRYABLE_STATUS, CkanError, decode_answer, gave_up
from packager.adapters.ckan_dump import NoDump, dump_pages, dump_url
from packager.adapters.ckan_paging import after_pages, cursor_pages, datastore_pages
from packager.adapters.datastore_query import DatastoreQuery, QueryInfo
from packager.core import retrying
from packager.core.errors import PackagingError
from packager.core.retrying import Backoff, Retryable, retry_after_seconds
from packager.domain.emails import human_size

__all__ = [
    "BACKOFF_CAP",
    "RETRYABLE_STATUS",
    "CkanError",
    "DatastoreClient",
    "DatastoreQuery",
    "QueryInfo",
    "dump_url",
]

log = logging.getLogger(__name__)

# Longest wait between two tries, unless the server asks for a longer one with Retry-After.
BACKOFF_CAP = 30.0


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
            raise PackagingError(gave_up(f"CKAN at {api_url}", exc)) from None

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
        return decode_answer(status, raw, exact_numbers)

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
                pages = dump_pages(
                    self._session,
                    url,
                    query,
                    info,
                    wanted,
                    headers=self._headers,
                    page_size=self._page_size,
                    backoff=self._backoff,
                    attempts=self._attempts,
                    on_retry=self._retrying,
                )
                async for page in pages:
                    done += len(page)
                    yield page
                return
            except NoDump as exc:
                if done:
                    raise PackagingError(f"CKAN's dump of the resource failed: {exc}") from None
                log.info("reading pages instead of CKAN's dump: %s", exc)
        if info.backend == "solr":
            pager = cursor_pages(self.call, self._page_size, query, info, wanted)
        elif info.backend == "versioned-datastore":
            pager = after_pages(self.call, self._page_size, query, info, wanted)
        else:
            pager = datastore_pages(self.call, self._page_size, query, info, wanted)
        async for page in pager:
            yield page
