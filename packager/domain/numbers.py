"""Numbers exactly as CKAN sent them: the `NumberText` value type and the JSON parse that produces it.

CKAN returns PostgreSQL `numeric` values as JSON numbers with every digit (`12345678901234567890.123456789`),
and `float8` ones in PostgreSQL's own shortest form (`1e+15`). A parser that makes Python floats of them loses
digits or changes their text; orjson also turns integers beyond 64 bits into floats without a word. So:

- `loads_exact` parses with the standard library's `json`, which keeps integers of any size exactly and hands
  every other number to `NumberText`, which keeps its text;
- `needs_exact_numbers` tells from CKAN's `fields` whether a query can carry such numbers at all (`numeric`,
  floats, JSON, arrays of them, any type it does not know). Only those queries pay for the slower parse
  (about 1.5 times orjson's time on a page); the rest keep orjson, whose integers and texts are exact.

The writers (`packager.domain.writers`, and so `packager.domain.dwc`) write a `NumberText` as its text:
unchanged in CSV, TSV and DwC, as a raw JSON number in JSON lines and in JSON texts, and in XLSX as a number
only when a double holds it exactly within Excel's 15 digits (as text otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

# Column types whose values orjson parses without changing a digit: 64-bit integers, text, booleans, dates and
# times (CKAN sends those as strings), and arrays of them. Everything else is parsed exactly.
_EXACT_WITH_ORJSON: Final = frozenset(
    {
        "int",
        "int2",
        "int4",
        "int8",
        "integer",
        "smallint",
        "bigint",
        "serial",
        "bigserial",
        "text",
        "varchar",
        "char",
        "bpchar",
        "name",
        "citext",
        "uuid",
        "bool",
        "boolean",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "tsvector",
    }
)


class NumberText:
    """A JSON number other than an integer, kept as the exact text it arrived as (e.g. `1.50`, `1e+15`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"NumberText({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberText) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __float__(self) -> float:
        return float(self.text)


_DECODER: Final = json.JSONDecoder(parse_float=NumberText)


def loads_exact(data: bytes | str) -> Any:
    """Parse JSON keeping every number's value: ints as `int` (any size), other numbers as `NumberText`."""
    text = data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else data
    return _DECODER.decode(text)


def type_needs_exact_numbers(column_type: str) -> bool:
    """Whether values of this CKAN column type may hold numbers a float or orjson would change."""
    base = column_type.strip().lower()
    while base.startswith("_"):  # arrays: `_text`, `_numeric`
        base = base[1:]
    return base not in _EXACT_WITH_ORJSON


def needs_exact_numbers(fields: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of CKAN's `fields` (`{"id", "type"}`) needs `loads_exact`."""
    return any(type_needs_exact_numbers(str(field.get("type") or "")) for field in fields)
