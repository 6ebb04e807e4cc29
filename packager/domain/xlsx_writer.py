"""The xlsx format: one worksheet streamed by xlsxwriter into a spool file, and Excel's limits (rows, columns,
characters in a cell, digits in a number), which it enforces rather than truncate a value or a row."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final

import xlsxwriter
from xlsxwriter.exceptions import FileSizeError

from packager.core.errors import PackagingError
from packager.domain.numbers import NumberText
from packager.domain.row_writer import COPY_CHUNK, RowWriter
from packager.domain.value_text import SURROGATE, replace_lone_surrogates, text_of

XLSX_MAX_ROWS = 1_048_576
"""Rows in one Excel worksheet, the header row included."""
XLSX_MAX_COLUMNS: Final = 16_384
XLSX_MAX_CELL_CHARS: Final = 32_767
"""Characters (UTF-16 code units) in one Excel cell."""
XLSX_EXACT_INT_LIMIT: Final = 10**15
"""Ints at least this large in magnitude have more digits than Excel keeps; they are written as text."""


class RowLimitExceeded(PackagingError):
    """The rows do not fit in one Excel worksheet."""


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


class XlsxWriter(RowWriter):
    """An Excel workbook with one sheet "Data", streamed to a spool file and copied into `out` on close."""

    format = "xlsx"

    def __init__(self, columns: Sequence[str], out: IO[bytes], *, spool_dir: Path | None = None) -> None:
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
        if not text.isascii() and SURROGATE.search(text):
            text = replace_lone_surrogates(text)
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
