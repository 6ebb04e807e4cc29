"""The packaging service layer: turn one accepted request into a ZIP in the store and a terminal event.

Packers start a `Build` (which takes the job's lease) and emit what it returns; everything the job needs
arrives in a `JobContext`, so the same code runs under Faust, in tests and in benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from packager.adapters import metrics
from packager.adapters.ckan import DatastoreClient, DatastoreQuery
from packager.adapters.fetch import download_file
from packager.adapters.store import PublishedFile, Store, safe_file_name, zip_one_file
from packager.core import retrying
from packager.core.errors import BadRequestError, PackagingError
from packager.core.settings import Settings
from packager.domain.archive import DwcPacker, ZipPacker
from packager.domain.dwc import config_from_settings
from packager.domain.events import (
    Envelope,
    Event,
    PackageCompleted,
    PackageFailed,
    PackageProgress,
    PackageRequested,
    PackageStarted,
    requester_fields,
    utc_now,
)
from packager.domain.secrets import unseal
from packager.domain.validation import Resolver, check_url
from packager.service.gbif import eml_from_ckan

log = logging.getLogger(__name__)

Emit = Callable[[Event], Awaitable[None]]
# What the requester reads when a bug stopped the build: the details are for the operator's log only.
INTERNAL_FAILURE = "The service failed while preparing this package."


@dataclass
class JobContext:
    """The clients and settings a job runs with; `attempt` is the number of this build of the job."""

    settings: Settings
    session: aiohttp.ClientSession
    store: Store
    resolve: Resolver
    emit: Emit
    worker: str
    attempt: int = 1


class ProgressThrottle:
    """Emits `PackageProgress` at most once per `interval` seconds (and always for the final state).

    It remembers what it last reported, so that `beat` can repeat it: progress events are also the
    build's heartbeat, which renews its lease (see docs/delivery.md).
    """

    def __init__(self, emit: Emit, cache_key: str, attempt: int = 1, interval: float = 1.0) -> None:
        self._emit = emit
        self._cache_key = cache_key
        self._attempt = attempt
        self._interval = interval
        self._last = 0.0
        self._state: dict[str, int | None] = {
            "rows_done": 0,
            "rows_total": None,
            "bytes_done": 0,
            "bytes_total": None,
        }

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
        self._state = {
            "rows_done": rows_done,
            "rows_total": rows_total,
            "bytes_done": bytes_done,
            "bytes_total": bytes_total,
        }
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        await self._send(now)

    async def beat(self) -> None:
        """Repeat the latest progress now: the build is alive, whether or not a byte moved."""
        await self._send(time.monotonic())

    async def _send(self, now: float) -> None:
        self._last = now
        await self._emit(PackageProgress(cache_key=self._cache_key, attempt=self._attempt, **self._state))  # type: ignore[arg-type]


def zip_name_for(job_id: str, attempt: int = 1) -> str:
    """The store name of a job's ZIP: the unguessable job id (and the build's number after the first)."""
    base = safe_file_name(job_id, "job")
    return f"{base}.zip" if attempt == 1 else f"{base}-{attempt}.zip"


def lease_deadline(settings: Settings) -> str:
    """When a lease taken or renewed now runs out, as an ISO 8601 UTC timestamp."""
    moment = datetime.now(UTC) + timedelta(seconds=settings.lease_time)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Build:
    """One build of a job: `start` takes the lease (PackageStarted), `run` builds and returns the outcome.

    While it runs, a heartbeat repeats the latest progress every third of LEASE_TIME, so the job's steward
    knows the build is alive even when no byte moves (a slow CKAN page, a big ZIP being finished).
    """

    def __init__(self, request: Envelope, lane: str, ctx: JobContext) -> None:
        req = request.payload
        assert isinstance(req, PackageRequested)
        self.request = request
        self.req = req
        self.lane = lane
        self.ctx = ctx
        self.started_at = ""
        self.progress = ProgressThrottle(ctx.emit, req.cache_key, ctx.attempt)
        # Each build writes its own partial files: two builds of one job (a redelivery, or a build that
        # lost its lease and carries on) never write into each other's files.
        self.build_id = f"{request.job_id}.{ctx.attempt}.{secrets.token_hex(4)}"

    async def start(self) -> None:
        """Announce the build and take its lease."""
        self.started_at = utc_now()
        await self.ctx.emit(
            PackageStarted(
                cache_key=self.req.cache_key,
                lane=self.lane,
                worker=self.ctx.worker,
                attempt=self.ctx.attempt,
                lease_until=lease_deadline(self.ctx.settings),
            )
        )

    async def run(self) -> Event:
        """Build the package; return the terminal event it proposes (PackageCompleted or PackageFailed)."""
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            return await self._build()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self) -> None:
        interval = self.ctx.settings.lease_time / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.progress.beat()
            except Exception as exc:  # the broker is away: the lease may lapse, the build goes on
                log.warning("heartbeat not recorded: %s", exc, extra={"job_id": self.request.job_id})

    async def _build(self) -> Event:
        req, request = self.req, self.request
        try:
            return await _within_job_timeout(self._package(), self.ctx.settings)
        except PackagingError as exc:
            return _failed(req, exc.message, "PackagingError")
        except asyncio.CancelledError:
            raise  # the worker is stopping: the build is released and runs again elsewhere.
        except Exception as exc:
            # A bug: the operator gets the traceback and a metric; the requester (the failure email, the job's
            # events) only hears that the service failed, never the exception's text.
            log.error(
                "a build failed on an unexpected error: %s",
                type(exc).__name__,
                exc_info=exc,
                extra={"job_id": request.job_id, "lane": self.lane},
            )
            metrics.INTERNAL_ERRORS.labels(self.lane).inc()
            return _failed(req, INTERNAL_FAILURE, "InternalError")

    async def _package(self) -> PackageCompleted:
        if self.req.kind == "url":
            return await _package_url(self)
        if self.req.kind in ("datastore", "dwc"):
            return await _package_datastore(self)
        raise PackagingError(f"This service cannot package requests of kind {self.req.kind!r}")

    def partial_path(self, suffix: str) -> Path:
        """Where this build writes one of its intermediate files."""
        return self.ctx.store.partial_path(self.build_id, suffix)

    async def publish(self, partial: Path) -> PublishedFile:
        """Move the finished ZIP into the store under its final name, never over another build's ZIP.

        A build stopped meanwhile (its job cancelled, the worker draining, JOB_TIMEOUT) leaves no ZIP: the
        move runs on in its thread (or upload) whatever happens to the build, so the build waits for it and
        removes what it published before it unwinds."""
        moving = asyncio.ensure_future(self._move(partial))
        try:
            return await asyncio.shield(moving)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                published = await moving
                await self.ctx.store.remove(published.name)
                log.info("build stopped as it published: %s removed", published.name)
            raise

    async def _move(self, partial: Path) -> PublishedFile:
        store, job_id, attempt = self.ctx.store, self.request.job_id, self.ctx.attempt
        try:
            return await store.publish(partial, zip_name_for(job_id, attempt))
        except FileExistsError:  # a second build of the same attempt: it keeps a name of its own
            name = f"{zip_name_for(job_id, attempt)[:-4]}-{secrets.token_hex(4)}.zip"
            return await store.publish(partial, name)


async def run_job(request: Envelope, lane: str, ctx: JobContext) -> Event:
    """Build the package for an accepted request and return its terminal event (start and run at once)."""
    build = Build(request, lane, ctx)
    await build.start()
    return await build.run()


async def _within_job_timeout(build: Awaitable[PackageCompleted], settings: Settings) -> PackageCompleted:
    """Run a build under JOB_TIMEOUT; past it the build is cancelled (its `finally` blocks remove its partial
    files) and fails with a message for the requester."""
    deadline = asyncio.timeout(settings.job_timeout)
    try:
        # The retries inside (CKAN, URL fetches) know the deadline: they give up rather than wait past it.
        with retrying.job_deadline(settings.job_timeout):
            async with deadline:
                return await build
    except TimeoutError:
        if not deadline.expired():
            raise  # not ours: the unexpected-error path reports it
        raise PackagingError(
            f"The package took longer than the service allows ({_duration(settings.job_timeout)}) and was "
            "stopped. The source may be too slow or the selection too large: please try again later or "
            "ask for less data."
        ) from None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} seconds"
    return f"{seconds / 60:.0f} minutes"


def _failed(req: PackageRequested, message: str, error_type: str) -> PackageFailed:
    return PackageFailed(
        cache_key=req.cache_key,
        resource_id=req.resource_id,
        ckan_host=req.ckan_host,
        **requester_fields(req),
        error=message,
        error_type=error_type,
    )


async def _package_url(build: Build) -> PackageCompleted:
    req, ctx, lane, started_at = build.req, build.ctx, build.lane, build.started_at
    key = request_key(req, ctx.settings)
    throttle = build.progress
    download_path = build.partial_path(".download")
    zip_path = build.partial_path(".zip.partial")

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
            max_bytes=ctx.settings.max_download_bytes,
            progress=on_bytes,
        )
        await throttle.report(bytes_done=got.size, bytes_total=got.size, force=True)
        arcname = safe_file_name(got.file_name, req.resource_id)
        await asyncio.to_thread(zip_one_file, download_path, arcname, zip_path)
        published = await build.publish(zip_path)
    finally:
        ctx.store.discard(download_path, zip_path)
    return PackageCompleted(
        cache_key=req.cache_key,
        resource_id=req.resource_id,
        ckan_host=req.ckan_host,
        **requester_fields(req),
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
# Formats read through CKAN's dump when the portal has it (see packager.adapters.ckan): faster, same bytes.
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
    """A datastore client with the request's CKAN key and the configured page size and page byte cap."""
    return DatastoreClient(
        session,
        key=request_key(req, settings),
        page_size=settings.page_size,
        attempts=attempts,
        max_page_bytes=settings.max_page_bytes,
    )


