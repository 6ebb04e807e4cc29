"""A CKAN-compatible `datastore_search` server over synthetic tables, for tests and benchmarks.

It owns three things:

- `SyntheticTable`: a table of any size whose rows are computed from the row index and a seed, so millions of
  rows cost no memory; its columns cover every CKAN value the packager must write out (numbers, nulls, text
  with commas, quotes, newlines, tabs and non-ASCII characters, booleans, arrays, JSON objects, timestamps).
- `create_ckan_app`: an aiohttp app answering `datastore_search` the way CKAN 2.12 does
  (see shared/reference/ckan-datastore-facts.md): filters, `q`, `fields`, `sort`, offset and keyset paging,
  `rows_max` capping, the four `records_format`s, CKAN's error shapes and raw-token authorisation; plus the
  paging of two other datastore backends (a Solr-style `cursor`, the versioned datastore's `after`).
- `Faults`: deterministic fault injection (5xx answers, slow answers, bodies cut mid-way), counted in
  `app[STATS]`, so client retries can be tested. With `admin=True` (`--admin`), `POST /_dev/faults` replaces
  them at run time (a JSON object of `Faults` fields; `{}` heals) and `GET /_dev/faults` shows them and the
  counters, so a chaos campaign can switch a burst of 5xx on and off in a server running as a process.

Filtered and searched queries compute the matching row indexes once, into an `array('i')` kept in a small
LRU cache, so paging through millions of rows stays linear; unfiltered queries never materialise indexes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import functools
import gc
import math
import operator
import random
import re
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from packager.domain.numbers import NumberText

ACTION_PATH = "/api/3/action/datastore_search"
ADMIN_PATH = "/_dev/faults"  # served only with admin=True (--admin)
BACKENDS = (None, "solr", "versioned-datastore")
RECORDS_FORMATS = ("objects", "lists", "csv", "tsv")
DEFAULT_LIMIT = 100  # ckan.datastore.search.rows_default

_M32 = 0xFFFFFFFF

COUNTRIES = ("Kenya", "Brazil", "Norway", "Japan", "Perú", "Côte d'Ivoire", "New Zealand", "Canada")
FIRST_YEAR, YEARS = 1990, 35  # `year` runs 1990..2024
_GENERA = ("Panthera", "Quercus", "Apis", "Canis", "Felis", "Rosa", "Ursus", "Passer")
_EPITHETS = ("leo", "robur", "mellifera", "lupus", "catus", "canina", "arctos", "domesticus")
SPECIES = tuple(f"{g} {e}" for g in _GENERA for e in _EPITHETS)
_NOTES: tuple[str | None, ...] = (
    None,
    "",
    'Zoë, "quoted"\nline',
    "collected near the river, north bank",
    "tab\tseparated\tvalue",
    "multi\nline\r\nnote",
    "naïve café — ünïcödé ✓",
    "plain note",
    'has "double quotes" only',
    "semicolon; separated",
    "trailing space ",
    "数据 データ",
    "a,b,c",
    "leo seen at dusk",
    "\\N and \\. look like COPY markers",
    "  leading spaces",
)
_TAGS: tuple[tuple[str, ...], ...] = (
    ("bird",),
    ("mammal", "nocturnal"),
    ("plant", "perennial", "native"),
    ("insect",),
    ("rare", "protected"),
    ("coastal", 'say "hi"'),
    ("alpine", "rare"),
    ("urban", "a,b"),
)
_COLLECTORS = ("A. Smith", "B. Müller", "C. O'Neil", "D. Đorđević")
_EPOCH_DAY = datetime.date(2020, 1, 1).toordinal()
_HM = tuple(f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440))
_SS = tuple(f"{s:02d}.000" for s in range(60))

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_id", "int"),
    ("species", "text"),
    ("country", "text"),
    ("year", "int"),
    ("count", "int"),
    ("measurement", "numeric"),
    ("notes", "text"),
    ("verified", "bool"),
    ("tags", "_text"),
    ("attributes", "json"),
    ("recorded_at", "timestamp"),
)
# Columns whose words a string `q` searches (CKAN's `_full_text`).
_FULL_TEXT_COLUMNS = ("species", "country", "notes", "tags")


def _mix32(x: int) -> int:
    """MurmurHash3's 32-bit finaliser: a cheap, well-spread hash of an integer."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def _year(fib: int) -> int:
    # One xor-shift-multiply round, so years do not step regularly from row to row.
    return FIRST_YEAR + ((((fib ^ (fib >> 15)) * 0x2C1B3C6D) & _M32) >> 8) % YEARS


def _measurement(g: int, h: int) -> NumberText:
    """A `numeric` as PostgreSQL prints it: three decimals, or in one row of 512, 30 digits or more."""
    if (h >> 3) & 511 == 0:
        return NumberText(f"{1 + h % 9}{h:010d}{g:010d}.{(g ^ h) % 10**9:09d}{1 + (h >> 4) % 9}")
    thousandths = (g >> 4) % 1_000_000 - 200_000
    sign = "-" if thousandths < 0 else ""
    return NumberText(f"{sign}{abs(thousandths) // 1000}.{abs(thousandths) % 1000:03d}")


def _json_default(value: Any) -> Any:
    """orjson's fallback: a numeric goes out as its exact digits, as CKAN sends PostgreSQL's numeric text."""
    if type(value) is NumberText:
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


