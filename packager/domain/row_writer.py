"""The row writer every format shares: `RowWriter`, the formats' names and data file names, and the sink that
counts and hashes every byte written.

A format is a subclass of `RowWriter` in its own module (`text_writers`, `jsonl_writer`, `xlsx_writer`);
`packager.domain.writers.open_writer` picks one.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any, Final

from packager.core.errors import PackagingError

FORMATS: Final = ("csv", "tsv", "jsonl", "xlsx")

COPY_CHUNK: Final = 1024 * 1024


def data_file_name(fmt: str) -> str:
    """The name of the data file inside the ZIP for a format, e.g. `resource.csv`."""
    check_format(fmt)
    return f"resource.{fmt}"


def check_format(fmt: str) -> None:
    """Refuse a format not in `FORMATS` (a ValueError: the request's validation lets none through)."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}.")


class _HashingSink:
    """Writes bytes to the real output while counting them and hashing them."""

    __slots__ = ("_digest", "_out", "bytes_written")

    def __init__(self, out: IO[bytes]) -> None:
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

    def __init__(self, columns: Sequence[str], out: IO[bytes]) -> None:
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
