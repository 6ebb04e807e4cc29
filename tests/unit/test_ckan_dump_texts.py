"""CKAN's dump read as texts: the csv and tsv writers write the same bytes from them as from the pages'
values, for tricky values, however the body is cut and wherever the rows asked for end."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from packager.adapters.ckan_dump import _csv_pages, _dump_converter
from packager.domain.numbers import NumberText, loads_exact
from packager.domain.writers import open_writer

COLUMNS = ["_id", "note", "ok", "attributes", "tags", "amount", "ratio", "seen_on"]
TYPES = ["int", "text", "bool", "json", "_text", "numeric", "float8", "date"]

NOTES = [
    "plain",
    "comma, inside",
    'say "hi"',
    '"',
    '""',
    ',",',
    'a,"",b',
    "line one\nline two",
    "windows\r\nline",
    "lone\rreturn",
    "tab\there",
    "Zoë 東京 \u2028 ✓",
    "emoji \U0001f600",
    "  padded  ",
    "",
    None,
    "\\.",
    'ends with a quote"',
]
JSON_TEXTS = [
    '{"depth": 1.99, "ok": true, "n": [0, null]}',
    '{"k": {"nested": ["東京", 2.5]}, "s": "a,\\"b\\"\\n"}',
    '{"e": "\\u00e9\\/", "big": 123456789012345678901234567890, "f": 1E+2}',
    '"just a string, with a comma"',
    "42",
    "null",
    "[]",
    None,
]
TAGS = [["a,b", 'say "hi"'], [], ["x"], None, ["Zoë", "line\nbreak"]]
AMOUNTS = ["12345678901234567890.123456789", "-0.500", "0", None, "98661.610"]
RATIOS = ["2.5", "1e+15", "1e-07", None, "-0"]


def pg_field(text: str | None) -> str:
    """A field as PostgreSQL's `COPY ... CSV` writes it: null unquoted and empty, "" for an empty string."""
    if text is None:
        return ""
    if text == "" or any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def table(rows: int) -> tuple[bytes, list[list[Any]]]:
    """The dump's body for `rows` rows of tricky values, and those rows as the pages hold them."""
    body = [",".join(COLUMNS)]
    pages: list[list[Any]] = []
    for i in range(rows):
        note = NOTES[i % len(NOTES)]
        ok = [True, False, None][i % 3]
        attributes = JSON_TEXTS[i % len(JSON_TEXTS)]
        tags = TAGS[i % len(TAGS)]
        amount = AMOUNTS[i % len(AMOUNTS)]
        ratio = RATIOS[i % len(RATIOS)]
        seen_on = "2019-04-20" if i % 4 else None
        tags_text = None if tags is None else json.dumps(tags, ensure_ascii=False, separators=(",", ":"))
        ok_text = None if ok is None else ("t" if ok else "f")
        dump_texts = [str(i + 1), note, ok_text, attributes, tags_text, amount, ratio, seen_on]
        body.append(",".join(map(pg_field, dump_texts)))
        pages.append(
            [
                i + 1,
                note,
                ok,
                None if attributes is None else loads_exact(attributes),
                tags,
                None if amount is None else NumberText(amount),
                None if ratio is None else NumberText(ratio),
                seen_on,
            ]
        )
    return ("\n".join(body) + "\n").encode(), pages


class Trickle:
    """A response body handed out a few bytes at a time, so records and characters straddle reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step = data, step

    async def read(self, _n: int = -1) -> bytes:
        chunk, self._data = self._data[: self._step], self._data[self._step :]
        return chunk


def written(fmt: str, pages: list[Any], columns: list[str] = COLUMNS) -> bytes:
    out = io.BytesIO()
    with open_writer(fmt, columns, out) as writer:
        for page in pages:
            writer.write_rows(page)
    return out.getvalue()


async def dump_pages(body: bytes, step: int, most: int) -> list[Any]:
    converters = [_dump_converter(t) for t in TYPES]
    return [page async for page in _csv_pages(Trickle(body, step), COLUMNS, converters, 7, most)]  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@pytest.mark.parametrize("step", [1, 5, 64, 1000, 1_000_000])
async def test_the_dumps_texts_are_written_as_the_pages_values_are(fmt: str, step: int) -> None:
    body, rows = table(200)
    pages = await dump_pages(body, step, 10**9)
    assert [len(page) for page in pages] == [7] * 28 + [4]
    assert all(type(cell) is str for page in pages for row in page for cell in row)
    assert written(fmt, pages) == written(fmt, [rows])


@pytest.mark.parametrize("most", [1, 6, 7, 8, 150])
async def test_the_dump_stops_at_the_rows_asked_for(most: int) -> None:
    body, rows = table(200)
    pages = await dump_pages(body, 1000, most)
    assert sum(map(len, pages)) == most
    assert written("csv", pages) == written("csv", [rows[:most]])


def test_the_dump_texts_table_matches_what_postgresql_writes() -> None:
    """The test's own PostgreSQL quoting, checked on lines of a real CKAN 2.12 dump."""
    assert pg_field("") == '""'
    assert pg_field(None) == ""
    assert pg_field("two\nlines") == '"two\nlines"'
    assert pg_field('{"depth": 1.99}') == '"{""depth"": 1.99}"'
