"""Writing a Darwin Core Archive into an open ZIP, one page of rows at a time, with flat memory.

`DwcArchiveBuilder` writes the core file straight into the `zipfile.ZipFile`, spools extension rows to
temporary files (a ZIP has one entry open for writing at a time) and, on `finish`, copies them in, then adds
`meta.xml` and `eml.xml`. Values are written as the other formats write them (`domain.writers.text_of`).
Blocking code: run it in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Final

import orjson

from packager.core.errors import PackagingError
from packager.domain.dwc.config import DwcConfig, ExtensionFieldSpec
from packager.domain.dwc.gbif_checks import GbifChecks
from packager.domain.dwc.layout import (
    EML_FILE,
    FIELDS_TERMINATED_BY,
    LINES_TERMINATED_BY,
    META_FILE,
    DataFileLayout,
    MappedTerm,
    eml_bytes,
    meta_xml,
    plan_archive,
)
from packager.domain.writers import COPY_CHUNK, text_of

_NEEDS_QUOTES: Final = (",", '"', "\n", "\r")


# --- values -------------------------------------------------------------------------------------------------


def _decoded(value: Any) -> Any:
    """The value, or the JSON it holds when it is a string starting with `{` or `[` that parses."""
    if type(value) is str and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _object_text(row: Sequence[Any], sources: Sequence[tuple[str, int]]) -> str:
    """A JSON object of {column: value} for the non-null values, or "" when there are none."""
    values = {name: _decoded(row[index]) for name, index in sources if row[index] is not None}
    return text_of(values) if values else ""


def _quote(text: str) -> str:
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _quote_column(texts: list[str]) -> list[str]:
    joined = "".join(texts)
    if any(mark in joined for mark in _NEEDS_QUOTES):
        return [_quote(text) for text in texts]
    return texts


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: written as U+FFFD, as packager.domain.writers does
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode("utf-8")


def _blank(value: Any) -> bool:
    return value is None or (type(value) is str and not value.strip())


class _ItemCounter:
    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0


def _extension_items(value: Any, spec: ExtensionFieldSpec, counter: _ItemCounter) -> Iterator[dict[str, Any]]:
    """The objects an extension field's value holds, as {term name: value} with the defaults filled in."""
    if _blank(value):
        return
    if type(value) is str:
        value = _decoded(value.strip())
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if _blank(item):
            continue
        if type(item) is str:
            item = _decoded(item.strip())
        if isinstance(item, Mapping):
            row = _object_row(item, spec)
            if row is not None:
                yield row
            elif any(not _blank(v) for v in item.values()):
                counter.dropped += 1
        elif type(item) is str and spec.text_field is not None:
            for part in item.split("|"):
                if part.strip():
                    yield {**spec.defaults, spec.text_field: part.strip()}
        else:
            counter.dropped += 1


def _object_row(item: Mapping[Any, Any], spec: ExtensionFieldSpec) -> dict[str, Any] | None:
    """One object as {term name: value}: known keys (or mapped ones) over the defaults; None if none."""
    row = dict(spec.defaults)
    known = False
    for key, value in item.items():
        if not isinstance(key, str) or _blank(value):
            continue
        name = spec.mappings.get(key, key)
        if name in spec.names:
            row[name] = value
            known = True
    return row if known else None


# --- output -------------------------------------------------------------------------------------------------


