"""The ingress's read endpoints: status, statistics and job progress, all answered from the views.

Nothing here touches the work, and the ingress holds no state of its own: answers are queries on the views
the projector folds from the log (`packager.adapters.viewreads`), so every ingress answers alike.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from packager.adapters.readside import worker_count
from packager.adapters.requester_keys import FRESH_FOR, RequesterKeys
from packager.adapters.viewdb import ViewsUnavailable
from packager.adapters.viewreads import ReadViews
from packager.core.errors import BadRequestError, UnavailableError
from packager.core.settings import Settings
from packager.domain.requesters import shown
from packager.http.app_keys import READ_VIEWS, REQUESTER_KEYS, SETTINGS
from packager.http.common import authenticate, json_response, read_params
from projections.jobs import COMPLETED, JobState

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
    """`/` and `/status`: workers in the consumer group, jobs not finished, jobs processed."""
    settings = request.app[SETTINGS]
    params = await read_params(request) if request.method == "POST" else dict(request.query)
    authenticate(params, settings)
    accepted, finished = await _read(_views(request).counters())
    try:
        workers = await worker_count(settings.kafka_bootstrap_servers, f"{settings.topic_prefix}-worker")
    except Exception as exc:  # the broker is down: say so rather than guess
        raise UnavailableError(f"Kafka cannot be asked for the workers: {type(exc).__name__}") from None
    body = {
        "worker_count": workers,
        "queue_length": accepted - finished,
        "processed_requests": finished,
    }
    return json_response({"success": True, "status": "success", **body})


async def statistics(request: web.Request) -> web.Response:
    """`/statistics`: totals per resource and `*` (requests, errors, unique emails)."""
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    totals = await _read(_views(request).totals(str(params.get("resource_id") or "") or None))
    return json_response({"success": True, "status": True, "totals": totals})


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
        address = await keys.open(entry["email"], token, fresh_within=FRESH_FOR) if token else None
        if address is not None:
            entry["email"] = address


async def statistics_requests(request: web.Request) -> web.Response:
    """`/statistics/requests`: requests, newest first."""
    return await _listing(request, "requests")


async def statistics_errors(request: web.Request) -> web.Response:
    """`/statistics/errors`: failures, newest first."""
    return await _listing(request, "errors")


def job_view(job: JobState, settings: Settings) -> dict[str, Any]:
    """What `/jobs/{id}` shows of a job (no requester address)."""
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
        "download_url": f"{settings.download_base}/{job.zip_file_name}" if job.state == COMPLETED else None,
        "error": job.error or None,
        "requested_at": job.requested_at or None,
        "started_at": job.started_at or None,
        "finished_at": job.finished_at or None,
        "updated_at": job.updated_at or None,
    }


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        raise web.HTTPNotFound(reason="No such job")
    return job_id


async def job(request: web.Request) -> web.StreamResponse:
    """`GET /jobs/{job_id}`: the job as JSON, or its status page for a browser."""
    job_id = _job_id(request)
    settings = request.app[SETTINGS]
    if _wants_html(request):
        return web.Response(text=_status_page(job_id), content_type="text/html")
    views = _views(request)
    state = await _read(views.job(job_id))
    if state is None:
        raise web.HTTPNotFound(reason="No such job (a job just accepted appears within a second)")
    who = await _read(requester_view(views, job_id))
    return json_response({"success": True, **job_view(state, settings), **who})


async def requester_view(views: ReadViews, job_id: str) -> dict[str, Any]:
    """What a job's page shows of its requester: a pseudonym and a domain, never the address (the page
    needs no secret), and whether they were erased."""
    found = await views.requester(job_id)
    if found is None:
        return {"requester": None, "requester_domain": None, "requester_erased": False}
    who, domain, erased = found
    return {"requester": shown(who), "requester_domain": domain or None, "requester_erased": erased}


async def job_events(request: web.Request) -> web.StreamResponse:
    """`GET /jobs/{job_id}/events`: Server-Sent Events with the job's state on every change."""
    job_id = _job_id(request)
    settings = request.app[SETTINGS]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    views = _views(request)
    await response.prepare(request)
    try:
        async for state in views.watch(job_id):
            if state is None:
                await response.write(b": still waiting\n\n")  # an SSE comment: clients ignore it
                continue
            data = orjson.dumps({**job_view(state, settings), **await requester_view(views, job_id)}).decode()
            await response.write(f"event: job\ndata: {data}\n\n".encode())
    except ViewsUnavailable:
        return response  # the stream ends without `end`: a browser's EventSource connects again
    await response.write(b"event: end\ndata: {}\n\n")
    return response


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


def _status_page(job_id: str) -> str:
    safe = html.escape(job_id)
    return _PAGE.replace("{job_id}", safe)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Download {job_id}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
progress{width:100%;height:1.2rem} dt{font-weight:600} dd{margin:0 0 .6rem 0}
</style></head>
<body>
<h1>Your download</h1>
<p id="state">Waiting for news of job {job_id}...</p>
<progress id="bar" max="100"></progress>
<dl>
<dt>Rows</dt><dd id="rows">-</dd>
<dt>Size</dt><dd id="size">-</dd>
<dt>Download</dt><dd id="link">not ready yet</dd>
<dt>Requester</dt><dd id="requester">-</dd>
<dt>Email</dt><dd id="email">not sent yet</dd>
</dl>
<script>
const jobId = "{job_id}";
const text = (id, value) => { document.getElementById(id).textContent = value; };
const source = new EventSource("./" + encodeURIComponent(jobId) + "/events");
source.addEventListener("job", (message) => {
  const job = JSON.parse(message.data);
  const words = {queued: "Queued", running: "Being prepared", completed: "Ready", failed: "Failed"};
  text("state", (words[job.state] || job.state) + (job.error ? ": " + job.error : ""));
  if (job.percent !== null) { document.getElementById("bar").value = job.percent; }
  text("rows", job.rows_total ? `${job.rows_done.toLocaleString()} of ${job.rows_total.toLocaleString()}`
                              : job.rows_done.toLocaleString());
  if (job.size !== null) { text("size", `${(job.size / 1048576).toFixed(1)} MB`); }
  if (job.download_url) {
    const a = document.createElement("a"); a.href = job.download_url; a.textContent = job.download_url;
    const link = document.getElementById("link"); link.textContent = ""; link.appendChild(a);
  }
  const who = `${job.requester || "-"} (${job.requester_domain || "-"})`;
  text("requester", job.requester_erased ? "erased" : who);
  text("email", job.emailed ? "sent" : (job.email_error ? "failed: " + job.email_error : "not sent yet"));
});
source.addEventListener("end", () => source.close());
</script>
</body></html>
"""


def add_routes(app: web.Application) -> None:
    """Register the read endpoints."""
    for path in ("/", "/status"):
        app.router.add_post(path, status)
        app.router.add_get(path, status)
    app.router.add_post("/statistics", statistics)
    app.router.add_post("/statistics/requests", statistics_requests)
    app.router.add_post("/statistics/errors", statistics_errors)
    app.router.add_get("/jobs/{job_id}", job)
    app.router.add_get("/jobs/{job_id}/events", job_events)
