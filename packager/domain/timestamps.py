"""Event timestamps: the RFC 3339 form every `occurred_at` must have, and its check."""

from __future__ import annotations

import re
from datetime import datetime

# RFC 3339 with an upper-case `T` and `Z`, as the schemas' `date-time` format is checked (rfc3339-validator),
# and real dates (`datetime.fromisoformat`): what `projections.statistics.unix_time` can read.
# The schemas carry the pattern too: their format checker (jsonschema) would accept a lower-case `t` or `z`.
RFC3339_PATTERN = (
    r"^\d{4}-(?:0[1-9]|1[0-2])-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$"
)
_RFC3339 = re.compile(RFC3339_PATTERN, re.ASCII)


def is_timestamp(text: str) -> bool:
    """True for an RFC 3339 date-time with an offset (`2026-11-26T14:21:00.123Z`) naming a real moment."""
    if _RFC3339.fullmatch(text) is None:
        return False
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
