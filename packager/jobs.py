"""The packaging service layer: turn one accepted request into a ZIP in the store and a terminal event.

Agents call `run_job` and emit what it returns; everything the job needs arrives in a `JobContext`, so the
same code runs under Faust, in tests and in benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from packager.archive import DwcPacker, ZipPacker
from packager.ckan import DatastoreClient, DatastoreQuery
from packager.dwc import config_from_settings
from packager.errors import BadRequestError, PackagingError
from packager.events import (
    Envelope,
    Event,
    PackageCompleted,
    PackageFailed,
    PackageProgress,
    PackageRequested,
    PackageStarted,
    utc_now,
)
from packager.fetch import download_file
from packager.secrets import unseal
from packager.settings import Settings
from packager.store import FileStore, safe_file_name, zip_one_file
from packager.validation import Resolver, check_url

log = logging.getLogger(__name__)

Emit = Callable[[Event], Awaitable[None]]


@dataclass
class JobContext:
    """The clients and settings a job runs with."""

    settings: Settings
    session: aiohttp.ClientSession
    store: FileStore
    resolve: Resolver
    emit: Emit
    worker: str


class ProgressThrottle:
    """Emits `PackageProgress` at most once per `interval` seconds (and always for the final state)."""

    def __init__(self, emit: Emit, cache_key: str, interval: float = 1.0) -> None:
        self._emit = emit
        self._cache_key = cache_key
        self._interval = interval
        self._last = 0.0

    async def report(
        self,
        *,
        rows_done: int = 0,
        rows_total: int | None = None,
        bytes_done: int = 0,
        bytes_total: int | None = None,
        force: bool = False,
    ) -> None:
        """Emit a progress event if the interval has passed since the last one (or if forced)."""
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        await self._emit(
            PackageProgress(
                cache_key=self._cache_key,
                rows_done=rows_done,
                rows_total=rows_total,
                bytes_done=bytes_done,
                bytes_total=bytes_total,
            )
        )


def zip_name_for(job_id: str) -> str:
    """The store name of a job's ZIP: the unguessable job id, so links cannot be enumerated."""
    return f"{safe_file_name(job_id, 'job')}.zip"


async def run_job(request: Envelope, lane: str, ctx: JobContext) -> Event:
    """Build the package for an accepted request and return its terminal event."""
    req = request.payload
    assert isinstance(req, PackageRequested)
    started_at = utc_now()
    await ctx.emit(PackageStarted(cache_key=req.cache_key, lane=lane, worker=ctx.worker))
    try:
        if req.kind == "url":
            return await _package_url(request, req, lane, started_at, ctx)
        if req.kind in ("datastore", "dwc"):
            return await _package_datastore(request, req, lane, started_at, ctx)
        raise PackagingError(f"This service cannot package requests of kind {req.kind!r}")
    except PackagingError as exc:
        return _failed(req, exc.message, "PackagingError")
    except asyncio.CancelledError:
        raise  # the worker is stopping: the request is redelivered and the job runs again.
    except Exception as exc:
        log.exception("job failed unexpectedly", extra={"job_id": request.job_id})
        return _failed(req, f"An internal error stopped the job ({type(exc).__name__}).", "InternalError")


def _failed(req: PackageRequested, message: str, error_type: str) -> PackageFailed:
    return PackageFailed(
        cache_key=req.cache_key,
        resource_id=req.resource_id,
        email=req.email,
        ckan_host=req.ckan_host,
        error=message,
        error_type=error_type,
    )


async def _package_url(
    request: Envelope, req: PackageRequested, lane: str, started_at: str, ctx: JobContext
) -> PackageCompleted:
    key = request_key(req, ctx.settings)
    throttle = ProgressThrottle(ctx.emit, req.cache_key)
    download_path = ctx.store.partial_path(request.job_id, ".download")
    zip_path = ctx.store.partial_path(request.job_id, ".zip.partial")

    async def on_bytes(done: int, total: int | None) -> None:
        await throttle.report(bytes_done=done, bytes_total=total)

    try:
        got = await download_file(
            ctx.session,
            req.request["resource_url"],
            download_path,
            key=key,
            resolve=ctx.resolve,
            allow_private=ctx.settings.allow_private_urls,
            max_redirects=ctx.settings.fetch_max_redirects,
            progress=on_bytes,
        )
        await throttle.report(bytes_done=got.size, bytes_total=got.size, force=True)
        arcname = safe_file_name(got.file_name, req.resource_id)
        await asyncio.to_thread(zip_one_file, download_path, arcname, zip_path)
        published = await asyncio.to_thread(ctx.store.publish, zip_path, zip_name_for(request.job_id))
    finally:
        ctx.store.discard(download_path, zip_path)
    return PackageCompleted(
        cache_key=req.cache_key,
        resource_id=req.resource_id,
        email=req.email,
        ckan_host=req.ckan_host,
        doi=str(req.request.get("doi", "")),
        lane=lane,
        zip_file_name=published.name,
        size=published.size,
        sha256=published.sha256,
        rows=None,
        started_at=started_at,
        finished_at=utc_now(),
    )


