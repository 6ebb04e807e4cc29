"""Handlers the agents call: lane planning and notification. No Faust here, so they test in isolation."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from packager.adapters.kafka_log import ANSWER_DEADLINE_HEADER, LOG_APPEND_TIME, iso_ms
from packager.adapters.requester_keys import RequesterKeys
from packager.adapters.resolver import system_resolver
from packager.adapters.smtp import deliver
from packager.core import retrying
from packager.core.errors import BadRequestError, PackagingError, UnavailableError
from packager.core.retrying import Backoff
from packager.core.settings import Settings
from packager.domain.emails import render_cancelled, render_completed, render_expiry_notice, render_failed
from packager.domain.events import (
    EmailFailed,
    EmailSent,
    Envelope,
    ExpiryNoticeDue,
    PackageCancelled,
    PackageCompleted,
    PackageFailed,
    PackageRequested,
)
from packager.domain.requesters import SealError
from packager.domain.validation import check_url
from packager.service.packaging import ckan_client, datastore_query

log = logging.getLogger(__name__)


def lane_for_rows(rows: int, settings: Settings) -> str:
    """The original's two queues: jobs of more than `SLOW_REQUEST` rows take the slow lane."""
    return "slow" if rows > settings.slow_request else "fast"


async def plan_lane(env: Envelope, settings: Settings, session: aiohttp.ClientSession) -> str:
    """Choose the lane of a request: a file is one download (fast); a query goes by its row count."""
    req = env.payload
    assert isinstance(req, PackageRequested)
    if req.kind == "url":
        return "fast"
    query = datastore_query(req.request)
    try:
        # The planner serves every partition of this worker: a CKAN that trickles its answer must not hold
        # it for longer than one silent connection would (the build itself runs under JOB_TIMEOUT).
        async with asyncio.timeout(settings.fetch_connect_timeout + settings.fetch_read_timeout):
            await check_url(
                "api_url", query.api_url, resolve=system_resolver, allow_private=settings.allow_private_urls
            )
            info = await ckan_client(req, settings, session, attempts=2).describe(query)
    except (PackagingError, BadRequestError, TimeoutError) as exc:
        # The packer meets the same error at once and reports it; no need to hold a slow slot for that.
        log.info("planning %s: CKAN could not be asked (%r); fast lane", env.job_id, exc)
        return "fast"
    return lane_for_rows(info.rows_expected(query), settings)


# What the job's page says of an email not sent because its requester was erased first, or because their
# key is wrapped under a KEY_SEALING_SECRET no longer configured (docs/privacy.md, "Rotating the secrets").
ERASED_REQUESTER = "not sent: the requester was erased"
UNREADABLE_KEY = "not sent: the requester's key cannot be read (KEY_SEALING_SECRET changed)"


async def recipient(
    keys: RequesterKeys | None,
    payload: PackageCompleted | PackageFailed | ExpiryNoticeDue | PackageCancelled,
) -> str | None:
    """The address to write to: opened from its sealed form (None: erased), or a v1 event's clear one."""
    if not payload.email_sealed:
        return payload.email
    if keys is None:
        raise TypeError("a sealed address needs the requester keys")
    return await retrying.call(
        "reading the requester keys",
        lambda: keys.open(payload.requester, payload.email_sealed),
        backoff=Backoff(first=0.5, cap=10.0),
        retry_on=(UnavailableError,),
    )


async def notify(
    settings: Settings,
    env: Envelope,
    *,
    slot: contextlib.AbstractAsyncContextManager[Any] | None = None,
    keys: RequesterKeys | None = None,
) -> EmailSent | EmailFailed | None:
    """Email the requester about a terminal event, or remind them that their download expires soon
    (`ExpiryNoticeDue`), and describe the outcome (None: nothing to send).

    `slot` bounds how many emails talk to the SMTP server at once (see `packager.adapters.smtp.deliver`).
    The address is opened with `keys` just before sending and kept in memory only; a requester erased
    meanwhile gets no email (EmailFailed says so), nor does one erased while the SMTP server defers it: the
    key is looked at again before each retry.
    """
    payload = env.payload
    if isinstance(payload, PackageCompleted | PackageFailed | ExpiryNoticeDue | PackageCancelled):
        if isinstance(payload, PackageFailed) and not settings.email_failures:
            return None
        if isinstance(payload, PackageCancelled) and not settings.email_cancellations:
            return None
        try:
            address = await recipient(keys, payload)
        except SealError as exc:
            log.error("email not sent: %s", exc, extra={"job_id": env.job_id})
            return EmailFailed(cache_key=env.cache_key, about=env.type, error=UNREADABLE_KEY, attempts=0)
        if address is None:
            log.info("email not sent: the requester was erased", extra={"job_id": env.job_id})
            return EmailFailed(cache_key=env.cache_key, about=env.type, error=ERASED_REQUESTER, attempts=0)
        payload = dataclasses.replace(payload, email=address)
    if isinstance(payload, PackageCompleted):
        message = render_completed(settings, env.job_id, payload)
    elif isinstance(payload, PackageFailed):
        if not settings.email_failures:
            return None
        message = render_failed(settings, env.job_id, payload)
    elif isinstance(payload, ExpiryNoticeDue):
        message = render_expiry_notice(settings, env.job_id, payload)
    elif isinstance(payload, PackageCancelled):
        message = render_cancelled(settings, env.job_id, payload)
    else:  # pragma: no cover - the agent filters terminal events
        raise TypeError(f"not an event emailed about: {env.type}")
    delivery = await deliver(settings, message, slot=slot, before_retry=_erased_check(keys, env.payload))
    if delivery.ok:
        log.info("email sent", extra={"job_id": env.job_id})
        return EmailSent(
            cache_key=env.cache_key,
            about=env.type,
            message_id=str(message["Message-ID"]),
            attempts=delivery.attempts,
        )
    log.error("email failed: %s", delivery.error, extra={"job_id": env.job_id})
    return EmailFailed(
        cache_key=env.cache_key, about=env.type, error=delivery.error, attempts=delivery.attempts
    )


def _erased_check(keys: RequesterKeys | None, payload: Any) -> Callable[[], Awaitable[str]] | None:
    """For `deliver`'s retries: ERASED_REQUESTER once the key of the payload's sealed address is destroyed."""
    token = getattr(payload, "email_sealed", "")
    if keys is None or not token:
        return None

    async def check() -> str:
        try:
            still = await keys.open(payload.requester, token)
        except (UnavailableError, SealError):
            return ""  # cannot tell now: the retry goes on, as the first attempt did with the opened address
        return "" if still is not None else ERASED_REQUESTER

    return check


def abandoned(message: Any) -> tuple[str, str] | None:
    """(appended_at, answer_deadline) when the broker stored the request after the ingress gave up on it.

    The requests topic keeps the broker's append time (LogAppendTime); the ingress puts the deadline of
    its wait in an `answer-deadline` header (milliseconds since the epoch).
    """
    if message.timestamp_type != LOG_APPEND_TIME or message.timestamp is None:
        return None
    deadline = dict(message.headers or ()).get(ANSWER_DEADLINE_HEADER)
    if not deadline:
        return None
    try:
        appended_ms, deadline_ms = int(message.timestamp * 1000), int(deadline)
    except ValueError:
        return None  # not a deadline the ingress wrote
    if appended_ms <= deadline_ms:
        return None
    return iso_ms(appended_ms), iso_ms(deadline_ms)