class _DataFile:
    """One CSV data file being written: a header, then records; counts and hashes what it writes."""

    def __init__(
        self, layout: DataFileLayout, out: IO[bytes] | None = None, *, spool_dir: Path | None = None
    ) -> None:
        self.layout = layout
        self.rows = 0
        self.bytes = 0
        self._digest = hashlib.sha256()
        self._out = out
        self._spool_dir = spool_dir
        self.spool_path: Path | None = None
        self._index = {term.name: position for position, term in enumerate(layout.terms, start=1)}
        if out is not None:
            self._write_header()

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._digest.hexdigest()

    def _write_header(self) -> None:
        self._write(FIELDS_TERMINATED_BY.join(map(_quote, self.layout.header)) + LINES_TERMINATED_BY)

    def _write(self, text: str) -> None:
        if self._out is None:
            handle, name = tempfile.mkstemp(prefix="dwc-", suffix=".csv", dir=self._spool_dir)
            self.spool_path = Path(name)
            self._out = os.fdopen(handle, "w+b")
            self._write_header()
        data = _utf8(text)
        self._digest.update(data)
        self._out.write(data)
        self.bytes += len(data)

    def write_columns(self, columns: list[list[str]]) -> None:
        """Write records given column by column (every column already text)."""
        quoted = [_quote_column(column) for column in columns]
        end = LINES_TERMINATED_BY
        self._write(end.join(map(FIELDS_TERMINATED_BY.join, zip(*quoted, strict=True))) + end)
        self.rows += len(columns[0])

    def record(self, core_id: str, values: Mapping[str, Any]) -> list[str]:
        """A record of this file: the core id, then each term's value as text (empty where absent)."""
        fields = [core_id] + [""] * len(self.layout.terms)
        index = self._index
        for name, value in values.items():
            position = index.get(name)
            if position is not None:
                fields[position] = text_of(value)
        return fields

    def write_records(self, records: list[list[str]]) -> None:
        """Write records given row by row."""
        if records:
            end = LINES_TERMINATED_BY
            lines = (FIELDS_TERMINATED_BY.join(map(_quote, record)) for record in records)
            self._write(end.join(lines) + end)
            self.rows += len(records)

    def copy_spool(self, out: IO[bytes]) -> None:
        """Copy the spooled file into `out`, a chunk at a time, and remove it."""
        assert self._out is not None
        self._out.flush()
        self._out.seek(0)
        shutil.copyfileobj(self._out, out, COPY_CHUNK)
        self.discard()

    def discard(self) -> None:
        """Close and remove the spool file, if any."""
        if self.spool_path is not None and self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self.spool_path.unlink(missing_ok=True)
            self.spool_path = None


@dataclass(frozen=True, slots=True)
class DwcFile:
    """One file written into the archive; `rows` counts data rows (None for meta.xml and eml.xml)."""

    name: str
    rows: int | None
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class DwcSummary:
    """What `finish` wrote: every file in ZIP order (core, extensions, meta.xml, eml.xml)."""

    core_rows: int
    files: tuple[DwcFile, ...]
    dropped_values: Mapping[str, int]
    """Per extension-field column: values or objects that could not become rows (e.g. no known key)."""
    gbif_checks: Mapping[str, Any] | None = None
    """What GBIF's offline checks found in the core rows (`gbif_checks.GbifChecks.result`), if they ran."""

    @property
    def bytes(self) -> int:
        """Uncompressed bytes of every file together."""
        return sum(item.bytes for item in self.files)

    def file(self, name: str) -> DwcFile | None:
        """The file of that name, if it was written."""
        return next((item for item in self.files if item.name == name), None)