@functools.lru_cache(maxsize=8192)
def _day_string(day: int) -> str:
    return datetime.date.fromordinal(_EPOCH_DAY + day).isoformat() + "T"


class SyntheticTable:
    """A datastore table whose row `i` (with `_id = i + 1`) is computed from `i` and the seed."""

    def __init__(self, resource_id: str, rows: int, seed: int = 0) -> None:
        if rows < 0 or rows >= 2**31 - 1:
            raise ValueError(f"rows must be in [0, 2**31 - 1), not {rows}")
        self.resource_id = resource_id
        self.rows = rows
        self.seed = seed
        self.fields: list[dict[str, str]] = [{"id": name, "type": typ} for name, typ in _COLUMNS]
        self.names: tuple[str, ...] = tuple(name for name, _ in _COLUMNS)
        self.types: dict[str, str] = dict(_COLUMNS)
        self.position: dict[str, int] = {name: k for k, name in enumerate(self.names)}
        self._offset = _mix32(seed * 0x9E3779B9 + 0x7F4A7C15)
        self._salt = _mix32(seed ^ 0xA5A5A5A5)

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        return f"SyntheticTable({self.resource_id!r}, rows={self.rows}, seed={self.seed})"

    def _fib(self, i: int) -> int:
        # Fibonacci hashing: its top bits spread consecutive indexes evenly, and it costs one multiply,
        # which keeps filters on `country` and `year` fast over millions of rows.
        return ((i + self._offset) * 0x9E3779B1) & _M32

    def country_of(self, i: int) -> str:
        """The `country` of row `i`, without computing the rest of the row."""
        return COUNTRIES[self._fib(i) >> 29]

    def year_of(self, i: int) -> int:
        """The `year` of row `i`, without computing the rest of the row."""
        return _year(self._fib(i))

    def values(self, i: int) -> tuple[Any, ...]:
        """Row `i` as a tuple in column order (`_id` first)."""
        a = ((i + self._offset) * 0x9E3779B1) & _M32
        h = _mix32(i + self._salt)
        g = _mix32(h ^ 0x6A09E667)
        secs = i * 97 + g % 97
        return (
            i + 1,
            SPECIES[h & 63],
            COUNTRIES[a >> 29],
            _year(a),
            None if (h >> 8) & 15 == 0 else (h >> 12) % 5000,
            None if g & 15 == 0 else _measurement(g, h),
            f"Observation {i + 1} of {SPECIES[h & 63]}" if (n := (g >> 24) % 24) >= 16 else _NOTES[n],
            None if (h >> 20) & 7 == 0 else bool((h >> 23) & 1),
            None if (g >> 10) & 7 == 0 else [*_TAGS[(g >> 13) & 7]],
            None
            if (h >> 16) & 7 == 0
            else {
                "collector": _COLLECTORS[(g >> 16) & 3],
                "depth_m": (g >> 18) % 300,
                "flags": [bool((h >> 26) & 1), (h >> 27) & 3],
                "nested": {"ok": bool((g >> 30) & 1)},
            },
            None
            if g >> 27 == 31
            else _day_string(secs // 86400) + _HM[(secs % 86400) // 60] + _SS[secs % 60],
        )

    def row(self, i: int) -> dict[str, Any]:
        """Row `i` as CKAN returns it in `records_format=objects`."""
        return dict(zip(self.names, self.values(i), strict=True))

    def getter(self, column: str) -> Callable[[int], Any]:
        """A function giving one column's value of row `i`, as cheaply as the column allows."""
        if column == "_id":
            return lambda i: i + 1
        if column == "country":
            return self.country_of
        if column == "year":
            return self.year_of
        k = self.position[column]
        if self.types[column] == "numeric":
            # Compared and sorted by value, as PostgreSQL does (`1.50` = `1.5`), never by text.
            def numeric(i: int) -> Decimal | None:
                value = self.values(i)[k]
                return None if value is None else Decimal(value.text)

            return numeric
        return lambda i: self.values(i)[k]


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


def _validation_error(errors: dict[str, Any]) -> CkanError:
    return CkanError(409, "Validation Error", errors)


def _invalid_query(detail: str) -> CkanError:
    # What CKAN answers when PostgreSQL rejects a value (e.g. `year = 'abc'`).
    return _validation_error({"query": ["Invalid query"], "info": {"orig": [detail]}})


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
_IGNORED_GET_PARAMS = {"callback", "_"}


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
        raise _validation_error(errors)
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


# ---------------------------------------------------------------------------------------------------------
# Query planning: filters, q and sort against one table


_SORT_CLAUSE = re.compile(r"^(.+?)(?:\s+(asc|desc))?$", re.IGNORECASE)
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_TRUE_WORDS = {"t", "true", "y", "yes", "on", "1"}
_FALSE_WORDS = {"f", "false", "n", "no", "off", "0"}
_NO_MATCH = object()  # a filter value that can match no row (SQL NULL)


def _parse_sort(clauses: list[str], types: Mapping[str, str]) -> tuple[list[tuple[str, bool]], list[str]]:
    parsed: list[tuple[str, bool]] = []
    invalid: list[str] = []
    for clause in clauses:
        match = _SORT_CLAUSE.match(clause.strip())
        if not match:
            invalid.append(clause)
            continue
        field = match.group(1).strip()
        if len(field) > 1 and field[0] == field[-1] == '"':
            field = field[1:-1]
        if field not in types:
            invalid.append(clause)
            continue
        parsed.append((field, (match.group(2) or "asc").lower() == "desc"))
    return parsed, invalid


def _coerce(column: str, typ: str, value: Any) -> Any:
    """A filter value converted to the column's type as PostgreSQL would, or _NO_MATCH for null."""
    if value is None:
        return _NO_MATCH
    if typ in ("int", "numeric"):
        if isinstance(value, bool):
            raise _invalid_query(f"operator does not exist: {typ} = boolean ({column})")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return Decimal(repr(value)) if typ == "numeric" else value
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return Decimal(text) if typ == "numeric" else float(text)
        except (ValueError, ArithmeticError):
            raise _invalid_query(f'invalid input syntax for type {typ}: "{value}"') from None
    if typ == "text":
        # CKAN sends every value for a text column as a string.
        return str(value)
    if typ == "bool":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise _invalid_query(f'invalid input syntax for type boolean: "{value}"')
    if typ == "timestamp":
        try:
            moment = datetime.datetime.fromisoformat(str(value).strip().replace("Z", ""))
        except ValueError:
            raise _invalid_query(f'invalid input syntax for type timestamp: "{value}"') from None
        # Stored values are fixed-width, so their text order is their time order.
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    raise _invalid_query(f"cannot compare a value of type {typ} ({column})")


def _predicate(getter: Callable[[int], Any], op: str, value: Any) -> Callable[[int], bool] | None:
    """One filter as a row test; None when it can match no row."""
    if op == "eq":
        if value is _NO_MATCH:
            return None
        return lambda i: getter(i) == value
    if op == "in":
        choices = {v for v in value if v is not _NO_MATCH}
        if not choices:
            return None
        return lambda i: getter(i) in choices
    if value is _NO_MATCH:
        return None
    compare = _OPERATORS[op]

    def test(i: int) -> bool:
        found = getter(i)
        return found is not None and compare(found, value)

    return test


def _terms(text: str) -> list[str]:
    return [word for word in re.split(r"[\s&|!():*]+", text.lower()) if word]


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode() if isinstance(value, list | dict) else str(value)


def _rank(text: str, terms: list[str]) -> float | None:
    """How well `text` matches every term (None: some term is missing), in (0, 1) like ts_rank(..., 32)."""
    hits = 0
    for term in terms:
        found = text.count(term)
        if not found:
            return None
        hits += found
    score = 0.1 * hits
    return round(score / (score + 1.0), 6)


@dataclass
class QueryPlan:
    """What to select from a table: the row tests, the `_id` window, the order and the output columns."""

    match_key: tuple[Any, ...]
    tests: list[Callable[[int], bool]]
    impossible: bool
    id_low: int  # first row index allowed (inclusive)
    id_high: int  # last row index allowed (exclusive)
    id_in: frozenset[int] | None
    searches: list[tuple[str | None, list[str]]]  # (column or None for full text, terms)
    order: list[tuple[str, bool]] | None  # None: relevance when searching, else `_id` ascending
    output: list[str]
    rank_columns: list[str]
    keyset_operator: str | None  # "gt"/"lt" when the order is by `_id` alone

    def rank_values(self, table: SyntheticTable, values: tuple[Any, ...]) -> list[float]:
        """The rank columns of one row (CKAN adds `rank` / `rank <field>` when searching)."""
        ranks: list[float] = []
        for column, terms in self.searches:
            ranks.append(_rank(_search_text(table, values, column), terms) or 0.0)
        return ranks


def _search_text(table: SyntheticTable, values: tuple[Any, ...], column: str | None) -> str:
    if column is None:
        return " ".join(_text_of(values[table.position[c]]) for c in _FULL_TEXT_COLUMNS).lower()
    return _text_of(values[table.position[column]]).lower()


def plan_query(table: SyntheticTable, params: SearchParams) -> QueryPlan:
    """Check fields, sort, filters and q against the table's columns and turn them into a plan."""
    types = table.types
    errors: dict[str, list[str]] = {}
    if params.fields is not None:
        unknown = [f for f in params.fields if f not in types]
        if unknown:
            errors["fields"] = [f'invalid value "{unknown[0]}"']
    order: list[tuple[str, bool]] | None = None
    if params.sort is not None:
        order, invalid = _parse_sort(params.sort, types)
        if invalid:
            errors["sort"] = [f'invalid value "{invalid[0]}"']
    unknown_filters = [key for key in params.filters if key not in types]
    if unknown_filters:
        errors["filters"] = [f'invalid value "{unknown_filters[0]}"']
    if isinstance(params.q, dict):
        unknown_q = [key for key in params.q if key not in types]
        if unknown_q:
            errors["q"] = [f'invalid value "{unknown_q[0]}"']
    if errors:
        raise _validation_error(errors)

    id_low, id_high = 0, table.rows
    id_in: frozenset[int] | None = None
    tests: list[Callable[[int], bool]] = []
    impossible = False
    key_parts: list[Any] = []
    for column, spec in params.filters.items():
        typ = types[column]
        clauses: list[tuple[str, Any]]
        if isinstance(spec, dict):
            clauses = []
            for op, value in spec.items():
                if op not in _OPERATORS:
                    raise _validation_error({"filters": [f"Unknown filter operation: {op!r}"]})
                clauses.append((op, _coerce(column, typ, value)))
        elif isinstance(spec, list):
            clauses = [("in", tuple(_coerce(column, typ, v) for v in spec))]
        else:
            clauses = [("eq", _coerce(column, typ, spec))]
        for op, value in clauses:
            if column == "_id":
                # `_id` limits a window of row indexes instead of testing rows, so keyset pages cost nothing.
                if op == "in":
                    ids = frozenset(int(v) for v in value if v is not _NO_MATCH and float(v).is_integer())
                    id_in = ids if id_in is None else id_in & ids
                    continue
                if value is _NO_MATCH:
                    impossible = True
                    continue
                # Row index i holds `_id` i + 1; the window is [id_low, id_high) in row indexes.
                number = float(value)
                if op == "eq":
                    if not number.is_integer():
                        impossible = True
                        continue
                    id_low, id_high = max(id_low, int(number) - 1), min(id_high, int(number))
                elif op == "gt":
                    id_low = max(id_low, math.floor(number))
                elif op == "gte":
                    id_low = max(id_low, math.ceil(number) - 1)
                elif op == "lt":
                    id_high = min(id_high, math.ceil(number) - 1)
                else:
                    id_high = min(id_high, math.floor(number))
                continue
            test = _predicate(table.getter(column), op, value)
            if test is None:
                impossible = True
                continue
            tests.append(test)
            key_parts.append((column, op, _freeze(value)))

    # A string `q` and `full_text` both search CKAN's `_full_text`; a dict `q` searches each named column.
    full_terms = (_terms(params.q) if isinstance(params.q, str) else []) + _terms(params.full_text or "")
    searches: list[tuple[str | None, list[str]]] = [(None, full_terms)] if full_terms else []
    if isinstance(params.q, dict):
        searches.extend((column, _terms(text)) for column, text in params.q.items() if _terms(text))
    key_parts.extend(("q", column, tuple(terms)) for column, terms in searches)
    # Searching adds CKAN's rank columns to the default output (never to an explicit `fields`).
    rank_columns = (
        ["rank" if column is None else f"rank {column}" for column, _ in searches]
        if params.fields is None
        else []
    )
    if order is None and not searches:
        order = [("_id", False)]
    keyset_operator = None
    if order is not None and len(order) == 1 and order[0][0] == "_id":
        keyset_operator = "lt" if order[0][1] else "gt"
    return QueryPlan(
        match_key=tuple(sorted(key_parts, key=repr)),
        tests=tests,
        impossible=impossible,
        id_low=max(0, id_low),
        id_high=min(table.rows, id_high),
        id_in=id_in,
        searches=searches,
        order=order,
        output=list(params.fields) if params.fields is not None else list(table.names),
        rank_columns=rank_columns,
        keyset_operator=keyset_operator,
    )


def _freeze(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(sorted(repr(v) for v in value))
    return (type(value).__name__, value)


# ---------------------------------------------------------------------------------------------------------
# Selecting rows


_HEAVY_ROWS = 100_000  # scans of tables larger than this run in a thread, so the server keeps answering


class TableIndex:
    """One table plus an LRU cache of matching and ordered row indexes per (filters, q, sort)."""

    def __init__(self, table: SyntheticTable, cache_entries: int = 16) -> None:
        self.table = table
        self._cache: OrderedDict[tuple[Any, ...], array[int]] = OrderedDict()
        self._entries = cache_entries
        self._lock = asyncio.Lock()

    async def _cached(self, key: tuple[Any, ...], compute: Callable[[], array[int]]) -> array[int]:
        found = self._cache.get(key)
        if found is None:
            async with self._lock:
                found = self._cache.get(key)
                if found is None:
                    if self.table.rows > _HEAVY_ROWS:
                        found = await asyncio.to_thread(compute)
                    else:
                        found = compute()
                    self._cache[key] = found
                    while len(self._cache) > self._entries:
                        self._cache.popitem(last=False)
        if key in self._cache:  # a concurrent computation may have evicted it already
            self._cache.move_to_end(key)
        return found

    def _scan(self, plan: QueryPlan) -> array[int]:
        table = self.table
        rows: Iterable[int] = range(table.rows)
        # Chained filters stop at a row's first failing test; the column tests (cheap for `country` and
        # `year`, which need no whole row) come before the text searches.
        for test in plan.tests:
            rows = filter(test, rows)
        for column, terms in plan.searches:
            rows = filter(_search_test(table, column, terms), rows)
        return array("i", rows)

    def _ordered(self, plan: QueryPlan, matches: Sequence[int]) -> array[int]:
        table = self.table
        if plan.order is None:
            # Relevance: every rank column, best first; ties stay in `_id` order (the sort is stable).
            def relevance(i: int) -> tuple[float, ...]:
                return tuple(-r for r in plan.rank_values(table, table.values(i)))

            return array("i", sorted(matches, key=relevance))
        # A multi-column sort is one stable pass per column, last column first.
        order: Sequence[int] = matches
        for step, (column, descending) in enumerate(reversed(plan.order)):
            if column == "_id" and step == 0:
                order = array("i", reversed(matches) if descending else matches)
            else:
                order = _stable_sort_pass(order, table.getter(column), table.types[column], descending)
        return order if isinstance(order, array) else array("i", order)

    async def select(self, plan: QueryPlan) -> Sequence[int]:
        """The row indexes the plan selects, in its order (a range or memoryview when no copy is needed)."""
        if plan.impossible or plan.id_low >= plan.id_high:
            return range(0)
        unfiltered = not plan.tests and not plan.searches
        base: Sequence[int]
        if unfiltered:
            base = range(self.table.rows)
            window: Sequence[int] = range(plan.id_low, plan.id_high)
        else:
            matches = await self._cached(("match", plan.match_key), lambda: self._scan(plan))
            base = matches
            lo, hi = bisect_left(matches, plan.id_low), bisect_left(matches, plan.id_high)
            window = memoryview(matches)[lo:hi]
        if plan.id_in is not None:
            window = array("i", (i for i in window if i + 1 in plan.id_in))
        if plan.keyset_operator == "gt":
            return window
        if plan.keyset_operator == "lt":
            return window[::-1]
        sort_key = ("order", plan.match_key, repr(plan.order), repr(plan.searches))
        ordered = await self._cached(sort_key, lambda: self._ordered(plan, base))
        if len(window) == len(base):
            return ordered
        low, high, allowed = plan.id_low, plan.id_high, plan.id_in
        return array("i", (i for i in ordered if low <= i < high and (allowed is None or i + 1 in allowed)))


_BUCKETS_MAX = 4096  # distinct values up to which a sort pass buckets rows instead of sorting them


def _stable_sort_pass(
    order: Sequence[int], getter: Callable[[int], Any], typ: str, descending: bool
) -> array[int]:
    """Rows re-ordered stably by one column: nulls last ascending and first descending, as PostgreSQL does."""
    if typ == "json" or typ.startswith("_"):
        plain = getter

        def getter(i: int) -> Any:
            value = plain(i)
            return None if value is None else orjson.dumps(value)

    # Few distinct values (country, year, booleans...): buckets of row indexes, compact and one pass long.
    nulls: array[int] = array("i")
    buckets: dict[Any, array[int]] = {}
    for i in order:
        value = getter(i)
        if value is None:
            nulls.append(i)
            continue
        bucket = buckets.get(value)
        if bucket is None:
            if len(buckets) >= _BUCKETS_MAX:
                break
            bucket = buckets[value] = array("i")
        bucket.append(i)
    else:
        result: array[int] = array("i")
        if descending:
            result.extend(nulls)
        for value in sorted(buckets, reverse=descending):
            result.extend(buckets[value])
        if not descending:
            result.extend(nulls)
        return result
    # Many distinct values: an ordinary stable sort of the rows that have one.
    present = [i for i in order if getter(i) is not None]
    present.sort(key=getter, reverse=descending)
    nulls = array("i", (i for i in order if getter(i) is None))
    return nulls + array("i", present) if descending else array("i", present) + nulls


def _search_test(table: SyntheticTable, column: str | None, terms: list[str]) -> Callable[[int], bool]:
    def test(i: int) -> bool:
        return _rank(_search_text(table, table.values(i), column), terms) is not None

    return test


# ---------------------------------------------------------------------------------------------------------
# Rendering records


_CSV_SPECIAL = {",": re.compile(r'[,"\r\n]'), "\t": re.compile(r'[\t"\r\n]')}


def _csv_formatter(typ: str, delimiter: str) -> Callable[[Any], str]:
    """How PostgreSQL's `COPY ... TO STDOUT csv` writes one column of what CKAN selects."""
    special = _CSV_SPECIAL[delimiter].search

    def quoted(text: str) -> str:
        # COPY quotes a value holding the delimiter, a quote or a line break, and the empty string
        # (an unquoted empty cell is null).
        if text == "" or text == "\\." or special(text):
            return '"' + text.replace('"', '""') + '"'
        return text

    if typ == "json" or typ.startswith("_"):
        # CKAN selects coalesce(array_to_json(col), 'null') and (col).json: JSON text, null as `null`.
        return lambda v: "null" if v is None else quoted(orjson.dumps(v).decode())
    if typ == "bool":
        return lambda v: "" if v is None else ("t" if v else "f")
    if typ in ("int", "numeric", "float"):
        return lambda v: "" if v is None else (repr(v) if isinstance(v, float) else str(v))
    if typ == "timestamp":
        return lambda v: "" if v is None else v
    return lambda v: "" if v is None else quoted(v)


def render_records(
    table: SyntheticTable, plan: QueryPlan, indexes: Sequence[int], records_format: str
) -> list[Any] | str:
    """The `records` of a page, in the requested format."""
    positions = [table.position[name] for name in plan.output]
    values_of = table.values
    ranked = bool(plan.rank_columns)
    whole = positions == list(range(len(table.names)))
    if records_format in ("csv", "tsv"):
        delimiter = "," if records_format == "csv" else "\t"
        types = [table.types[name] for name in plan.output] + ["float"] * len(plan.rank_columns)
        formatters = [_csv_formatter(typ, delimiter) for typ in types]
        pairs = list(zip(formatters, positions, strict=False))
        lines: list[str] = []
        for i in indexes:
            values = values_of(i)
            cells = [fmt(values[p]) for fmt, p in pairs]
            if ranked:
                cells.extend(repr(r) for r in plan.rank_values(table, values))
            lines.append(delimiter.join(cells))
        return "\n".join(lines) + "\n" if lines else ""
    if records_format == "lists":
        if whole and not ranked:
            return [values_of(i) for i in indexes]
        rows: list[Any] = []
        for i in indexes:
            values = values_of(i)
            cells = [values[p] for p in positions]
            if ranked:
                cells.extend(plan.rank_values(table, values))
            rows.append(cells)
        return rows
    names = plan.output
    if whole and not ranked:
        all_names = table.names
        return [dict(zip(all_names, values_of(i), strict=False)) for i in indexes]
    records: list[Any] = []
    for i in indexes:
        values = values_of(i)
        record = {name: values[p] for name, p in zip(names, positions, strict=True)}
        if ranked:
            record.update(zip(plan.rank_columns, plan.rank_values(table, values), strict=True))
        records.append(record)
    return records


def _render_without_gc(
    table: SyntheticTable, plan: QueryPlan, indexes: Sequence[int], records_format: str
) -> list[Any] | str:
    # A page is tens of thousands of fresh containers that all live until the answer is sent: the cyclic
    # garbage collector would scan them again and again for nothing (it doubled the time of a page).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return render_records(table, plan, indexes, records_format)
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------------------------
# Fault injection


@dataclass(frozen=True)
class Faults:
    """Deterministic fault injection; each rate is the fraction of requests it hits."""

    error_rate: float = 0.0  # answered 500, 502 or 503
    timeout_rate: float = 0.0  # answered only after `timeout_seconds`
    timeout_seconds: float = 30.0
    reset_rate: float = 0.0  # headers and part of the body sent, then the connection closed
    slow_page_delay: float = 0.0  # seconds added to every answer
    seed: int = 0


STATS = web.AppKey("ckan_stats", dict[str, int])
"""Counters of a running app: requests, errors_injected, timeouts_injected, resets_injected, pages, rows."""


@dataclass
class _ServerState:
    indexes: dict[str, TableIndex]
    rows_max: int
    api_token: str | None
    backend: str | None
    faults: Faults | None
    rng: random.Random
    # Requests that just got a fault: their next attempt is answered normally, even with other clients
    # interleaving, so a client that retries always gets through.
    exempt: OrderedDict[bytes, None] = field(default_factory=OrderedDict)


_STATE = web.AppKey("ckan_state", _ServerState)

_GATEWAY_BODIES = {
    500: b"<html><body><h1>500 Internal Server Error</h1></body></html>",
    502: b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    503: b"<html><body><h1>503 Service Unavailable</h1></body></html>",
}


def _draw_fault(state: _ServerState, fingerprint: bytes) -> str | None:
    """Which fault (if any) this request gets: a request that just got one never gets one again."""
    faults = state.faults
    if faults is None:
        return None
    # Always draw the same numbers per request, so a run is reproducible from the seed.
    error, timeout, reset = state.rng.random(), state.rng.random(), state.rng.random()
    if fingerprint in state.exempt:
        del state.exempt[fingerprint]
        return None
    fault = None
    if error < faults.error_rate:
        fault = "error"
    elif reset < faults.reset_rate:
        fault = "reset"
    elif timeout < faults.timeout_rate:
        fault = "timeout"
    if fault:
        state.exempt[fingerprint] = None
        while len(state.exempt) > 4096:
            state.exempt.popitem(last=False)
    return fault


async def _send_truncated(request: web.Request, body: bytes) -> web.StreamResponse:
    """Announce the whole body, send about half of it, then close the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json;charset=utf-8"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then closes: the client sees a short body
    return response


# ---------------------------------------------------------------------------------------------------------
# HTTP


async def _read_raw_params(request: web.Request, body: bytes) -> dict[str, Any]:
    if request.method == "GET":
        raw: dict[str, Any] = {}
        for key in request.query:
            if key in _IGNORED_GET_PARAMS or key in raw:
                continue
            values = request.query.getall(key)
            raw[key] = values[0] if len(values) == 1 else list(values)
        return raw
    if not body.strip():
        return {}
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        return {key: form.getall(key)[0] if len(form.getall(key)) == 1 else form.getall(key) for key in form}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CkanError(400, "Bad request", f"Bad request - JSON Error: {exc}") from None
    if not isinstance(parsed, dict):
        raise CkanError(
            400,
            "Bad request",
            "Bad request - JSON Error: Request data JSON decoded to "
            f"{parsed!r} but it needs to be a dictionary.",
        )
    return parsed


def _help_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/api/3/action/help_show?name=datastore_search"


def _json_response(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload, default=_json_default),
        content_type="application/json",
        charset="utf-8",
    )


def _encode_cursor(position: int) -> str:
    return "AoE" + base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    if cursor == "*":
        return 0
    try:
        if not cursor.startswith("AoE"):
            raise ValueError(cursor)
        text = cursor[3:]
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        if not decoded.startswith("p"):
            raise ValueError(cursor)
        return int(decoded[1:])
    except (ValueError, UnicodeDecodeError):
        raise _validation_error({"cursor": [f"Unable to parse cursor: {cursor!r}"]}) from None


def _position_after(selection: Sequence[int], plan: QueryPlan, after: Any) -> int:
    """Where the page after the row named by a versioned-datastore `after` value starts."""
    if not isinstance(after, list) or len(after) != 1 or isinstance(after[0], bool):
        raise _validation_error({"after": [f"invalid value {after!r}"]})
    try:
        index = int(after[0]) - 1
    except (TypeError, ValueError):
        raise _validation_error({"after": [f"invalid value {after!r}"]}) from None
    if plan.keyset_operator == "gt":
        return bisect_right(selection, index)
    if plan.keyset_operator == "lt":
        ascending = selection[::-1]
        return len(selection) - bisect_left(ascending, index)
    for position, found in enumerate(selection):
        if found == index:
            return position + 1
    raise _validation_error({"after": [f"invalid value {after!r}"]})


async def _search(request: web.Request, state: _ServerState, raw: Mapping[str, Any]) -> dict[str, Any]:
    params = validate_params(raw, state.backend)
    index = state.indexes.get(params.resource_id)
    if index is None:
        raise CkanError(404, "Not Found Error", f'Not found: Resource "{params.resource_id}" was not found.')
    if state.api_token is not None and request.headers.get("Authorization", "") != state.api_token:
        raise CkanError(
            403,
            "Authorization Error",
            f"Access denied: User not authorized to read resource {params.resource_id}",
        )
    table = index.table
    if params.records_format == "lists" and (params.q or params.full_text):
        # CKAN 2.12 builds a full-text search with `lists` into two statements, which it refuses.
        raise _validation_error({"query": ["Query is not a single statement."]})
    plan = plan_query(table, params)
    limit = min(DEFAULT_LIMIT if params.limit is None else params.limit, state.rows_max)
    offset = params.offset or 0
    if state.backend == "solr" and params.cursor is not None and offset:
        raise _validation_error({"cursor": ["Cursor functionality requires start=0"]})

    selection = await index.select(plan)
    total = len(selection)
    extra: dict[str, Any] = {}
    keyset = plan.keyset_operator is not None and any(
        isinstance(spec, dict) and ("gt" in spec or "lt" in spec)
        for column, spec in params.filters.items()
        if column == "_id"
    )
    start = 0 if keyset else offset
    if state.backend == "solr" and params.cursor is not None:
        start = _decode_cursor(params.cursor)
    elif state.backend == "versioned-datastore" and params.after is not None:
        start = _position_after(selection, plan, params.after)
    page = selection[start : start + limit] if limit else range(0)

    result: dict[str, Any] = {
        "include_total": params.include_total,
        "resource_id": params.resource_id,
        "fields": [{"id": name, "type": table.types[name]} for name in plan.output]
        + [{"id": name, "type": "float"} for name in plan.rank_columns],
        "records_format": params.records_format,
    }
    if limit:
        result["records"] = _render_without_gc(table, plan, page, params.records_format)
    else:  # CKAN 2.12 answers `limit=0` with an empty page, not without one
        result["records"] = "" if params.records_format in ("csv", "tsv") else []
    result["limit"] = limit
    if params.offset is not None:
        result["offset"] = params.offset
    # CKAN answers with the call's own parameters beside the results.
    for echoed in ("filters", "q", "sort", "full_text", "plain", "language", "distinct"):
        if echoed in params.given:
            result[echoed] = {"filters": params.filters, "q": params.q}.get(echoed, params.given[echoed])
    if params.include_next_page:
        result["include_next_page"] = True
    if params.include_total:
        result["total"] = total
    if params.include_next_page and plan.keyset_operator and len(page):
        result["next_page"] = {"_id": {plan.keyset_operator: page[-1] + 1}}
    if state.backend == "solr":
        extra["_backend"] = "solr"
        if params.cursor is not None:
            extra["next_cursor"] = _encode_cursor(start + len(page)) if len(page) else params.cursor
    elif state.backend == "versioned-datastore":
        extra["_backend"] = "versioned-datastore"
        if limit and start + len(page) < total:
            extra["after"] = [page[-1] + 1]
    result.update(extra)
    return {"rows": len(page), "result": result}


async def _handle_search(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    stats = request.app[STATS]
    stats["requests"] += 1
    body = await request.read()
    fingerprint = request.method.encode() + b" " + request.path_qs.encode() + b"\n" + body
    fault = _draw_fault(state, fingerprint)
    faults = state.faults
    if faults is not None and faults.slow_page_delay > 0:
        await asyncio.sleep(faults.slow_page_delay)
    if fault == "error":
        stats["errors_injected"] += 1
        status = state.rng.choice((500, 502, 503))
        return web.Response(status=status, body=_GATEWAY_BODIES[status], content_type="text/html")
    if fault == "timeout" and faults is not None:
        stats["timeouts_injected"] += 1
        await asyncio.sleep(faults.timeout_seconds)

    help_url = _help_url(request)
    try:
        answer = await _search(request, state, await _read_raw_params(request, body))
    except CkanError as exc:
        payload = {"help": help_url, "success": False, "error": exc.error_body()}
        return _json_response(exc.status, payload)
    stats["pages"] += 1
    stats["rows"] += answer["rows"]
    payload = {"help": help_url, "success": True, "result": answer["result"]}
    if fault == "reset":
        stats["resets_injected"] += 1
        return await _send_truncated(request, orjson.dumps(payload, default=_json_default))
    return _json_response(200, payload)


def create_ckan_app(
    tables: Mapping[str, SyntheticTable],
    *,
    rows_max: int = 32000,
    api_token: str | None = None,
    backend: str | None = None,
    faults: Faults | None = None,
    admin: bool = False,
) -> web.Application:
    """An aiohttp app serving `datastore_search` (GET and POST, /api/3/action and /api/action) over tables.

    `admin` adds `/_dev/faults` to change the faults while the server runs (development only).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if rows_max < 1:
        raise ValueError("rows_max must be at least 1")
    app = web.Application()
    app[_STATE] = _ServerState(
        indexes={rid: TableIndex(table) for rid, table in tables.items()},
        rows_max=rows_max,
        api_token=api_token,
        backend=backend,
        faults=faults,
        rng=random.Random(faults.seed if faults else 0),
    )
    app[STATS] = dict.fromkeys(
        ("requests", "errors_injected", "timeouts_injected", "resets_injected", "pages", "rows"), 0
    )
    for path in (ACTION_PATH, "/api/action/datastore_search"):
        app.router.add_get(path, _handle_search, allow_head=False)
        app.router.add_post(path, _handle_search)
    if admin:
        app.router.add_get(ADMIN_PATH, _show_faults)
        app.router.add_post(ADMIN_PATH, _set_faults)
    return app


def _faults_body(app: web.Application) -> dict[str, Any]:
    faults = app[_STATE].faults
    return {"faults": None if faults is None else asdict(faults), "stats": dict(app[STATS])}


async def _show_faults(request: web.Request) -> web.Response:
    """GET /_dev/faults: the faults in force and the counters."""
    return _json_response(200, _faults_body(request.app))


async def _set_faults(request: web.Request) -> web.Response:
    """POST /_dev/faults: replace the faults with the JSON object's `Faults` fields (`{}`: none)."""
    try:
        raw = orjson.loads(await request.read() or b"{}")
        if not isinstance(raw, dict):
            raise TypeError("a JSON object of Faults fields is expected")
        faults = Faults(**raw) if raw else None
    except (orjson.JSONDecodeError, TypeError) as exc:
        return _json_response(400, {"error": str(exc)})
    state = request.app[_STATE]
    state.faults = faults
    if faults is not None:
        state.rng = random.Random(faults.seed)
    return _json_response(200, _faults_body(request.app))


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run an app built by create_ckan_app on a free port; yield its datastore_search URL."""
    # A short shutdown timeout: a request sleeping in an injected timeout must not hold up the cleanup.
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}{ACTION_PATH}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_ckan(tables: Mapping[str, SyntheticTable], **kwargs: Any) -> AsyncIterator[str]:
    """Serve `tables` on 127.0.0.1 and a free port; yield the URL ending in /api/3/action/datastore_search."""
    async with serve_app(create_ckan_app(tables, **kwargs)) as url:
        yield url


def main(argv: Sequence[str] | None = None) -> int:
    """`packager dev ckan`: serve one synthetic table until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="packager dev ckan", description="A CKAN-compatible datastore_search server over synthetic rows."
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the table (default 10000)")
    parser.add_argument("--port", type=int, default=5005, help="port to listen on (default 5005)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--resource-id", default="synthetic", help="the table's resource id")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic rows")
    parser.add_argument("--rows-max", type=int, default=32000, help="ckan.datastore.search.rows_max")
    parser.add_argument("--token", default=None, help="require this raw API token in Authorization")
    parser.add_argument("--backend", choices=["solr", "versioned-datastore"], default=None)
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 5xx")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="fraction of requests delayed")
    parser.add_argument("--timeout-seconds", type=float, default=30.0, help="delay of a delayed request")
    parser.add_argument("--reset-rate", type=float, default=0.0, help="fraction of bodies cut mid-way")
    parser.add_argument("--slow-page-delay", type=float, default=0.0, help="seconds added to every page")
    parser.add_argument(
        "--admin", action="store_true", help=f"serve {ADMIN_PATH} to change the faults at run time"
    )
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--"]:
        # `packager dev ckan -- --rows N`: the separator the wrapping command needs to pass options on.
        arguments = arguments[1:]
    args = parser.parse_args(arguments)

    faults = None
    if args.error_rate or args.timeout_rate or args.reset_rate or args.slow_page_delay:
        faults = Faults(
            error_rate=args.error_rate,
            timeout_rate=args.timeout_rate,
            timeout_seconds=args.timeout_seconds,
            reset_rate=args.reset_rate,
            slow_page_delay=args.slow_page_delay,
            seed=args.seed,
        )
    table = SyntheticTable(args.resource_id, args.rows, seed=args.seed)
    app = create_ckan_app(
        {table.resource_id: table},
        rows_max=args.rows_max,
        api_token=args.token,
        backend=args.backend,
        faults=faults,
        admin=args.admin,
    )
    url = f"http://{args.host}:{args.port}{ACTION_PATH}?resource_id={table.resource_id}"
    print(f"[ckan] serving {table.rows} rows of {table.resource_id!r} at {url}", file=sys.stderr, flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0
