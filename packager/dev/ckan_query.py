"""Answering one `datastore_search` query against a synthetic table: filters, `q`, `sort` and selection.

`plan_query` checks the query against the table's columns and types (a `QueryPlan`); a `TableIndex` selects
the matching rows in order. Filtered and searched queries compute the matching row indexes once, into an
`array('i')` kept in a small LRU cache, so paging through millions of rows stays linear; unfiltered queries
never materialise indexes.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import operator
import re
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from packager.dev.ckan_params import SearchParams, invalid_query, validation_error
from packager.dev.ckan_table import FULL_TEXT_COLUMNS, SyntheticTable

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
            raise invalid_query(f"operator does not exist: {typ} = boolean ({column})")
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
            raise invalid_query(f'invalid input syntax for type {typ}: "{value}"') from None
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
        raise invalid_query(f'invalid input syntax for type boolean: "{value}"')
    if typ == "timestamp":
        try:
            moment = datetime.datetime.fromisoformat(str(value).strip().replace("Z", ""))
        except ValueError:
            raise invalid_query(f'invalid input syntax for type timestamp: "{value}"') from None
        # Stored values are fixed-width, so their text order is their time order.
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    raise invalid_query(f"cannot compare a value of type {typ} ({column})")


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
        return " ".join(_text_of(values[table.position[c]]) for c in FULL_TEXT_COLUMNS).lower()
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
        raise validation_error(errors)

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
                    raise validation_error({"filters": [f"Unknown filter operation: {op!r}"]})
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
