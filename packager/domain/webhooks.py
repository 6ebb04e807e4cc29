"""Webhooks: the JSON body about a finished job, and its HMAC-SHA256 signature (pure; no I/O).

A receiver checks `X-Packager-Signature: t=<unix seconds>,v1=<hex>` where `<hex>` is HMAC-SHA256, keyed by
WEBHOOK_SECRET, of the bytes `<t>.<body>`: the timestamp is signed with the body, so a captured request
cannot be replayed later with a fresh time (receivers refuse an old `t`, see `verify`).
docs/http-api.md#webhooks shows the same check for receivers written without this package.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson

from packager.domain.events import Envelope, PackageCancelled, PackageCompleted, PackageFailed

SIGNATURE_HEADER = "X-Packager-Signature"
EVENT_HEADER = "X-Packager-Event"  # the terminal event's type, e.g. PackageCompleted
DELIVERY_HEADER = "X-Packager-Delivery"  # the terminal event's id: the same on every retry, for dedupe
DEFAULT_TOLERANCE = 300.0  # seconds a receiver accepts between `t` and its own clock

# The terminal events a webhook reports, and the job state each names. RequestAbandoned is left out: its
# requester was answered 503 (not accepted), so there is no job for them to hear about.
WEBHOOK_STATES = {
    PackageCompleted.TYPE: "completed",
    PackageFailed.TYPE: "failed",
    PackageCancelled.TYPE: "cancelled",
}


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Packager-Signature` value for `body`, signed now (or at `timestamp`, unix seconds)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, body, t)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True when `header` signs `body` under `secret` at a time within `tolerance` seconds of `now`."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = signature(secret, body, t)
    # Any `v1` may match: a sender rotating its secret could sign with both.
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))


def webhook_body(env: Envelope, *, download_base: str, status_base: str) -> bytes:
    """The JSON body about a terminal event (docs/http-api.md#webhooks lists every key)."""
    payload = env.payload
    if not isinstance(payload, PackageCompleted | PackageFailed | PackageCancelled):
        raise TypeError(f"no webhook reports {env.type}")
    body: dict[str, object] = {
        "event_id": env.event_id,
        "event": env.type,
        "job_id": env.job_id,
        "state": WEBHOOK_STATES[env.type],
        "resource_id": payload.resource_id,
        "ckan_host": payload.ckan_host,
        "occurred_at": env.occurred_at,
        "status_url": f"{status_base}/{env.job_id}",
    }
    if isinstance(payload, PackageCompleted):
        body |= {
            "download_url": f"{download_base}/{payload.zip_file_name}",
            "size": payload.size,
            "sha256": payload.sha256,
            "rows": payload.rows,
            "doi": payload.doi,
        }
    elif isinstance(payload, PackageFailed):
        body |= {"error": payload.error, "error_type": payload.error_type}
    else:
        body |= {"cancelled_by": payload.by}
    return orjson.dumps(body)
