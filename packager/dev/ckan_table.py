"""The synthetic tables the dev CKAN server answers from: any number of rows, computed from the row index.

A `SyntheticTable`'s rows are computed from the row index and a seed, so millions of rows cost no memory; its
columns cover every CKAN value the packager must write out (numbers, nulls, text with commas, quotes,
newlines, tabs and non-ASCII characters, booleans, arrays, JSON objects, timestamps).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from packager.domain.numbers import NumberText

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
FULL_TEXT_COLUMNS = ("species", "country", "notes", "tags")


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


def json_default(value: Any) -> Any:
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
