"""The ingress's read endpoints: status, statistics and job progress, all answered from the views.

Nothing here touches the work, and the ingress holds no state of its own: answers are queries on the views
the projector folds from the log (`packager.adapters.viewreads`), so every ingress answers alike.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web

from packager.adapters.readside import worker_count
from packager.adapters.requester_keys import FRESH_FOR, RequesterKeys
from packager.adapters.store import StoredFile
from packager.adapters.viewdb import ViewsUnavailable
from packager.adapters.viewreads import ReadViews
from packager.core.errors import BadRequestError, UnavailableError
from packager.core.settings import Settings
from packager.domain.requesters import SealError, shown
from packager.domain.wording import ask_again_text
from packager.http import pages
from packager.http.app_keys import READ_VIEWS, REQUESTER_KEYS, SETTINGS, STORE
from packager.http.common import authenticate, json_response, read_params
from packager.http.job_texts import Expiry, display, parse_time
from packager.http.pages import wants_html
from projections.jobs import ABANDONED, CANCELLED, COMPLETED, FAILED, JobState

log = logging.getLogger(__name__)

T = TypeVar("T")

_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _views(request: web.Request) -> ReadViews:
    views = request.app.get(READ_VIEWS)
    if views is None:
        raise UnavailableError("This ingress reads no views.")
    return views


async def _read(query: Awaitable[T]) -> T:
    """The query's answer; a 503 when the views cannot be read (no projector has written them yet, or
    their database does not answer)."""
    try:
        return await query
    except ViewsUnavailable as exc:
        raise UnavailableError(f"The statistics and job views cannot be read right now ({exc})") from None


def _non_negative(params: dict[str, str], name: str, default: int) -> int:
    raw = str(params.get(name) or "").strip()
    if not raw:
        return default
    # ASCII digits only: str.isdigit() also admits "²", which int() refuses, and 5,000 digits are over the
    # length int() parses.
    if not re.fullmatch(r"[0-9]{1,15}", raw):
        raise BadRequestError(f"Parameter {name} must be a non-negative integer")
    return int(raw)


async def status(request: web.Request) -> web.Response:
    """`/` and `/status`: workers in the consumer group, jobs not finished, jobs processed, packages in the
    cache index, builds in flight and requests waiting behind them; `/` in a browser: the landing page."""
    settings = request.app[SETTINGS]
    if request.method in ("GET", "HEAD") and request.path == "/" and wants_html(request):
        return pages.landing(request, settings)
    params = await read_params(request) if request.method == "POST" else dict(request.query)
    authenticate(params, settings)
    accepted, finished = await _read(_views(request).counters())
    worker = await _read(_views(request).worker_counts())
    try:
        workers = await worker_count(settings.kafka_bootstrap_servers, f"{settings.topic_prefix}-worker")
    except Exception as exc:  # the broker is down: say so rather than guess
        raise UnavailableError(f"Kafka cannot be asked for the workers: {type(exc).__name__}") from None
    body = {
        "worker_count": workers,
        "queue_length": accepted - finished,
        "processed_requests": finished,
        # The worker's state as the log tells it (the views of `projections.worker_fold`).
        "cache_entries": worker["cache_entries"],
        "builds_in_flight": worker["builds_in_flight"],
        "waiters": worker["waiters"],
    }
    return json_response({"success": True, "status": "success", **body})


async def statistics(request: web.Request) -> web.Response:
    """`/statistics`: totals per resource and `*` (requests, errors, unique emails)."""
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    totals = await _read(_views(request).totals(str(params.get("resource_id") or "") or None))
    return json_response({"success": True, "status": True, "totals": totals})


DAY = 86_400
MAX_DAYS = 366


async def statistics_daily(request: web.Request) -> web.Response:
    """`/statistics/daily`: requests, errors and unique requesters per UTC day, oldest first, for the last
    `days` days (today included) of a resource or of all; days without any are zeros."""
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    days = _non_negative(params, "days", 30)
    if not 1 <= days <= MAX_DAYS:
        raise BadRequestError(f"Parameter days must be between 1 and {MAX_DAYS}")
    resource_id = str(params.get("resource_id") or "") or None
    today = int(time.time()) // DAY
    first = today - days + 1
    found = await _read(_views(request).daily(since=float(first * DAY), resource_id=resource_id))
    series = []
    for day in range(first, today + 1):
        requests, errors, requesters = found.get(day, (0, 0, 0))
        date = datetime.fromtimestamp(day * DAY, UTC).date().isoformat()
        series.append({"date": date, "requests": requests, "errors": errors, "requesters": requesters})
    return json_response({"success": True, "status": True, "resource_id": resource_id or "*", "days": series})


async def statistics_page(request: web.Request) -> web.Response:
    """`GET /statistics/page`: the statistics as charts for people; the page asks for the secret itself."""
    return pages.statistics_page(request, request.app[SETTINGS])


async def _listing(request: web.Request, kind: str) -> web.Response:
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    views = _views(request)
    email = str(params.get("email") or "").strip()
    clear = not settings.anonymize_emails
    selected = await _read(
        views.listing(
            kind,
            offset=_non_negative(params, "offset", 0),
            limit=_non_negative(params, "limit", 100),
            resource_id=str(params.get("resource_id") or "") or None,
            email=views.identity(email) if email else None,
            sealed=clear,
        )
    )
    if clear:
        await show_addresses(request.app[REQUESTER_KEYS], selected)
    return json_response({"success": True, "status": True, kind: selected})


async def show_addresses(keys: RequesterKeys, entries: list[dict[str, Any]]) -> None:
    """ANONYMIZE_EMAILS off: each entry's pseudonym replaced by the address, opened from its sealed form.

    An erased requester's address cannot be opened: their entries keep the pseudonym, as do requests logged
    before addresses were sealed (the views never held those addresses).
    """
    for entry in entries:
        token = entry.pop("sealed", "")
        try:
            address = await keys.open(entry["email"], token, fresh_within=FRESH_FOR) if token else None
        except SealError:  # a key wrapped under a sealing secret no longer configured: this entry only
            address = None
        if address is not None:
            entry["email"] = address


async def statistics_requests(request: web.Request) -> web.Response:
    """`/statistics/requests`: requests, newest first."""
    return await _listing(request, "requests")


async def statistics_errors(request: web.Request) -> web.Response:
    """`/statistics/errors`: failures, newest first."""
    return await _listing(request, "errors")


def job_view(
    job: JobState,
    settings: Settings,
    *,
    now: float | None = None,
    expiry: Expiry | None = None,
    stored: StoredFile | None = None,
) -> dict[str, Any]:
    """What `/jobs/{id}` shows of a job (no requester address), with `display`: the texts its page shows.

    `stored` is the store's answer for the job's ZIP (`stored_zip`); None when it has none."""
    download_url = f"{settings.download_base}/{job.zip_file_name}" if job.state == COMPLETED else None
    if expiry is None and job.state == COMPLETED:
        expiry = link_expiry(job, settings, now=now, stored=stored)
    return {
        "job_id": job.job_id,
        "state": job.state,
        "emailed": job.emailed,
        "email_error": job.email_error or None,
        "kind": job.kind,
        "resource_id": job.resource_id,
        "lane": job.lane or None,
        "rows_done": job.rows_done,
        "rows_total": job.rows_total,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "percent": job.percent,
        "size": job.size,
        "download_url": download_url,
        "error": job.error or None,
        "requested_at": job.requested_at or None,
        "started_at": job.started_at or None,
        "finished_at": job.finished_at or None,
        "updated_at": job.updated_at or None,
        "display": display(
            job,
            expiry=expiry,
            email_expected=email_expected(job, settings),
            download_url=download_url,
            ask_again=ask_again_text(settings.portal_name, settings.portal_url),
        ),
    }


def link_expiry(
    job: JobState, settings: Settings, *, now: float | None = None, stored: StoredFile | None = None
) -> Expiry:
    """When a completed job's link stops working: its ZIP's age plus CACHE_TIME, as `/downloads` decides
    (a cache hit's ZIP is older than the job); gone when past it, or when the ZIP (`stored`, as the store
    this ingress serves found it) is no longer there."""
    now = time.time() if now is None else now
    if stored is not None:
        built = stored.modified
        present = True
    else:
        finished = parse_time(job.finished_at)
        built = finished.timestamp() if finished is not None else now
        # ZIPs served by another server than this ingress: their absence here says nothing.
        present = bool(settings.download_url_base) and not settings.download_url_base.rstrip("/").endswith(
            "/downloads"
        )
    until = built + settings.cache_time
    return Expiry(
        at=datetime.fromtimestamp(until, UTC),
        gone=not present or now > until,
        removed=not present and now <= until,
    )


async def stored_zip(request: web.Request, job: JobState) -> StoredFile | None:
    """The store's answer for a completed job's ZIP (None: not there, or the store did not answer)."""
    if job.state != COMPLETED or not job.zip_file_name:
        return None
    try:
        return await request.app[STORE].stat(job.zip_file_name)
    except Exception as exc:  # an unreachable object store: the page shows the link as gone, not an error
        log.warning("the store could not be asked for %s: %r", job.zip_file_name, exc)
        return None


def email_expected(job: JobState, settings: Settings) -> bool:
    """Whether the requester will get an email about this job (the mailer's rule)."""
    if job.state == FAILED:
        return settings.email_failures
    if job.state == CANCELLED:
        return settings.email_cancellations
    return job.state != ABANDONED


def _email_settled(settings: Settings) -> Callable[[JobState], bool]:
    """When a job's event stream can end: the job is finished and its email's outcome is known."""

    def settled(job: JobState) -> bool:
        return job.terminal and (job.emailed or bool(job.email_error) or not email_expected(job, settings))

    return settled


async def job(request: web.Request) -> web.StreamResponse:
    """`GET /jobs/{job_id}`: the job as JSON, or its page for a browser."""
    job_id = request.match_info["job_id"]
    settings = request.app[SETTINGS]
    browser = wants_html(request)
    if not _JOB_ID.match(job_id):
        if browser:
            return pages.unknown_job_page(request, settings, job_id, well_formed=False)
        raise web.HTTPNotFound(reason="No such job")
    views = _views(request)
    state = await _read(views.job(job_id))
    if state is None:
        if browser:
            return pages.unknown_job_page(request, settings, job_id, well_formed=True)
        raise web.HTTPNotFound(reason="No such job (a job just accepted appears within a second)")
    view = job_view(state, settings, stored=await stored_zip(request, state))
    if browser:
        try:
            details = await views.job_request(job_id)
        except ViewsUnavailable:  # views written before they kept requests: the page says "not recorded"
            details = None
        page = pages.job_page(request, settings, state, details, view["display"])
        page.headers["Vary"] = "Accept"  # one URL, a page or JSON: a cache must not hand one for the other
        return page
    who = await _read(requester_view(views, job_id))
    answer = json_response({"success": True, **view, **who})
    answer.headers["Vary"] = "Accept"
    answer.headers["Cache-Control"] = "no-store"  # the job changes while it runs
    return answer


async def requester_view(views: ReadViews, job_id: str) -> dict[str, Any]:
    """What a job's page shows of its requester: a pseudonym and a domain, never the address (the page
    needs no secret), and whether they were erased."""
    found = await views.requester(job_id)
    if found is None:
        return {"requester": None, "requester_domain": None, "requester_erased": False}
    who, domain, erased = found
    return {"requester": shown(who), "requester_domain": domain or None, "requester_erased": erased}


async def job_events(request: web.Request) -> web.StreamResponse:
    """`GET /jobs/{job_id}/events`: Server-Sent Events with the job's state on every change, until the job
    is finished and its email's outcome known (`end`)."""
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        raise web.HTTPNotFound(reason="No such job")
    settings = request.app[SETTINGS]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    views = _views(request)
    await response.prepare(request)
    try:
        async for state in views.watch(job_id, until=_email_settled(settings)):
            if state is None:
                await response.write(b": still waiting\n\n")  # an SSE comment: clients ignore it
                continue
            view = job_view(state, settings, stored=await stored_zip(request, state))
            data = orjson.dumps({**view, **await requester_view(views, job_id)}).decode()
            await response.write(f"event: job\ndata: {data}\n\n".encode())
        await response.write(b"event: end\ndata: {}\n\n")
    except ViewsUnavailable:
        return response  # the stream ends without `end`: a browser's EventSource connects again
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError too: the page was closed
        log.debug("the client of job %s's event stream went away", job_id)
    return response


async def api_docs(request: web.Request) -> web.Response:
    """`GET /docs`: the endpoints and what they do, as a page (the OpenAPI document is `/openapi.json`)."""
    return pages.api_docs(request, request.app[SETTINGS])


_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


async def static_file(request: web.Request) -> web.StreamResponse:
    """`GET /static/{name}`: the pages' style sheet, script and icon (only files of that folder)."""
    name = request.match_info["name"]
    path = pages.STATIC_DIRECTORY / name
    if not re.fullmatch(r"[a-z][a-z0-9-]*\.(css|js|svg)", name) or not path.is_file():
        raise web.HTTPNotFound(reason="No such file")
    return web.FileResponse(
        path, headers={"Content-Type": _STATIC_TYPES[path.suffix], "Cache-Control": "public, max-age=300"}
    )


def add_routes(app: web.Application) -> None:
    """Register the read endpoints."""
    for path in ("/", "/status"):
        app.router.add_post(path, status)
        app.router.add_get(path, status)
    app.router.add_post("/statistics", statistics)
    app.router.add_post("/statistics/requests", statistics_requests)
    app.router.add_post("/statistics/errors", statistics_errors)
    app.router.add_post("/statistics/daily", statistics_daily)
    app.router.add_get("/statistics/page", statistics_page)
    app.router.add_get("/jobs/{job_id}", job)
    app.router.add_get("/jobs/{job_id}/events", job_events)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/docs", api_docs)
    pages.load_template(app[SETTINGS])  # a bad PAGE_TEMPLATE_FILE stops the service at start
