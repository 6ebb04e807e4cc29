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
through one orjson call (see `_number_texts`), and a page of JSON lines is one orjson call. Only columns that
need it (quoting, escaping, JSON text, booleans) are converted value by value.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from itertools import chain, repeat
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final

import orjson
import xlsxwriter
from xlsxwriter.exceptions import FileSizeError

from packager.core.errors import PackagingError
from packager.domain.numbers import NumberText

FORMATS: Final = ("csv", "tsv", "jsonl", "xlsx")

XLSX_MAX_ROWS = 1_048_576
"""Rows in one Excel worksheet, the header row included."""
XLSX_MAX_COLUMNS: Final = 16_384
XLSX_MAX_CELL_CHARS: Final = 32_767
"""Characters (UTF-16 code units) in one Excel cell."""
XLSX_EXACT_INT_LIMIT: Final = 10**15
"""Ints at least this large in magnitude have more digits than Excel keeps; they are written as text."""

COPY_CHUNK: Final = 1024 * 1024

_NoneType = type(None)
_TEXT_OR_NONE: Final = frozenset({str, _NoneType})
_NUMBER_OR_NONE: Final = frozenset({int, float, bool, _NoneType})
_JSON_OR_NONE: Final = frozenset({list, dict, tuple, _NoneType})
_SURROGATE = re.compile("[\ud800-\udfff]")
# Put between the items of a list given to orjson: orjson writes a Fragment as it is and never writes a raw
# newline anywhere else (it escapes the ones in strings), so ",\n," in its output is exactly where one item
# ends and the next begins. This lets one orjson call serialise a whole page or column.
_ROW_BREAK: Final = orjson.Fragment(b"\n")


class RowLimitExceeded(PackagingError):
    """The rows do not fit in one Excel worksheet."""


def data_file_name(fmt: str) -> str:
    """The name of the data file inside the ZIP for a format, e.g. `resource.csv`."""
    _check_format(fmt)
    return f"resource.{fmt}"


def open_writer(
    fmt: str, columns: Sequence[str], out: BinaryIO, *, spool_dir: Path | None = None
) -> RowWriter:
    """A writer of rows with these column ids, in format `fmt`, onto the write-only binary stream `out`."""
    _check_format(fmt)
    columns = tuple(columns)
    if not columns:
        raise PackagingError("The resource has no columns to write.")
    if not all(isinstance(column, str) and column for column in columns):
        raise PackagingError(f"Every column id must be a non-empty string, not {list(columns)!r}.")
    if len(set(columns)) != len(columns):
        raise PackagingError(f"The resource has duplicate column ids: {list(columns)!r}.")
    if fmt == "csv":
        return _CsvWriter(columns, out)
    if fmt == "tsv":
        return _TsvWriter(columns, out)
    if fmt == "jsonl":
        return _JsonLinesWriter(columns, out)
    return _XlsxWriter(columns, out, spool_dir=spool_dir)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"Unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}.")


# --- values ----------------------------------------------------------------------------------------------


