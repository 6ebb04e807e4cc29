"""The HTTP ingress: authenticates and validates requests, appends them to the log, and answers.

It never packages anything. A request is accepted only once Kafka acknowledged `PackageRequested`
(acks=all); every rejected request leaves nothing in the log. Answers carry both the keys the original
service documented (`success`, `msg`) and the ones its CKAN extension reads (`status`, `message`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from packager.adapters.kafka_log import EventLog, KafkaEventLog, Topics
from packager.adapters.requester_keys import InMemoryRequesterKeys, KafkaRequesterKeys, RequesterKeys
from packager.adapters.resolver import system_resolver
from packager.adapters.viewdb import ViewsUnavailable
from packager.adapters.viewreads import ReadViews
from packager.core.errors import BadRequestError
from packager.core.logs import bind_job
from packager.core.settings import Settings
from packager.domain.events import CacheCleared, PackageRequested, StatisticsReset, envelope
from packager.domain.secrets import seal
from packager.domain.validation import Resolver, cache_key_for, parse_datastore_request, parse_url_request
from packager.http import health, read_api
from packager.http.app_keys import EVENT_LOG, READ_VIEWS, REQUESTER_KEYS, RESOLVER, SETTINGS
from packager.http.cancel import cancel_job, cancel_links
from packager.http.common import authenticate, errors_as_json, json_response, read_params
from packager.http.job_texts import download_file_name
from packager.http.privacy import erase_requester, sealed_requester

log = logging.getLogger(__name__)


_ZIP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.zip$")


def accepted_body(job_id: str, message: str, status_url: str = "") -> dict[str, Any]:
    """The success answer: original and extension keys plus the job id and its status link."""
    return {
        "success": True,
        "msg": message,
        "status": "success",
        "message": message,
        "job_id": job_id,
        "status_url": status_url,
    }


async def _accept(
    request: web.Request, kind: str, identity: Mapping[str, Any], fields: dict[str, Any], key: str
) -> web.Response:
    """Append `PackageRequested` for a validated request and answer once Kafka acknowledged it."""
    settings = request.app[SETTINGS]
    cache_key = cache_key_for(kind, identity, settings.secret)
    job_id = str(uuid.uuid4())
    bind_job(job_id)
    event = envelope(
        job_id,
        PackageRequested(
            kind=kind,
            cache_key=cache_key,
            resource_id=fields["resource_id"],
            ckan_host=fields["ckan_host"],
            request={**fields["request"], "key_sealed": seal(settings.secret, key) if key else ""},
            **await sealed_requester(request.app, fields["email"]),
        ),
    )
    await request.app[EVENT_LOG].append(Topics(settings.topic_prefix).requests, cache_key, event)
    # The access line that follows says the same at INFO (path, 200 and the job id).
    log.debug("accepted %s job %s", kind, job_id)
    body = accepted_body(
        job_id,
        f"Your download is being prepared; a link will be emailed to {fields['email']} when it is ready.",
        f"{settings.status_base}/{job_id}",
    )
    return json_response({**body, **cancel_links(settings, job_id)})


async def package_url(request: web.Request) -> web.Response:
    """POST /package_url: package the file at `resource_url` and email a link to `email`."""
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    req = await parse_url_request(
        params, resolve=request.app[RESOLVER], allow_private=settings.allow_private_urls
    )
    return await _accept(
        request,
        "url",
        req.identity(),
        {
            "resource_id": req.resource_id,
            "email": req.email,
            "ckan_host": req.ckan_host,
            "request": {"resource_id": req.resource_id, "resource_url": req.resource_url},
        },
        req.key,
    )


async def package_datastore(request: web.Request) -> web.Response:
    """POST /package_datastore: package the rows of a datastore query and email a link to `email`."""
    return await _accept_query(request, dwc=False)


async def package_dwc_archive(request: web.Request) -> web.Response:
    """POST /package_dwc_archive: package a datastore query as a Darwin Core Archive."""
    return await _accept_query(request, dwc=True)


async def _accept_query(request: web.Request, *, dwc: bool) -> web.Response:
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    req = await parse_datastore_request(
        params,
        resolve=request.app[RESOLVER],
        allow_private=settings.allow_private_urls,
        allowed_hosts=settings.allowed_api_hosts,
        dwc=dwc,
    )
    return await _accept(
        request,
        "dwc" if dwc else "datastore",
        req.identity(),
        {
            "resource_id": req.resource_id,
            "email": req.email,
            "ckan_host": req.ckan_host,
            "request": req.query(),
        },
        req.key,
    )


async def clear_caches(request: web.Request) -> web.Response:
    """POST /clear_caches: append CacheCleared to every partition; the workers empty the index and files."""
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    topics = Topics(settings.topic_prefix)
    operation = str(uuid.uuid4())
    for partition in range(settings.partitions):
        event = envelope(operation, CacheCleared(cache_key="*", partition=partition))
        await request.app[EVENT_LOG].append(topics.events, "*", event, partition=partition)
    log.info("cache clearing %s requested", operation)
    return json_response({"success": True, "msg": "Done.", "status": "success", "message": "Done."})


async def reset_statistics(request: web.Request) -> web.Response:
    """POST /statistics/reset: append StatisticsReset; the views then list and count `which` from now on.

    The original command line listed `reset (requests|errors)` without implementing it. Here nothing is
    deleted: the log keeps every entry (an audit replays them), the views keep their rows, and the reset is
    a cut in time that the listings and totals of `which` start after (docs/cli.md).
    """
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    which = str(params.get("which") or "")
    if which not in ("requests", "errors"):
        raise BadRequestError("Parameter which must be requests or errors")
    event = envelope(str(uuid.uuid4()), StatisticsReset(cache_key="*", which=which))
    await request.app[EVENT_LOG].append(Topics(settings.topic_prefix).events, "*", event, partition=0)
    log.info("statistics reset (%s) from %s", which, event.occurred_at)
    message = f"The {which} statistics count from {event.occurred_at} on."
    body = {"success": True, "msg": message, "status": "success", "message": message}
    return json_response({**body, "which": which, "since": event.occurred_at})


async def download(request: web.Request) -> web.StreamResponse:
    """GET /downloads/{name}: serve a finished ZIP (Range requests supported).

    410 once past CACHE_TIME, and for a ZIP that was built but is gone (expired and swept, or removed by
    `/clear_caches`): the requester's link worked once and they need to ask again. 404 for a name never built.
    """
    name = request.match_info["name"]
    if not _ZIP_NAME.match(name):
        raise web.HTTPNotFound(reason="No such download")
    settings = request.app[SETTINGS]
    path = Path(settings.store_directory) / name
    if not path.is_file():
        if await _was_built(request, name):
            raise web.HTTPGone(
                reason="This download has expired or was removed; please request the data again"
            )
        raise web.HTTPNotFound(reason="No such download")
    if time.time() - path.stat().st_mtime > settings.cache_time:
        raise web.HTTPGone(reason="This download has expired; please request the data again")
    saved_as = await _saved_name(request, name)
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{saved_as}"',
        },
    )


_BUILT_BY = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(-[0-9a-f-]+)?\.zip$")


async def _saved_name(request: web.Request, name: str) -> str:
    """The name the browser saves the ZIP under: its resource and the day it was built, from the job that
    built it (the store name is the job id); the store name when that job is not known here."""
    views = request.app.get(READ_VIEWS)
    built_by = _BUILT_BY.match(name)
    if views is None or built_by is None:
        return name
    try:
        job = await views.job(built_by.group(1))
    except ViewsUnavailable:
        return name
    if job is None:
        return name
    return download_file_name(job.resource_id, job.finished_at, name)


async def _was_built(request: web.Request, name: str) -> bool:
    views = request.app.get(READ_VIEWS)
    if views is None:
        return False
    try:
        return await views.zip_was_built(name)
    except ViewsUnavailable:
        return False  # unknown: a 404 is the answer that claims less


def create_app(
    settings: Settings,
    *,
    event_log: EventLog | None = None,
    resolver: Resolver = system_resolver,
    read_views: bool | None = None,
    requester_keys: RequesterKeys | None = None,
) -> web.Application:
    """Build the ingress application. Connections open in the app's cleanup context, not at import.

    `read_views` (default: when no `event_log` is given) opens the views that answer `/status`,
    `/statistics*` and `/jobs/*` (written by `packager projector`). `requester_keys` defaults to the
    requester-keys topic, or to keys in memory when an `event_log` is given (unit tests).
    """
    settings.require_secret()
    app = web.Application(
        middlewares=[health.count_requests, errors_as_json], client_max_size=settings.max_body_size
    )
    app[SETTINGS] = settings
    app[RESOLVER] = resolver

    async def event_log_ctx(app: web.Application) -> AsyncIterator[None]:
        app[EVENT_LOG] = event_log or KafkaEventLog(
            settings.kafka_bootstrap_servers,
            Topics(settings.topic_prefix),
            partitions=settings.partitions,
            send_timeout=settings.kafka_send_timeout,
            replication_factor=settings.replication_factor,
        )
        yield
        await app[EVENT_LOG].close()

    app.cleanup_ctx.append(event_log_ctx)

    async def requester_keys_ctx(app: web.Application) -> AsyncIterator[None]:
        if requester_keys is not None:
            app[REQUESTER_KEYS] = requester_keys
        elif event_log is not None:
            app[REQUESTER_KEYS] = InMemoryRequesterKeys()
        else:
            app[REQUESTER_KEYS] = KafkaRequesterKeys(settings, rewrap=True)
        yield
        await app[REQUESTER_KEYS].close()

    app.cleanup_ctx.append(requester_keys_ctx)

    if event_log is None if read_views is None else read_views:

        async def read_views_ctx(app: web.Application) -> AsyncIterator[None]:
            app[READ_VIEWS] = ReadViews(settings)
            yield
            await app[READ_VIEWS].close()

        app.cleanup_ctx.append(read_views_ctx)
    read_api.add_routes(app)
    app.router.add_post("/package_url", package_url)
    app.router.add_post("/package_datastore", package_datastore)
    app.router.add_post("/package_dwc_archive", package_dwc_archive)
    app.router.add_post("/clear_caches", clear_caches)
    app.router.add_post("/jobs/{job_id}/cancel", cancel_job)
    app.router.add_post("/statistics/reset", reset_statistics)
    app.router.add_post("/requesters/erase", erase_requester)
    app.router.add_get("/downloads/{name}", download)
    health.add_routes(app)
    return app


# Query parameters whose values never reach a log line (GET /status takes the secret in its query string;
# a cancel token sent in a query string by mistake is hidden too).
REDACTED_PARAMETERS = frozenset({"secret", "key", "token"})


def redacted_path(request: web.BaseRequest) -> str:
    """The request's path and query, with the values of `REDACTED_PARAMETERS` replaced by `***`."""
    try:
        query = [(k, "***" if k.lower() in REDACTED_PARAMETERS else v) for k, v in request.query.items()]
        return str(request.rel_url.with_query(query)) if query else request.path
    except ValueError:
        return request.path


class AccessLog(AbstractAccessLogger):
    """One short access line per answer: `remote method path status bytes ms`, with `status` and
    `duration_ms` as fields. aiohttp's default logger formats a dozen fields per request, which cost a
    sixth of the ingress's time under load (docs/benchmarks.md)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line (the job id, if any, comes from the request's context)."""
        ms = round(time * 1000, 1)
        self.logger.info(
            "%s %s %s %d %d %sms",
            request.remote or "-",
            request.method,
            redacted_path(request),
            response.status,
            response.body_length,
            ms,
            extra={"status": response.status, "duration_ms": ms},
        )

    @property
    def enabled(self) -> bool:
        """Skip the work when INFO is off."""
        return self.logger.isEnabledFor(logging.INFO)


def run(settings: Settings) -> None:
    """Serve the ingress until interrupted."""
    log.info("ingress listening on http://%s:%d", settings.host, settings.port)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log_class=AccessLog,
    )
