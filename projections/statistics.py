"""The original service's statistics: how requests, errors and requesters are counted and shown.

Totals have one entry per resource id and `*` for all: `requests`, `errors` and `emails` (unique requesters;
a requester counts once overall and once per resource, errors do not add requesters), as the original
counted them. A job's request counts once and its failure once, however often the log repeats them.
Listings show entries newest first (time, then job id, so the order never depends on which topic was read
first). With `ANONYMIZE_EMAILS` the identity kept is a keyed hash (HMAC under a key derived from the shared
secret) and the domain, never the address. The fold applying these rules is `projections.view_fold`.
"""

from __future__ import annotations

from datetime import datetime

ALL = "*"


def unix_time(iso: str) -> float:
    """An ISO 8601 timestamp of the log as a UNIX timestamp (what the original API returned)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def email_domain(email: str) -> str:
    """The part after the first `@`, lower-cased."""
    return email.split("@", 1)[1].lower() if "@" in email else ""