class DwcArchiveBuilder:
    """Writes a Darwin Core Archive into an open ZipFile, one page of rows at a time.

    The core file's entry stays open on `zip_file` until `finish` or `abort`: write no other entry meanwhile.
    `finish` leaves `zip_file` open (the caller may add a manifest) and closing it is the caller's job.
    """

    def __init__(
        self,
        zip_file: zipfile.ZipFile,
        columns: Sequence[str],
        config: DwcConfig,
        *,
        spool_dir: Path,
        gbif_checks: bool = False,
    ) -> None:
        """With `gbif_checks`, the core rows are checked as GBIF's validator would (see `DwcSummary`)."""
        self.layout = plan_archive(columns, config.schema())
        self._zip = zip_file
        self._spool_dir = spool_dir
        self._columns = self.layout.columns
        self._closed = False
        self._dropped = {
            spec.column: _ItemCounter() for layout in self.layout.extensions for _, spec in layout.fields
        }
        self._entry: IO[bytes] = zip_file.open(self.layout.core.file_name, "w", force_zip64=True)
        try:
            self._core = _DataFile(self.layout.core, self._entry)
        except BaseException:
            self._entry.close()
            raise
        self._extensions = [_DataFile(layout, spool_dir=spool_dir) for layout in self.layout.extensions]
        self._core_sources = [self._sources(item) for item in self.layout.core.mapped]
        self._extension_sources = [
            [self._sources(item) for item in layout.mapped] for layout in self.layout.extensions
        ]
        core_terms = ["id", *(name for name, _, _ in self._core_sources)]
        self._checks = GbifChecks(core_terms, spool_dir=spool_dir) if gbif_checks else None

    def _sources(self, item: MappedTerm) -> tuple[str, int, list[tuple[str, int]] | None]:
        """A mapped term as (term name, its first column, all its (column, position) when a JSON object)."""
        objects = [(self._columns[index], index) for index in item.sources] if item.as_object else None
        return item.term.name, item.sources[0], objects

    @property
    def rows_written(self) -> int:
        """Core rows written so far."""
        return self._core.rows

    @property
    def bytes_written(self) -> int:
        """Uncompressed bytes of every data file so far (extension files counted as spooled)."""
        return self._core.bytes + sum(item.bytes for item in self._extensions)

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Write one page of rows, each a sequence of values in `columns` order."""
        if self._closed:
            raise ValueError("This archive is finished or aborted.")
        if not rows:
            return
        width = len(self._columns)
        for number, row in enumerate(rows):
            if len(row) != width:
                raise PackagingError(
                    f"Row {self.rows_written + number + 1} has {len(row)} values "
                    f"but the resource has {width} columns."
                )
        id_index = self.layout.id_index
        ids = [text_of(row[id_index]) for row in rows]
        if "" in ids:
            number = self.rows_written + ids.index("") + 1
            raise PackagingError(
                f"Row {number} has no value in {self._columns[id_index]!r}, the column used as the "
                "Darwin Core record id."
            )
        columns = [ids]
        for _name, index, objects in self._core_sources:
            if objects is None:
                columns.append([text_of(row[index]) for row in rows])
            else:
                columns.append([_object_text(row, objects) for row in rows])
        self._core.write_columns(columns)
        if self._checks is not None:
            self._checks.observe(columns)
        for data_file, sources in zip(self._extensions, self._extension_sources, strict=True):
            self._write_extension_rows(data_file, sources, rows, ids)

    def _write_extension_rows(
        self,
        data_file: _DataFile,
        sources: list[tuple[str, int, list[tuple[str, int]] | None]],
        rows: Sequence[Sequence[Any]],
        ids: list[str],
    ) -> None:
        records: list[list[str]] = []
        for row, core_id in zip(rows, ids, strict=True):
            if sources:
                values = {
                    name: row[index] if objects is None else _object_text(row, objects)
                    for name, index, objects in sources
                }
                if any(not _blank(value) for value in values.values()):
                    records.append(data_file.record(core_id, values))
            for index, spec in data_file.layout.fields:
                counter = self._dropped[spec.column]
                records.extend(
                    data_file.record(core_id, item) for item in _extension_items(row[index], spec, counter)
                )
        data_file.write_records(records)

    def finish(self, eml: str | None, *, extra_files: Mapping[str, bytes] | None = None) -> DwcSummary:
        """Write the extension files, meta.xml, eml.xml (unless `eml` is None or blank) and `extra_files`
        (name -> content, e.g. the original's `gbif.json`) into the ZIP."""
        if self._closed:
            raise ValueError("This archive is finished or aborted.")
        eml_data = eml_bytes(eml) if eml is not None and eml.strip() else None
        self._closed = True
        self._entry.close()
        files = [DwcFile(self._core.layout.file_name, self._core.rows, self._core.bytes, self._core.sha256)]
        written: list[DataFileLayout] = []
        for data_file in self._extensions:
            if data_file.rows == 0:
                continue
            with self._zip.open(data_file.layout.file_name, "w", force_zip64=True) as entry:
                data_file.copy_spool(entry)
            written.append(data_file.layout)
            files.append(
                DwcFile(data_file.layout.file_name, data_file.rows, data_file.bytes, data_file.sha256)
            )
        meta = meta_xml(self.layout.core, written, metadata=EML_FILE if eml_data is not None else None)
        written_last: list[tuple[str, bytes | None]] = [
            (META_FILE, meta.encode("utf-8")),
            (EML_FILE, eml_data),
        ]
        written_last += (extra_files or {}).items()
        for name, data in written_last:
            if data is not None:
                self._zip.writestr(name, data)
                files.append(DwcFile(name, None, len(data), hashlib.sha256(data).hexdigest()))
        return DwcSummary(
            core_rows=self._core.rows,
            files=tuple(files),
            dropped_values=MappingProxyType({column: item.dropped for column, item in self._dropped.items()}),
            gbif_checks=self._checks.result() if self._checks is not None else None,
        )

    def abort(self) -> None:
        """Give up: close the core entry and remove the spool files (the ZIP itself is the caller's)."""
        self._closed = True
        with contextlib.suppress(Exception):
            self._entry.close()
        for data_file in self._extensions:
            data_file.discard()
        if self._checks is not None:
            self._checks.discard()
