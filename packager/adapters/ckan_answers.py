"""Decoding CKAN's answers: a `datastore_search` body to its `result` or to a `CkanError` with CKAN's own
message, records (`lists` or `objects`) to rows in column order, and which HTTP statuses are worth another
try."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from packager.core import retrying
from packager.core.errors import PackagingError
from packager.core.retrying import Retryable
from packager.domain.numbers import loads_exact

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class CkanError(PackagingError):
    """CKAN refused the query; `message` is CKAN's own explanation."""


def gave_up(source: str, exc: retrying.GaveUp) -> str:
    """The requester's explanation of a source that kept failing."""
    if exc.at_deadline:
        return f"{source} kept failing ({exc.last}); {exc.reason}"
    return f"{source} kept failing after {exc.attempts} attempts: {exc.last}"


def _message(error: Any) -> str:
    if isinstance(error, Mapping):
        text = error.get("message")
        details = {k: v for k, v in error.items() if k not in ("__type", "message")}
        if isinstance(text, str) and text:
            parts = [text]
        elif text:
            parts = [orjson.dumps(text).decode()]
        else:
            parts = []
        if details:
            parts.append("; ".join(f"{k}: {v}" for k, v in details.items()))
        kind = error.get("__type")
        body = " ".join(parts) or "no message"
        return f"{kind}: {body}" if kind else body
    return str(error)


def decode_answer(status: int, raw: bytes, exact_numbers: bool) -> dict[str, Any]:
    """The `result` of an answer that is not a retryable status (see `RETRYABLE_STATUS`).

    With `exact_numbers` the body is parsed by `loads_exact`, keeping every number's digits. A body that is
    not JSON is `Retryable` (a proxy's error page, a cut body) unless the status already refuses the query.
    """
    try:
        doc = loads_exact(raw) if exact_numbers else orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError are ValueErrors
        if status >= 400:
            raise CkanError(f"CKAN answered HTTP {status}") from None
        raise Retryable(f"HTTP {status} with a body that is not JSON") from None
    if not isinstance(doc, dict):
        raise CkanError("CKAN's answer is not a JSON object")
    if status >= 400 or doc.get("success") is not True:
        raise CkanError(f"CKAN refused the query: {_message(doc.get('error', f'HTTP {status}'))}")
    result = doc.get("result")
    if not isinstance(result, dict):
        raise CkanError("CKAN's answer has no result")
    return result


def as_lists(
    records: list[Any], columns: list[str], result_fields: list[dict[str, Any]] | None
) -> list[list[Any]]:
    """A page's records as lists in `columns` order (`objects` picked by key, `lists` reordered if needed)."""
    if not records:
        return []
    if isinstance(records[0], dict):
        return [[r.get(c) for c in columns] for r in records]
    got = [str(f["id"]) for f in result_fields or []]
    if got == columns or not got:
        return records
    index = [got.index(c) for c in columns]
    return [[r[i] for i in index] for r in records]
