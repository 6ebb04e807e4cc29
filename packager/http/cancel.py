"""`POST /jobs/{job_id}/cancel`: ask for a job to be cancelled, with the shared secret or its cancel token.

The ingress decides nothing about the job itself: it checks who asks, answers 404 for a job the views do
not know and 409 for one they show finished, and otherwise appends `CancelRequested` to every partition of
the events topic (it does not know the job's cache key, hence its partition). The job's steward ends the
job with `PackageCancelled` through the same one-terminal-event rule as every ending
(`streams.cancels`), or does nothing when another terminal event won the race. The ingress then watches
the views for a moment: `cancelled` (200), finished otherwise after all (409), or not known yet (202).

A cancel token is given to the requester in the accept answer (`cancel_token`): an HMAC of the job id
under the shared secret, so any ingress can check it and none has to store it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Callable

from aiohttp import web

from packager.adapters.kafka_log import Topics
from packager.adapters.viewdb import ViewsUnavailable
from packager.core.errors import NotAuthorizedError, UnavailableError
from packager.core.settings import Settings
from packager.domain.events import envelope
from packager.domain.operator_events import BY_OPERATOR, BY_REQUESTER, CancelRequested
from packager.domain.secrets import constant_time_equal
from packager.http.app_keys import EVENT_LOG, READ_VIEWS, SETTINGS
from packager.http.common import authenticate, failure_body, json_response, read_params
from projections.jobs import CANCELLED, JobState

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# How long a requester's cancel waits for the views to know a job just accepted (its token proves it was).
KNOWN_WITHIN = 5.0  # seconds
# How long the answer waits for the job's steward to end the job (the views then say how it ended).
OUTCOME_WITHIN = 5.0  # seconds
POLL = 0.05  # seconds


def cancel_token(secret: str, job_id: str) -> str:
    """The token that lets whoever holds it cancel `job_id` (given only in the job's accept answer)."""
    return hmac.digest(secret.encode(), b"cancel-job:" + job_id.encode(), "sha256").hex()[:32]


def cancel_links(settings: Settings, job_id: str) -> dict[str, str]:
    """The accept answer's cancel keys: the token and the URL to post it to."""
    return {
        "cancel_token": cancel_token(settings.secret, job_id),
        "cancel_url": f"{settings.status_base}/{job_id}/cancel",
    }


def who_cancels(params: dict[str, str], settings: Settings, job_id: str) -> str:
    """`requester` for the job's cancel token, `operator` for the shared secret; 403 otherwise."""
    token = str(params.get("token") or "")
    if token:
        if not constant_time_equal(token, cancel_token(settings.secret, job_id)):
            raise NotAuthorizedError("Wrong cancel token for this job")
        return BY_REQUESTER
    authenticate(params, settings)
    return BY_OPERATOR


async def _job(request: web.Request, job_id: str) -> JobState | None:
    views = request.app.get(READ_VIEWS)
    if views is None:
        raise UnavailableError("This ingress reads no views, so it cannot tell the job's state.")
    try:
        return await views.job(job_id)
    except ViewsUnavailable as exc:
        raise UnavailableError(f"The job views cannot be read right now ({exc})") from None


async def _watch(
    request: web.Request, job_id: str, within: float, done: Callable[[JobState | None], bool]
) -> JobState | None:
    """The job's state once `done(state)` holds, or the last state seen after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        state = await _job(request, job_id)
        if done(state) or time.monotonic() >= deadline:
            return state
        await asyncio.sleep(POLL)


def _answer(
    settings: Settings, job_id: str, state: JobState | None, status: int, message: str
) -> web.Response:
    body = {
        "success": status < 300,
        "msg": message,
        "status": "success" if status < 300 else "failed",
        "message": message,
        "job_id": job_id,
        "state": state.state if state is not None else None,
        "status_url": f"{settings.status_base}/{job_id}",  # the job's page, which shows the outcome
    }
    if status == 409:
        body = {**failure_body("ConflictError", message), **{k: body[k] for k in _JOB_KEYS}}
    return json_response(body, status)


_JOB_KEYS = ("job_id", "state", "status_url")


async def cancel_job(request: web.Request) -> web.Response:
    """POST /jobs/{job_id}/cancel: cancel a job not finished yet (`secret`, or the job's `token`)."""
    job_id = request.match_info["job_id"]
    settings = request.app[SETTINGS]
    by = who_cancels(await read_params(request), settings, job_id)
    if not _JOB_ID.match(job_id):
        raise web.HTTPNotFound(reason="No such job")
    # A token proves the job was accepted: the views may just not have folded its request yet.
    state = await _watch(request, job_id, KNOWN_WITHIN if by == BY_REQUESTER else 0.0, bool)
    if state is None:
        raise web.HTTPNotFound(reason="No such job")
    if state.terminal:
        return _answer(
            settings, job_id, state, 409, f"The job has already finished ({state.state}): nothing to cancel"
        )
    topics = Topics(settings.topic_prefix)
    for partition in range(settings.partitions):
        event = envelope(job_id, CancelRequested(cache_key="*", partition=partition, by=by))
        await request.app[EVENT_LOG].append(topics.events, "*", event, partition=partition)
    log.info("cancel of job %s asked by the %s", job_id, by)
    state = await _watch(request, job_id, OUTCOME_WITHIN, lambda s: s is not None and s.terminal)
    if state is not None and state.state == CANCELLED:
        return _answer(settings, job_id, state, 200, "The job is cancelled.")
    if state is not None and state.terminal:
        return _answer(
            settings, job_id, state, 409, f"The job finished ({state.state}) before it could be cancelled"
        )
    return _answer(settings, job_id, state, 202, "The job is being cancelled; its page shows when it is.")
