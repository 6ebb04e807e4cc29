"""The query the CKAN client reads (`DatastoreQuery`, the user's parameters as the original service forwarded
them) and what CKAN's first call says of it (`QueryInfo`: fields, total, backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DatastoreQuery:
    """The user's query, as the original service forwarded it to CKAN."""

    api_url: str
    resource_id: str
    filters: Mapping[str, Any] = field(default_factory=dict)
    q: str | Mapping[str, Any] | None = None
    plain: bool | None = None
    language: str | None = None
    fields: Sequence[str] | None = None
    sort: str | None = None
    offset: int = 0
    limit: int | None = None  # rows wanted in all; None means every row

    @property
    def records_format(self) -> str:
        """`lists` where CKAN allows it; `objects` with `q`, which CKAN 2.12 refuses with `lists`."""
        return "objects" if self.q else "lists"

    def base_params(self) -> dict[str, Any]:
        """Parameters common to every call, None values left out."""
        params: dict[str, Any] = {"resource_id": self.resource_id}
        if self.filters:
            params["filters"] = dict(self.filters)
        if self.q:
            params["q"] = self.q
        if self.plain is not None:
            params["plain"] = self.plain
        if self.language:
            params["language"] = self.language
        if self.fields:
            params["fields"] = list(self.fields)
        return params


@dataclass(frozen=True, slots=True)
class QueryInfo:
    """What the first call told us."""

    fields: list[dict[str, Any]]
    total: int
    backend: str | None
    # CKAN 2.11 and later echo `include_next_page` in every answer; only their dump is known to write values
    # as `datastore_search` does (older ones differ, e.g. in timestamps), so only theirs is read.
    dump_like_search: bool = False

    @property
    def columns(self) -> list[str]:
        """Column ids in order."""
        return [str(f["id"]) for f in self.fields]

    def rows_expected(self, query: DatastoreQuery) -> int:
        """How many rows the job will produce."""
        remaining = max(self.total - query.offset, 0)
        return remaining if query.limit is None else min(remaining, query.limit)
