"""Records of the downstream analytics topic: every lifecycle event, with requesters pseudonymised.

An analytics record is the event's envelope unchanged except in its payload: `email` is replaced by
`requester` (an HMAC-SHA256 of the lower-cased address under a key derived from the shared secret: stable
per person, not reversible without the secret) and `requester_domain`; a request's sealed CKAN key and its
EML text are left out. Delivery is at least once: consumers dedupe by `event_id`.
"""

from __future__ import annotations

from typing import Any

import orjson

from packager.domain.secrets import keyed_hash
from projections.statistics import email_domain

DROPPED_REQUEST_FIELDS = ("key_sealed", "eml")


def pseudonymise(record: bytes, secret: str) -> bytes:
    """The analytics form of one encoded event."""
    doc = orjson.loads(record)
    payload: dict[str, Any] = doc["payload"]
    # A build's proposed outcome (PackageBuilt) nests the terminal event's fields under `result`.
    for part in (payload, payload.get("result")):
        if isinstance(part, dict):
            email = part.pop("email", None)
            if isinstance(email, str):
                part["requester"] = keyed_hash(secret, "requester", email.lower())
                part["requester_domain"] = email_domain(email)
    request = payload.get("request")
    if isinstance(request, dict):
        payload["request"] = {k: v for k, v in request.items() if k not in DROPPED_REQUEST_FIELDS}
    return orjson.dumps(doc)
