"""Tables loaded into a real CKAN by the `real_ckan` tests and the real-CKAN benchmark.

Rows are computed from their index, so the tests and the loader agree without storing anything. Every column
type the packager must write exactly is there, each with nulls: `numeric` (with 30-digit values and trailing
zeros), `int8` (up to its limits), `bool`, `timestamp`, `date`, `json` (with decimals), `text[]` (with commas
and quotes) and `text` (words for full-text search, commas, quotes, newlines, non-ASCII).
"""

from __future__ import annotations

from typing import Any

BIG_ROWS = 21_000
PRIVATE_ROWS = 300

FIELDS: list[dict[str, str]] = [
    {"id": "code", "type": "text"},
    {"id": "species", "type": "text"},
    {"id": "notes", "type": "text"},
    {"id": "amount", "type": "numeric"},
    {"id": "big", "type": "int8"},
    {"id": "verified", "type": "bool"},
    {"id": "seen_at", "type": "timestamp"},
    {"id": "seen_on", "type": "date"},
    {"id": "attributes", "type": "json"},
    {"id": "tags", "type": "_text"},
    {"id": "ratio", "type": "float8"},
]

SPECIES = ("Panthera leo", "Panthera tigris", "Canis lupus", "Apis mellifera", "Quercus robur", "Felis catus")
NOTES = (
    "running through the grass",
    "runs at dusk, near the river",
    'said "hello", then left',
    "two\nlines",
    "naïve café — ünïcödé ✓",
    "",
    "the lion sleeps",
)


def _hash(i: int) -> int:
    x = (i * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    return x ^ (x >> 13)


def record(i: int) -> dict[str, Any]:
    """Row `i` (0-based) as sent to `datastore_create`; numerics go as strings to keep every digit."""
    h = _hash(i)
    amount: str | None
    if h % 11 == 0:
        amount = None
    elif h % 7 == 0:
        amount = f"{1 + h % 9}{h:010d}{i:010d}.{(h ^ i) % 10**9:09d}"  # 30 digits
    else:
        amount = f"{(h % 2_000_000) - 1_000_000}.{h % 100:02d}0"  # trailing zero, as numeric keeps it
    big: int | None = None if h % 13 == 0 else (2**63 - 1 - i if h % 2 else -(2**63) + i)
    return {
        "code": f"K{(i * 7919) % 1_000_003:07d}",  # distinct: a sort on it has no ties
        "species": SPECIES[h % len(SPECIES)],
        "notes": None if h % 17 == 0 else NOTES[(h >> 5) % len(NOTES)],
        "amount": amount,
        "big": big,
        "verified": None if h % 5 == 0 else bool(h & 1),
        "seen_at": None
        if h % 19 == 0
        else f"20{10 + h % 15:02d}-{1 + h % 12:02d}-{1 + h % 28:02d}T{h % 24:02d}:{h % 60:02d}:{h % 59:02d}",
        "seen_on": None
        if h % 23 == 0
        else f"19{50 + h % 50:02d}-{1 + (h >> 3) % 12:02d}-{1 + (h >> 7) % 28:02d}",
        "attributes": None if h % 29 == 0 else {"depth": (h % 1000) / 100, "ok": bool(h & 2), "n": [i, None]},
        "tags": None if h % 31 == 0 else (["a,b", 'say "hi"'] if h & 4 else []),
        "ratio": None if h % 37 == 0 else [0.1, 1e15, 100.0, 1e-7, 2.5][h % 5],
    }
