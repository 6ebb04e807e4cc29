"""Row writers: pages of CKAN datastore rows in, the data file that goes inside a package's ZIP out.

Rows arrive page by page as lists of values in column order (CKAN `records_format=lists`); the column ids come
from CKAN's `fields`. `open_writer` returns a `RowWriter` for one of `FORMATS`, which writes to a binary
stream that only needs `write()` (a zipfile entry opened with `zf.open(name, "w")` is the intended target)
and keeps a sha256 and a byte count of everything it wrote.

Every text format renders a value the same way:

- `None` is empty (`null` in JSON lines);
- strings are written unchanged, numbers as given (`int` as digits, `float` by `repr`, so full precision is
  kept; a `packager.domain.numbers.NumberText`, the exact text of a `numeric` CKAN sent, as that text; a CKAN
  numeric that arrives as a string stays that string);
- booleans are `true` / `false`;
- lists and dicts are compact JSON text in UTF-8 (in JSON lines they stay structured JSON);
- the file is UTF-8 without a BOM. A lone surrogate (possible in a decoded JSON string, impossible in UTF-8)
  becomes U+FFFD.

Formats:

- `csv`: RFC 4180. A header row of column ids; a field is quoted only when it holds a comma, a double quote,
  CR or LF, and a double quote inside is doubled; records end with CRLF (`"\\r\\n"`), as RFC 4180 specifies.
- `tsv`: a header row, tab-separated, records end with LF. No quoting: inside a value a backslash is written
  `\\\\`, a tab `\\t`, a newline `\\n` and a carriage return `\\r`.
- `jsonl`: one JSON object per row (keys are the column ids, in column order) followed by LF, via orjson.
- `xlsx`: one worksheet named "Data" with a bold header row, streamed by xlsxwriter in `constant_memory`
  mode into a spool file that is copied into the output on `close()`. Strings stay strings (never formulas,
  URLs or numbers); ints and floats are numbers, except ints of 16 or more digits (which Excel would round
  to 15 significant digits) and NaN/infinity, which are written as their text; floats keep the 16
  significant digits xlsxwriter writes; a `NumberText` is a number when a double holds it exactly with at
  most 15 significant digits, and its text otherwise; booleans are booleans; None and "" leave the cell
  empty.
  More rows than a worksheet holds raise `RowLimitExceeded`; a value longer than an Excel cell holds raises
  `PackagingError`. Neither is ever silently truncated. After either, `abort()` removes the spool files.

Speed: the text formats work a page at a time and a column at a time, with C-level builtins (`map`, `zip`,
`set`, `str.join`): a column of plain strings is scanned once and used as it is, a column of numbers goes
through one orjson call (see `value_text.number_texts`), and a page of JSON lines is one orjson call. Only
columns that need it (quoting, escaping, JSON text, booleans) are converted value by value.

Where each part lives: `row_writer` (the `RowWriter` base, `FORMATS`, the hashing sink), `value_text` (the
rendering of values above, shared by every format), `text_writers` (csv, tsv), `jsonl_writer`, `xlsx_writer`
(and Excel's limits). This module picks a writer; its names are the ones callers import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO

from packager.core.errors import PackagingError
from packager.domain.jsonl_writer import JsonLinesWriter
from packager.domain.row_writer import COPY_CHUNK, FORMATS, RowWriter, check_format, data_file_name
from packager.domain.text_writers import CsvWriter, TsvWriter
from packager.domain.value_text import text_of
from packager.domain.xlsx_writer import (
    XLSX_EXACT_INT_LIMIT,
    XLSX_MAX_CELL_CHARS,
    XLSX_MAX_COLUMNS,
    XLSX_MAX_ROWS,
    RowLimitExceeded,
    XlsxWriter,
)

__all__ = [
    "COPY_CHUNK",
    "FORMATS",
    "XLSX_EXACT_INT_LIMIT",
    "XLSX_MAX_CELL_CHARS",
    "XLSX_MAX_COLUMNS",
    "XLSX_MAX_ROWS",
    "RowLimitExceeded",
    "RowWriter",
    "data_file_name",
    "open_writer",
    "text_of",
]


def open_writer(
    fmt: str, columns: Sequence[str], out: IO[bytes], *, spool_dir: Path | None = None
) -> RowWriter:
    """A writer of rows with these column ids, in format `fmt`, onto the write-only binary stream `out`."""
    check_format(fmt)
    columns = tuple(columns)
    if not columns:
        raise PackagingError("The resource has no columns to write.")
    if not all(isinstance(column, str) and column for column in columns):
        raise PackagingError(f"Every column id must be a non-empty string, not {list(columns)!r}.")
    if len(set(columns)) != len(columns):
        raise PackagingError(f"The resource has duplicate column ids: {list(columns)!r}.")
    if fmt == "csv":
        return CsvWriter(columns, out)
    if fmt == "tsv":
        return TsvWriter(columns, out)
    if fmt == "jsonl":
        return JsonLinesWriter(columns, out)
    return XlsxWriter(columns, out, spool_dir=spool_dir)