async def _package_datastore(build: Build) -> PackageCompleted:
    request, req, ctx, lane, started_at = build.request, build.req, build.ctx, build.lane, build.started_at
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
    throttle = build.progress
    await throttle.report(rows_total=total, force=True)
    zip_path = build.partial_path(".zip.partial")
    packer: ZipPacker | DwcPacker
    manifest_extra: dict[str, Any] = {}
    if req.kind == "dwc":
        eml, for_gbif = str(req.request.get("eml") or ""), bool(req.request.get("for_gbif"))
        if for_gbif and not eml.strip():
            eml, manifest_extra["eml_source"] = await eml_from_ckan(client, req.request, ctx.settings)
        packer = await asyncio.to_thread(
            DwcPacker,
            zip_path,
            info.columns,
            config_from_settings(ctx.settings),
            spool_dir=ctx.store.partial_directory,
            eml=eml,
            for_gbif=for_gbif,
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
            **manifest_extra,
        }
        data = await asyncio.to_thread(packer.finish, manifest)
        finished = True
        await throttle.report(rows_done=data.rows, rows_total=total, bytes_done=data.bytes, force=True)
        published = await build.publish(zip_path)
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
        ckan_host=req.ckan_host,
        **requester_fields(req),
        doi=str(req.request.get("doi") or ""),
        lane=lane,
        zip_file_name=published.name,
        size=published.size,
        sha256=published.sha256,
        rows=data.rows,
        started_at=started_at,
        finished_at=utc_now(),
    )
