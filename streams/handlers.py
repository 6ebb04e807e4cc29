"""Handlers the agents call: lane planning and notification. No Faust here, so they test in isolation."""

from __future__ import annotations

import logging

from packager.events import (
    EmailFailed,
    EmailSent,
    Envelope,
    PackageCompleted,
    PackageFailed,
    PackageRequested,
)
from packager.notify import render_completed, render_failed
from packager.settings import Settings
from packager.smtp import deliver

log = logging.getLogger(__name__)


def lane_for(env: Envelope, settings: Settings) -> str:
    """Choose the lane of a request. A file at a URL is one download: always the fast lane."""
    req = env.payload
    assert isinstance(req, PackageRequested)
    if req.kind == "url":
        return "fast"
    limit = req.request.get("limit")
    if limit is not None and int(limit) <= settings.slow_request:
        return "fast"
    return "slow"


async def notify(settings: Settings, env: Envelope) -> EmailSent | EmailFailed:
    """Email the requester about a terminal event and describe the outcome as an event."""
    payload = env.payload
    if isinstance(payload, PackageCompleted):
        message = render_completed(settings, env.job_id, payload)
    elif isinstance(payload, PackageFailed):
        message = render_failed(settings, env.job_id, payload)
    else:  # pragma: no cover - the agent filters terminal events
        raise TypeError(f"not a terminal event: {env.type}")
    delivery = await deliver(settings, message)
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