XLSX_MAX_DATA_ROWS = 1_048_575  # Excel's 1,048,576 rows, less the header
# Formats read through CKAN's dump when the portal has it (see packager.ckan): faster, same bytes.
DUMP_FORMATS = frozenset({"csv", "tsv"})


def datastore_query(request: dict[str, Any]) -> DatastoreQuery:
    """The CKAN query of an accepted datastore request."""
    return DatastoreQuery(
        api_url=request["api_url"],
        resource_id=request["resource_id"],
        filters=request.get("filters") or {},
        q=request.get("q") or None,
        plain=request.get("plain"),
        language=request.get("language") or None,
        fields=request.get("fields") or None,
        sort=request.get("sort") or None,
        offset=int(request.get("offset") or 0),
        limit=request.get("limit"),
    )


def request_key(req: PackageRequested, settings: Settings) -> str:
    """The request's CKAN API key, unsealed ("" when it came without one)."""
    sealed = req.request.get("key_sealed")
    return unseal(settings.secret, sealed) if sealed else ""


def ckan_client(
    req: PackageRequested, settings: Settings, session: aiohttp.ClientSession, *, attempts: int = 5
) -> DatastoreClient:
    """A datastore client with the request's CKAN key and the configured page size."""
    return DatastoreClient(
        session, key=request_key(req, settings), page_size=settings.page_size, attempts=attempts
    )


async def _package_datastore(
    request: Envelope, req: PackageRequested, lane: str, started_at: str, ctx: JobContext
) -> PackageCompleted:
    query = datastore_query(req.request)
    fmt = str(req.request.get("format") or "csv")
    try:
        await check_url(
            "api_url", query.api_url, resolve=ctx.resolve, allow_private=ctx.settings.allow_private_urls
        )
    except BadRequestError as exc:
        raise PackagingError(f"CKAN cannot be queried: {exc.message}") from None
    client = ckan_client(req, ctx.settings, ctx.session)
    info = await client.describe(query)
    total = info.rows_expected(query)
    if fmt == "xlsx" and total > XLSX_MAX_DATA_ROWS:
        raise PackagingError(
            f"The query matches {total:,} rows, more than an Excel sheet holds ({XLSX_MAX_DATA_ROWS:,}); "
            "please ask for CSV, TSV or JSON lines instead."
        )
    throttle = ProgressThrottle(ctx.emit, req.cache_key)
    await throttle.report(rows_total=total, force=True)
    zip_path = ctx.store.partial_path(request.job_id, ".zip.partial")
    packer: ZipPacker | DwcPacker
    if req.kind == "dwc":
        packer = await asyncio.to_thread(
            DwcPacker,
            zip_path,
            info.columns,
            config_from_settings(ctx.settings),
            spool_dir=ctx.store.partial_directory,
            eml=str(req.request.get("eml") or ""),
            compresslevel=ctx.settings.zip_compresslevel,
        )
    else:
        packer = await asyncio.to_thread(
            ZipPacker,
            zip_path,
            fmt,
            info.columns,
            spool_dir=ctx.store.partial_directory,
            compresslevel=ctx.settings.zip_compresslevel,
        )
    # Fetching runs one page ahead of writing: the next page downloads while the current one is formatted
    # and compressed in a thread. One page of look-ahead was measured as fast as two, with less memory.
    pages: asyncio.Queue[list[list[Any]] | BaseException | None] = asyncio.Queue(maxsize=1)

    async def fetch_all() -> None:
        try:
            async for page in client.pages(query, info, via_dump=req.kind != "dwc" and fmt in DUMP_FORMATS):
                await pages.put(page)
        except Exception as exc:  # handed to the writing loop, which raises it
            await pages.put(exc)
            return
        await pages.put(None)

    fetcher = asyncio.create_task(fetch_all())
    finished = False
    try:
        rows = 0
        while (page := await pages.get()) is not None:
            if isinstance(page, BaseException):
                raise page
            await asyncio.to_thread(packer.write_rows, page)
            rows += len(page)
            await throttle.report(rows_done=rows, rows_total=total, bytes_done=packer.bytes_written)
        await fetcher
        manifest = {
            "job_id": request.job_id,
            "source": {"api_url": query.api_url, "resource_id": query.resource_id},
            "query": {k: v for k, v in req.request.items() if k not in ("key_sealed", "api_url", "eml")},
            "format": fmt,
            "fields": info.fields,
            "started_at": started_at,
            "finished_at": utc_now(),
            "doi": str(req.request.get("doi") or ""),
        }
        data = await asyncio.to_thread(packer.finish, manifest)
        finished = True
        await throttle.report(rows_done=data.rows, rows_total=total, bytes_done=data.bytes, force=True)
        published = await asyncio.to_thread(ctx.store.publish, zip_path, zip_name_for(request.job_id))
    finally:
        if not fetcher.done():
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fetcher
        if not finished:
            await asyncio.to_thread(packer.abort)
        ctx.store.discard(zip_path)
    return PackageCompleted(
        cache_key=req.cache_key,
        resource_id=req.resource_id,
        email=req.email,
        ckan_host=req.ckan_host,
        doi=str(req.request.get("doi") or ""),
        lane=lane,
        zip_file_name=published.name,
        size=published.size,
        sha256=published.sha256,
        rows=data.rows,
        started_at=started_at,
        finished_at=utc_now(),
    )
