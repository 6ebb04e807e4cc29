"""Records of the downstream analytics topic: every lifecycle event, with requesters pseudonymised.

An analytics record is the event's envelope unchanged except in its payload: `email` and `email_sealed`
are left out, and `requester` (the pseudonym: an HMAC-SHA256 of the normalised address under a key derived
from PSEUDONYM_SECRET, stable per person, not reversible without the secret) and `requester_domain` are
given (events since PackageRequested v2 carry them; for older ones they are computed from the address); a
request's sealed CKAN key, its sealed webhook `callback_url` (`callback_sealed`, in terminal events too) and
its EML text are left out. Delivery is at least once: consumers dedupe by
`event_id`.
"""

from __future__ import annotations

from typing import Any

import orjson

from packager.domain.requesters import pseudonym
from projections.statistics import email_domain

DROPPED_REQUEST_FIELDS = ("key_sealed", "callback_sealed", "eml")


def pseudonymise(record: bytes, secret: str) -> bytes:
    """The analytics form of one encoded event (`secret`: the pseudonym secret)."""
    doc = orjson.loads(record)
    payload: dict[str, Any] = doc["payload"]
    # A build's proposed outcome (PackageBuilt) nests the terminal event's fields under `result`.
    for part in (payload, payload.get("result")):
        if isinstance(part, dict):
            part.pop("callback_sealed", None)
        if isinstance(part, dict) and "email" in part:
            email = part.pop("email")
            part.pop("email_sealed", None)
            if not part.get("requester") and isinstance(email, str):
                part["requester"] = pseudonym(secret, email)
                part["requester_domain"] = email_domain(email)
    request = payload.get("request")
    if isinstance(request, dict):
        payload["request"] = {k: v for k, v in request.items() if k not in DROPPED_REQUEST_FIELDS}
    return orjson.dumps(doc)
