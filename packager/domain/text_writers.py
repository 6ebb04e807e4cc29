"""The delimited text formats, csv (RFC 4180) and tsv (backslash escapes): one line per row, built a column at
a time (see the module docstring of `packager.domain.writers` for the exact bytes)."""

from __future__ import annotations

import gc
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from packager.domain.row_writer import RowWriter
from packager.domain.value_text import column_texts, utf8


def _csv_needs_quotes(text: str) -> bool:
    return "," in text or '"' in text or "\n" in text or "\r" in text


def _tsv_needs_escapes(text: str) -> bool:
    return "\\" in text or "\t" in text or "\n" in text or "\r" in text


class DelimitedWriter(RowWriter):
    """A text format of one line per row: turns each column of a page into texts, then joins them."""

    delimiter: str
    line_end: str
    needs_encoding: Callable[[str], bool]

    def __init__(self, columns: Sequence[str], out: IO[bytes]) -> None:
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
        self._sink.write(utf8(line_end.join(map(self.delimiter.join, lines)) + line_end))

    def _column_texts(self, column: Sequence[Any]) -> Sequence[str]:
        texts = column_texts(column)
        if self.needs_encoding("".join(texts)):
            return self.encode_fields(texts)
        return texts

    @staticmethod
    @abstractmethod
    def encode_fields(texts: Sequence[str]) -> list[str]:
        """The texts quoted or escaped as the format needs (most need nothing)."""


class CsvWriter(DelimitedWriter):
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


class TsvWriter(DelimitedWriter):
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