def _replace_lone_surrogates(text: str) -> str:
    """The text with each unpaired surrogate replaced by U+FFFD (and split pairs joined)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _replace_lone_surrogates(text).encode("utf-8")


def _json_default(value: Any) -> Any:
    """orjson's fallback for types it does not know: finite Decimals stay numbers, the rest become text."""
    if type(value) is NumberText:
        return orjson.Fragment(value.text)
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _jsonable(value: Any) -> Any:
    """A copy orjson can encode: ints beyond 64 bits as raw number text, lone surrogates replaced."""
    if isinstance(value, str):
        return _replace_lone_surrogates(value) if _SURROGATE.search(value) else value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else orjson.Fragment(int.__repr__(value))
    if isinstance(value, dict):
        return {_jsonable(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _json_bytes(value: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, default=_json_default, option=option)
    except TypeError:  # ints beyond 64 bits, lone surrogates, non-str keys: rare, so fixed up only then
        return orjson.dumps(_jsonable(value), default=_json_default, option=option | orjson.OPT_NON_STR_KEYS)


def _json_text(value: Any) -> str:
    return _json_bytes(value).decode("utf-8")


def _text_of_other(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, NumberText):
        return value.text
    if isinstance(value, (list, tuple, dict)):
        return _json_text(value)
    isoformat = getattr(value, "isoformat", None)  # dates and times, as orjson writes them in JSON lines
    if callable(isoformat):
        return str(isoformat())
    return str(value)


_TEXT_BY_TYPE: Final[dict[type, Callable[[Any], str]]] = {
    str: str,
    _NoneType: lambda _value: "",
    bool: lambda value: "true" if value else "false",
    int: int.__repr__,
    float: float.__repr__,
    NumberText: lambda value: value.text,
    list: _json_text,
    dict: _json_text,
    tuple: _json_text,
}


def text_of(value: Any) -> str:
    """The text form of one value in the csv and tsv formats (before any quoting or escaping)."""
    convert = _TEXT_BY_TYPE.get(type(value))
    return convert(value) if convert is not None else _text_of_other(value)


def _xlsx_number(text: str) -> float | None:
    """The number an Excel cell holds for this exact JSON number text, or None when it cannot hold it.

    A cell holds a double shown with at most 15 significant digits: the text fits when its value, rounded to
    15 significant digits, is the same decimal (so `1.50` fits, `0.1` fits, `12345678901234567890.1` does
    not), and is finite.
    """
    try:
        exact = Decimal(text)
    except ArithmeticError:
        return None
    if not exact.is_finite():
        return None
    if exact.is_zero():
        return 0.0
    digits = exact.normalize().as_tuple().digits
    if len(digits) > 15:
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def _utf16_length(text: str) -> int:
    """The length in UTF-16 code units, as Excel counts characters."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _orjson_formats_floats_like_repr() -> bool:
    """Whether this orjson writes floats as `repr` does, apart from the cases `_number_texts` redoes."""
    samples = [0.0, -0.0, 1.0, 0.1, 2.5, 100.0, 123.456, 1e15, 1e16, 1.5e16, 1e22, 0.0001, 0.0001234, 1e-10]
    samples += [1e-300, 5e-324, 1.7976931348623157e308, 123456789012345678.0, 9007199254740993.0, 1 / 3]
    return orjson.dumps(samples) == ("[" + ",".join(map(float.__repr__, samples)) + "]").encode()


# orjson formats a float as repr does (same shortest digits, same notation), except that it writes exponents
# -5 to -9 differently (0.00001 for 1e-05, 1e-7 for 1e-07) and NaN/infinity as null. It does so some 30 times
# faster, and a column of random floats is otherwise the slowest thing to write, so number columns go through
# orjson and only those texts are redone with repr. The probe keeps this honest should orjson ever change.
_FAST_NUMBERS: Final = _orjson_formats_floats_like_repr()


def _number_texts(column: Sequence[Any], types: set[type]) -> Sequence[str]:
    """The texts of a column of ints, floats, booleans and Nones."""
    if types == {_NoneType}:
        return [""] * len(column)
    if not _FAST_NUMBERS:
        return list(map(text_of, column))
    try:
        data = orjson.dumps(column)  # a JSON array: numbers, true, false and null, all ASCII
    except TypeError:  # an int beyond 64 bits
        return list(map(text_of, column))
    texts = data[1:-1].decode("ascii")
    has_null = b"null" in data
    if has_null and data.count(b"null") == column.count(None):  # every null is a None, none a NaN
        texts, has_null = texts.replace("null", ""), False
    split = texts.split(",")
    if has_null or (float in types and (b"e-" in data or b"0.0000" in data)):
        return [
            text_of(value) if text == "null" or "e-" in text or "0.0000" in text else text
            for text, value in zip(split, column, strict=True)
        ]
    return split


def _json_texts(column: Sequence[Any]) -> Sequence[str]:
    """The compact JSON texts of a column of lists, dicts and Nones (None is empty)."""
    items = list(chain.from_iterable(zip(column, repeat(_ROW_BREAK))))
    items.pop()
    try:
        data = orjson.dumps(items, default=_json_default)
    except TypeError:  # see _json_bytes
        return list(map(text_of, column))
    # A list or dict never becomes "null", so each "null" here was a None.
    return ["" if text == "null" else text for text in data[1:-1].decode("utf-8").split(",\n,")]


def _csv_needs_quotes(text: str) -> bool:
    return "," in text or '"' in text or "\n" in text or "\r" in text


def _tsv_needs_escapes(text: str) -> bool:
    return "\\" in text or "\t" in text or "\n" in text or "\r" in text


# --- output ----------------------------------------------------------------------------------------------


class _HashingSink:
    """Writes bytes to the real output while counting them and hashing them."""

    __slots__ = ("_digest", "_out", "bytes_written")

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._digest.update(data)
        written = self._out.write(data)
        if written is not None and written < len(data):  # a raw stream may take only part of a write
            view = memoryview(data)[written:]
            while view:
                taken = self._out.write(view)
                if not taken:
                    raise OSError("The output stream accepted none of the bytes written to it.")
                view = view[taken:]
        self.bytes_written += len(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class RowWriter(ABC):
    """Writes pages of rows in one format; `close()` finishes the file (it does not close `out`)."""

    format: str

    def __init__(self, columns: Sequence[str], out: BinaryIO) -> None:
        self.columns: tuple[str, ...] = tuple(columns)
        self.rows_written: int = 0
        self._sink = _HashingSink(out)
        self._closed = False

    @property
    def file_name(self) -> str:
        """The data file's name inside the ZIP."""
        return data_file_name(self.format)

    @property
    def sha256(self) -> str:
        """The hex sha256 of every byte written to `out` so far (the whole file after `close()`)."""
        return self._sink.hexdigest()

    @property
    def bytes_written(self) -> int:
        """How many bytes were written to `out` so far (the file's size after `close()`)."""
        return self._sink.bytes_written

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Write one page of rows, each a sequence of values in column order."""
        if self._closed:
            raise ValueError("This writer is closed.")
        if not rows:
            return
        lengths = set(map(len, rows))
        if lengths != {len(self.columns)}:
            index = next(i for i, row in enumerate(rows) if len(row) != len(self.columns))
            raise PackagingError(
                f"Row {self.rows_written + index + 1} has {len(rows[index])} values "
                f"but the resource has {len(self.columns)} columns."
            )
        self._write_page(rows)
        self.rows_written += len(rows)

    def close(self) -> None:
        """Finish the file; writes whatever is still pending to `out`. Idempotent."""
        if not self._closed:
            self._closed = True
            self._finish()

    def abort(self) -> None:
        """Give up on the file: release spool files without writing anything more to `out`."""
        self._closed = True

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @abstractmethod
    def _write_page(self, rows: Sequence[Sequence[Any]]) -> None: ...

    def _finish(self) -> None:  # noqa: B027 - the text formats have nothing pending
        pass


class _DelimitedWriter(RowWriter):
    """A text format of one line per row: turns each column of a page into texts, then joins them."""

    delimiter: str
    line_end: str
    needs_encoding: Callable[[str], bool]

    def __init__(self, columns: Sequence[str], out: BinaryIO) -> None:
        super().__init__(columns, out)
        self._write_lines([self.encode_fields(self.columns)])

    def _write_page(self, rows: Sequence[Sequence[Any]]) -> None:
        # The cyclic garbage collector paused: a page makes thousands of lists and tuples that all live
        # until it is written, which it would scan again and again for nothing.
        enabled = gc.isenabled()
        gc.disable()
        try:
            columns = [self._column_texts(column) for column in zip(*rows, strict=True)]
            self._write_lines(zip(*columns, strict=True))
        finally:
            if enabled:
                gc.enable()

    def _write_lines(self, lines: Iterable[Sequence[str]]) -> None:
        line_end = self.line_end
        self._sink.write(_utf8(line_end.join(map(self.delimiter.join, lines)) + line_end))

    def _column_texts(self, column: Sequence[Any]) -> Sequence[str]:
        types = set(map(type, column))
        if types <= _NUMBER_OR_NONE:  # digits, true, false, nan: never quoted nor escaped
            return _number_texts(column, types)
        if types <= _TEXT_OR_NONE:
            texts = ["" if value is None else value for value in column] if _NoneType in types else column
        elif types <= _JSON_OR_NONE:
            texts = _json_texts(column)
        else:
            texts = list(map(text_of, column))
        if self.needs_encoding("".join(texts)):
            return self.encode_fields(texts)
        return texts

    @staticmethod
    @abstractmethod
    def encode_fields(texts: Sequence[str]) -> list[str]:
        """The texts quoted or escaped as the format needs (most need nothing)."""


class _CsvWriter(_DelimitedWriter):
    """RFC 4180 CSV: minimal quoting, doubled quotes, CRLF line ends, UTF-8 without BOM."""

    format = "csv"
    delimiter = ","
    line_end = "\r\n"
    needs_encoding = staticmethod(_csv_needs_quotes)

    @staticmethod
    def encode_fields(texts: Sequence[str]) -> list[str]:
        """The texts as RFC 4180 fields (the test is inlined: this runs once per value of such a column)."""
        return [
            '"' + text.replace('"', '""') + '"'
            if "," in text or '"' in text or "\n" in text or "\r" in text
            else text
            for text in texts
        ]

    def _column_texts(self, column: Sequence[Any]) -> Sequence[str]:
        texts = super()._column_texts(column)
        if len(self.columns) == 1:
            # A record of one empty field would be a blank line, which readers skip; RFC 4180 quotes it.
            return [text or '""' for text in texts]
        return texts


class _TsvWriter(_DelimitedWriter):
    """Tab-separated values with backslash escapes instead of quoting, LF line ends, UTF-8 without BOM."""

    format = "tsv"
    delimiter = "\t"
    line_end = "\n"
    needs_encoding = staticmethod(_tsv_needs_escapes)

    @staticmethod
    def encode_fields(texts: Sequence[str]) -> list[str]:
        """The texts with backslashes, tabs, newlines and CRs escaped (the test is inlined, as for csv)."""
        return [
            text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            if "\\" in text or "\t" in text or "\n" in text or "\r" in text
            else text
            for text in texts
        ]


class _JsonLinesWriter(RowWriter):
    """JSON lines: one object per row, keys in column order, LF after each, encoded by orjson."""

    format = "jsonl"

    def _write_page(self, rows: Sequence[Sequence[Any]]) -> None:
        # One orjson call per page, not per row: a call per row is several times slower, mostly for
        # allocating a bytes object per row.
        objects = map(dict, map(zip, repeat(self.columns), rows))
        items = list(chain.from_iterable(zip(objects, repeat(_ROW_BREAK))))
        items.pop()
        try:
            data = orjson.dumps(items, default=_json_default)[1:-1].replace(b",\n,", b"\n") + b"\n"
        except TypeError:  # a value orjson refuses as it is (see _jsonable): redo this page the careful way
            data = b"".join(
                _json_bytes(dict(zip(self.columns, row, strict=True)), orjson.OPT_APPEND_NEWLINE)
                for row in rows
            )
        self._sink.write(data)


class _XlsxWriter(RowWriter):
    """An Excel workbook with one sheet "Data", streamed to a spool file and copied into `out` on close."""

    format = "xlsx"

    def __init__(self, columns: Sequence[str], out: BinaryIO, *, spool_dir: Path | None = None) -> None:
        super().__init__(columns, out)
        if len(self.columns) > XLSX_MAX_COLUMNS:
            raise PackagingError(
                f"The resource has {len(self.columns):,} columns but an Excel worksheet holds at most "
                f"{XLSX_MAX_COLUMNS:,}. Ask for the csv format instead."
            )
        handle, name = tempfile.mkstemp(prefix="rows-", suffix=".xlsx", dir=spool_dir)
        os.close(handle)
        self._path = Path(name)
        try:
            self._workbook = xlsxwriter.Workbook(
                name,
                {
                    "constant_memory": True,
                    "strings_to_formulas": False,
                    "strings_to_urls": False,
                    "strings_to_numbers": False,
                    # zipfile only uses ZIP64 for a part that needs it (over 4 GiB); without it such a
                    # workbook could not be written at all.
                    "use_zip64": True,
                    "tmpdir": None if spool_dir is None else str(spool_dir),
                },
            )
            self._sheet = self._workbook.add_worksheet("Data")
            bold = self._workbook.add_format({"bold": True})
            for index, column in enumerate(self.columns):
                self._sheet.write_string(0, index, self._cell_text(column, 0, index), bold)
        except BaseException:
            self.abort()
            raise
        self._next_row = 1

    def _write_page(self, rows: Sequence[Sequence[Any]]) -> None:
        if self._next_row + len(rows) > XLSX_MAX_ROWS:
            raise RowLimitExceeded(
                f"This resource has more rows than fit in an Excel worksheet, which holds at most "
                f"{XLSX_MAX_ROWS:,} rows including the header ({XLSX_MAX_ROWS - 1:,} rows of data). "
                "Ask for the csv format instead, which has no row limit."
            )
        sheet = self._sheet
        write_string = sheet.write_string
        write_number = sheet.write_number
        for row in rows:
            row_number = self._next_row
            for column, value in enumerate(row):
                kind = type(value)
                if kind is str:
                    if value:  # an empty string is an empty cell, as None is
                        write_string(row_number, column, self._cell_text(value, row_number, column))
                elif value is None:
                    continue
                elif kind is int:
                    if -XLSX_EXACT_INT_LIMIT < value < XLSX_EXACT_INT_LIMIT:
                        write_number(row_number, column, value)
                    else:
                        write_string(row_number, column, int.__repr__(value))
                elif kind is float:
                    if math.isfinite(value):
                        write_number(row_number, column, value)
                    else:
                        write_string(row_number, column, float.__repr__(value))
                elif kind is bool:
                    sheet.write_boolean(row_number, column, value)
                elif kind is NumberText:
                    number = _xlsx_number(value.text)
                    if number is None:
                        write_string(row_number, column, value.text)
                    else:
                        write_number(row_number, column, number)
                else:
                    text = self._cell_text(text_of(value), row_number, column)
                    write_string(row_number, column, text)
            self._next_row = row_number + 1

    def _cell_text(self, text: str, row_number: int, column: int) -> str:
        """The text as xlsxwriter should be given it; refuses text longer than an Excel cell holds."""
        if len(text) > XLSX_MAX_CELL_CHARS // 2 and _utf16_length(text) > XLSX_MAX_CELL_CHARS:
            raise PackagingError(
                f"{self._where(row_number, column)} is longer than the {XLSX_MAX_CELL_CHARS:,} characters an "
                "Excel cell holds. Ask for the csv format instead, which keeps the whole value."
            )
        if not text.isascii() and _SURROGATE.search(text):
            text = _replace_lone_surrogates(text)
        if text.startswith("<r>") and text.endswith("</r>"):
            # In constant_memory mode xlsxwriter copies a string that starts with "<r>" and ends with "</r>"
            # into the sheet's XML unescaped, taking it for rich-string markup it built itself, which would
            # corrupt the workbook. So such a value is given to it as exactly that: one escaped text run.
            # (xlsxwriter still applies its _xHHHH_ escapes to the whole.)
            escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            text = f'<r><t xml:space="preserve">{escaped}</t></r>'
            if _utf16_length(text) > XLSX_MAX_CELL_CHARS:  # xlsxwriter would cut the markup short
                raise PackagingError(
                    f"{self._where(row_number, column)} is too long to store in an Excel cell as it is. "
                    "Ask for the csv format instead."
                )
        return text

    def _where(self, row_number: int, column: int) -> str:
        if row_number == 0:
            return f"The column id {self.columns[column]!r}"
        return f"The value of column {self.columns[column]!r} in row {row_number}"

    def _finish(self) -> None:
        try:
            try:
                self._workbook.close()
            except FileSizeError:
                raise PackagingError(
                    "The Excel workbook would be too large to write. Ask for the csv format instead."
                ) from None
            with open(self._path, "rb") as spooled:
                while chunk := spooled.read(COPY_CHUNK):
                    self._sink.write(chunk)
        finally:
            self._discard_spool()

    def abort(self) -> None:
        """Give up on the workbook: remove its spool files; nothing more is written to `out`."""
        self._closed = True
        self._discard_spool()

    def _discard_spool(self) -> None:
        sheet = getattr(self, "_sheet", None)
        # xlsxwriter removes its constant_memory row file only while closing the workbook; after a failure
        # (or an abort) it is still on disk.
        if sheet is not None:
            row_file = getattr(sheet, "row_data_fh", None)
            if row_file is not None and not row_file.closed:
                row_file.close()
            row_file_name = getattr(sheet, "row_data_filename", None)
            if row_file_name:
                Path(row_file_name).unlink(missing_ok=True)
        self._path.unlink(missing_ok=True)
