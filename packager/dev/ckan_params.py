"""The `datastore_search` parameters the dev CKAN server accepts, checked as CKAN 2.12 checks them.

`validate_params` turns the raw parameters (GET query or POST body) into `SearchParams`, or raises a
`CkanError` in CKAN's shape (409 "Validation Error" with the offending fields).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

RECORDS_FORMATS = ("objects", "lists", "csv", "tsv")


# ---------------------------------------------------------------------------------------------------------
# Errors


class CkanError(Exception):
    """An error answered in CKAN's shape: `{"success": false, "error": {"__type": ..., "message": ...}}`."""

    def __init__(self, status: int, error_type: str, message: Any) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message

    def error_body(self) -> dict[str, Any]:
        """The `error` object of the answer."""
        body: dict[str, Any] = {"__type": self.error_type, "message": self.message}
        if isinstance(self.message, dict):
            # CKAN itself puts a validation error's fields beside `__type`; `message` holds them too.
            for key, value in self.message.items():
                body.setdefault(key, value)
        return body


def validation_error(errors: dict[str, Any]) -> CkanError:
    return CkanError(409, "Validation Error", errors)


def invalid_query(detail: str) -> CkanError:
    # What CKAN answers when PostgreSQL rejects a value (e.g. `year = 'abc'`).
    return validation_error({"query": ["Invalid query"], "info": {"orig": [detail]}})


# ---------------------------------------------------------------------------------------------------------
# Parameters


_KNOWN_PARAMS = {
    "resource_id",
    "id",
    "q",
    "full_text",
    "plain",
    "filters",
    "language",
    "limit",
    "offset",
    "fields",
    "sort",
    "distinct",
    "include_total",
    "total_estimation_threshold",
    "records_format",
    "include_next_page",
}
_BACKEND_PARAMS = {"solr": {"cursor"}, "versioned-datastore": {"after"}}
IGNORED_GET_PARAMS = {"callback", "_"}


def _as_bool(value: Any) -> bool:
    """CKAN's boolean_validator."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "yes", "t", "y", "1")


def _as_natural(value: Any, name: str, errors: dict[str, list[str]]) -> int | None:
    """CKAN's int_validator followed by natural_number_validator."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        errors[name] = ["Invalid integer"]
        return None
    if isinstance(value, float):
        if not value.is_integer():
            errors[name] = ["Invalid integer"]
            return None
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            errors[name] = ["Invalid integer"]
            return None
    if number < 0:
        errors[name] = ["Must be a natural number"]
        return None
    return number


def _as_list(value: Any) -> list[str]:
    """CKAN's get_list: a comma-separated string or a list, items stripped of blanks and quotes."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(text)
                if isinstance(parsed, list):
                    return [str(item).strip() for item in parsed]
        return [part.strip().strip('"') for part in text.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value]
    return [str(value)]


@dataclass
class SearchParams:
    """A `datastore_search` call after CKAN's schema validation."""

    resource_id: str
    given: dict[str, Any]
    filters: dict[str, Any]
    q: str | dict[str, str] | None
    full_text: str | None
    limit: int | None
    offset: int | None
    fields: list[str] | None
    sort: list[str] | None
    include_total: bool
    records_format: str
    include_next_page: bool
    cursor: str | None
    after: Any


def validate_params(raw: Mapping[str, Any], backend: str | None = None) -> SearchParams:
    """Check a call against CKAN's datastore_search schema; raise a 409 CkanError when it does not fit."""
    errors: dict[str, list[str]] = {}
    allowed = _KNOWN_PARAMS | _BACKEND_PARAMS.get(backend or "", set())
    junk = [key for key in raw if key not in allowed]
    if junk:
        errors["__junk"] = [f"The input field {junk!r} was not expected."]
    resource_id = raw.get("resource_id", raw.get("id"))
    if resource_id is None or not isinstance(resource_id, str) or not resource_id.strip():
        errors["resource_id"] = ["Missing value"]

    filters: Any = raw.get("filters")
    if isinstance(filters, str):
        try:
            filters = orjson.loads(filters)
        except orjson.JSONDecodeError:
            errors["filters"] = ["Cannot parse JSON"]
            filters = None
    if filters is None or filters == "":
        filters = {}
    elif not isinstance(filters, dict):
        errors["filters"] = ["Not a JSON object"]
        filters = {}

    q: Any = raw.get("q")
    if isinstance(q, str) and q.strip().startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            q = orjson.loads(q)
    if isinstance(q, dict):
        q = {str(k): str(v) for k, v in q.items()}
    elif q is not None:
        q = str(q)
    full_text = raw.get("full_text")

    limit = _as_natural(raw.get("limit"), "limit", errors)
    offset = _as_natural(raw.get("offset"), "offset", errors)
    records_format = str(raw.get("records_format") or "objects")
    if records_format not in RECORDS_FORMATS:
        errors["records_format"] = [f"Value must be one of {list(RECORDS_FORMATS)}"]

    after: Any = raw.get("after")
    if isinstance(after, str):
        try:
            after = orjson.loads(after)
        except orjson.JSONDecodeError:
            errors["after"] = ["Cannot parse JSON"]
    cursor = raw.get("cursor")

    if errors:
        raise validation_error(errors)
    return SearchParams(
        resource_id=str(resource_id).strip(),
        given=dict(raw),
        filters=filters,
        q=q or None,
        full_text=str(full_text) if full_text else None,
        limit=limit,
        offset=offset,
        fields=_as_list(raw["fields"]) if raw.get("fields") not in (None, "", []) else None,
        sort=_as_list(raw["sort"]) if raw.get("sort") not in (None, "", []) else None,
        include_total=_as_bool(raw.get("include_total", True)),
        records_format=records_format,
        include_next_page=_as_bool(raw.get("include_next_page", False)),
        cursor=None if cursor is None else str(cursor),
        after=after,
    )
