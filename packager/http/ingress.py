"""The HTTP ingress: authenticates and validates requests, appends them to the log, and answers.

It never packages anything. A request is accepted only once Kafka acknowledged `PackageRequested`
(acks=all); every rejected request leaves nothing in the log. Answers carry both the keys the original
service documented (`success`, `msg`) and the ones its CKAN extension reads (`status`, `message`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from packager.adapters.kafka_log import Appended, EventLog, KafkaEventLog, Topics
from packager.adapters.requester_keys import InMemoryRequesterKeys, KafkaRequesterKeys, RequesterKeys
from packager.adapters.resolver import system_resolver
from packager.adapters.stores import open_store
from packager.adapters.viewreads import ReadViews
from packager.core.errors import BadRequestError
from packager.core.logs import bind_job
from packager.core.settings import Settings
from packager.domain.events import CacheCleared, PackageRequested, StatisticsReset, envelope
from packager.domain.requesters import pseudonym
from packager.domain.secrets import seal
from packager.domain.validation import (
    Resolver,
    cache_key_for,
    parse_callback_url,
    parse_datastore_request,
    parse_url_request,
)
from packager.http import downloads, health, read_api
from packager.http.app_keys import EVENT_LOG, LIMITS, READ_VIEWS, REQUESTER_KEYS, RESOLVER, SETTINGS, STORE
from packager.http.cancel import cancel_job, cancel_links
from packager.http.common import authenticate, errors_as_json, json_response, read_params
from packager.http.limits import Limits
from packager.http.privacy import erase_requester, sealed_requester

log = logging.getLogger(__name__)


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


async def _callback(request: web.Request, params: Mapping[str, str]) -> str:
    """The request's optional `callback_url`, checked as `resource_url` is; refused without WEBHOOK_SECRET."""
    settings = request.app[SETTINGS]
    url = await parse_callback_url(
        params, resolve=request.app[RESOLVER], allow_private=settings.allow_private_urls
    )
    if url and not settings.webhook_secret:
        raise BadRequestError(
            "Parameter callback_url: this service sends no webhooks (its operator sets WEBHOOK_SECRET, "
            "environment PACKAGER_WEBHOOK_SECRET, to turn them on)"
        )
    return url


async def _accept(
    request: web.Request,
    kind: str,
    identity: Mapping[str, Any],
    fields: dict[str, Any],
    key: str,
    callback_url: str = "",
) -> web.Response:
    """Append `PackageRequested` for a validated request and answer once Kafka acknowledged it.

    The callback URL is not part of the package's identity (two requests differing only by it share a
    build) and travels sealed: it may carry the receiver's token.
    """
    settings = request.app[SETTINGS]
    cache_key = cache_key_for(kind, identity, settings.secret)
    sealed = {"key_sealed": seal(settings.secret, key) if key else ""}
    if callback_url:
        sealed["callback_sealed"] = seal(settings.secret, callback_url)
    job_id = str(uuid.uuid4())
    bind_job(job_id)
    # Before anything is sealed or appended: a refused request leaves nothing in any topic.
    limits = request.app[LIMITS]
    who = pseudonym(settings.pseudonym_key, fields["email"])
    await limits.admit(request.app.get(READ_VIEWS), job_id, who, fields["resource_id"])
    try:
        where = await _append_request(request, kind, job_id, cache_key, fields, sealed, who)
    except BaseException:
        limits.withdraw(job_id)
        raise
    limits.appended(job_id, Topics(settings.topic_prefix).requests, where)
    # The access line that follows says the same at INFO (path, 200 and the job id).
    log.debug("accepted %s job %s", kind, job_id)
    body = accepted_body(
        job_id,
        f"Your download is being prepared; a link will be emailed to {fields['email']} when it is ready.",
        f"{settings.status_base}/{job_id}",
    )
    return json_response({**body, **cancel_links(settings, job_id)})


async def _append_request(
    request: web.Request,
    kind: str,
    job_id: str,
    cache_key: str,
    fields: dict[str, Any],
    sealed: dict[str, str],
    who: str,
) -> Appended | None:
    """Append `PackageRequested` (`sealed`: the request's sealed API key and callback URL; `who`: the
    requester's pseudonym); return once Kafka acknowledged it, with where it went."""
    settings = request.app[SETTINGS]
    event = envelope(
        job_id,
        PackageRequested(
            kind=kind,
            cache_key=cache_key,
            resource_id=fields["resource_id"],
            ckan_host=fields["ckan_host"],
            request={**fields["request"], **sealed},
            **await sealed_requester(request.app, fields["email"], who),
        ),
    )
    return await request.app[EVENT_LOG].append(Topics(settings.topic_prefix).requests, cache_key, event)


async def package_url(request: web.Request) -> web.Response:
    """POST /package_url: package the file at `resource_url` and email a link to `email`."""
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    req = await parse_url_request(
        params, resolve=request.app[RESOLVER], allow_private=settings.allow_private_urls
    )
    callback_url = await _callback(request, params)
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
        callback_url,
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
    callback_url = await _callback(request, params)
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
        callback_url,
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
    app[STORE] = open_store(settings)  # connects to nothing until a download or a job page asks
    app[LIMITS] = Limits(settings)

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
    app.router.add_get("/downloads/{name}", downloads.download)
    health.add_routes(app)
    return app


# Query parameters whose values never reach a log line (GET /status takes the secret in its query string;
# a cancel token sent in a query string by mistake is hidden too).
REDACTED_PARAMETERS = frozenset({"secret", "key", "token"})


def redacted_path(request: web.BaseRequest) -> str:
    """The request's path and query, with the values of `REDACTED_PARAMETERS` replaced by `***`."""
    if not request.query_string:
        return request.path  # the package requests: no query to parse
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
        logger = self.logger
        # The record is made here and handed to the logger's handlers as `logger.info` would, without
        # `Logger.findCaller`: it walks the stack for a file and line that no formatter of ours writes, and
        # that is a constant here anyway (issue 15: the access line's cost per request).
        record = logger.makeRecord(
            logger.name,
            logging.INFO,
            __file__,
            0,
            "%s %s %s %d %d %sms",
            (
                request.remote or "-",
                request.method,
                redacted_path(request),
                response.status,
                response.body_length,
                ms,
            ),
            None,
            "AccessLog.log",
            {"status": response.status, "duration_ms": ms},
        )
        logger.handle(record)

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
