"""Rendering selected rows as CKAN does for each `records_format`: objects, lists, csv and tsv."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from packager.dev.ckan_query import QueryPlan
from packager.dev.ckan_table import SyntheticTable

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
            row: list[Any] = [values[p] for p in positions]
            if ranked:
                row.extend(plan.rank_values(table, values))
            rows.append(row)
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


def render_without_gc(
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
