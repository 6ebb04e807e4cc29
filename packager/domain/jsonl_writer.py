"""The JSON lines format: one JSON object per row, keys in column order, a page encoded by one orjson call."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain, repeat
from typing import Any

import orjson

from packager.domain.row_writer import RowWriter
from packager.domain.value_text import ROW_BREAK, json_bytes, json_default


class JsonLinesWriter(RowWriter):
    """JSON lines: one object per row, keys in column order, LF after each, encoded by orjson."""

    format = "jsonl"

    def _write_page(self, rows: Sequence[Sequence[Any]]) -> None:
        # One orjson call per page, not per row: a call per row is several times slower, mostly for
        # allocating a bytes object per row.
        objects = map(dict, map(zip, repeat(self.columns), rows))
        items = list(chain.from_iterable(zip(objects, repeat(ROW_BREAK))))
        items.pop()
        try:
            data = orjson.dumps(items, default=json_default)[1:-1].replace(b",\n,", b"\n") + b"\n"
        except TypeError:  # a value orjson refuses as it is: redo this page the careful way (json_bytes)
            data = b"".join(
                json_bytes(dict(zip(self.columns, row, strict=True)), orjson.OPT_APPEND_NEWLINE)
                for row in rows
            )
        self._sink.write(data)
