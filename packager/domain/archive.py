"""Writing a data file and its manifest into a ZIP as rows arrive: streamed, ZIP64-capable.

Blocking (file and compression) work: call these methods from a thread, one at a time.
"""

from __future__ import annotations

import contextlib
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from packager.domain.dwc import DwcArchiveBuilder, DwcConfig
from packager.domain.writers import RowWriter, data_file_name, open_writer
from packager.domain.zip_entries import PackageZipFile

# The file the original added to an archive asked `for_gbif`: NHM's GBIF export picks its archive by it.
GBIF_MARKER_FILE = "gbif.json"


@dataclass(frozen=True, slots=True)
class DataFile:
    """The data file inside a finished archive."""

    name: str
    rows: int
    bytes: int
    sha256: str


class ZipPacker:
    """One archive under construction: `resource.<fmt>` streamed in, then `manifest.json`."""

    def __init__(
        self, path: Path, fmt: str, columns: Sequence[str], *, spool_dir: Path, compresslevel: int = 6
    ) -> None:
        self._zip = PackageZipFile(
            path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=compresslevel
        )
        self.name = data_file_name(fmt)
        self._entry = self._zip.open(self.name, "w", force_zip64=True)
        self._writer: RowWriter = open_writer(fmt, columns, self._entry, spool_dir=spool_dir)

    @property
    def bytes_written(self) -> int:
        """Uncompressed bytes of the data file so far."""
        return int(getattr(self._writer, "bytes_written", 0))

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Append one page of rows."""
        self._writer.write_rows(rows)

    def finish(self, manifest: dict[str, Any]) -> DataFile:
        """Close the data file, add `manifest.json` (completed with the file's facts) and close the ZIP."""
        self._writer.close()
        self._entry.close()
        data = DataFile(
            name=self.name,
            rows=self._writer.rows_written,
            bytes=self._writer.bytes_written,
            sha256=self._writer.sha256,
        )
        manifest = {
            **manifest,
            "row_count": data.rows,
            "data_file": {"name": data.name, "bytes": data.bytes, "sha256": data.sha256},
        }
        self._zip.writestr("manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        self._zip.close()
        return data

    def abort(self) -> None:
        """Release the files of an archive that will not be finished."""
        for close in (self._writer.abort, self._entry.close, self._zip.close):
            # The partial file is discarded anyway; this only releases descriptors and spool files.
            with contextlib.suppress(Exception):
                close()


class DwcPacker:
    """A Darwin Core Archive under construction, with the same interface as `ZipPacker`.

    With `for_gbif`, as the original did, the archive also holds `gbif.json` (`{"time": <Unix time>}`), and
    the manifest says what GBIF's offline checks found in the core rows (`gbif_checks`).
    """

    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        config: DwcConfig,
        *,
        spool_dir: Path,
        eml: str,
        for_gbif: bool = False,
        compresslevel: int = 6,
    ) -> None:
        self._zip = PackageZipFile(
            path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=compresslevel
        )
        self._eml = eml
        self._for_gbif = for_gbif
        try:
            self._builder = DwcArchiveBuilder(
                self._zip, columns, config, spool_dir=spool_dir, gbif_checks=for_gbif
            )
        except BaseException:
            self._zip.close()
            raise

    @property
    def bytes_written(self) -> int:
        """Uncompressed bytes of the data files so far."""
        return int(self._builder.bytes_written)

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Append one page of rows."""
        self._builder.write_rows(rows)

    def finish(self, manifest: dict[str, Any]) -> DataFile:
        """Write the extension files, meta.xml, eml.xml and `manifest.json`, and close the ZIP."""
        extra = {GBIF_MARKER_FILE: orjson.dumps({"time": time.time()})} if self._for_gbif else None
        summary = self._builder.finish(self._eml or None, extra_files=extra)
        core = summary.files[0]
        manifest = {
            **manifest,
            "row_count": summary.core_rows,
            "data_file": {"name": core.name, "bytes": core.bytes, "sha256": core.sha256},
            "files": [
                {"name": f.name, "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256} for f in summary.files
            ],
        }
        if summary.gbif_checks is not None:
            manifest["gbif_checks"] = dict(summary.gbif_checks)
        self._zip.writestr("manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        self._zip.close()
        return DataFile(name=core.name, rows=summary.core_rows, bytes=summary.bytes, sha256=core.sha256)

    def abort(self) -> None:
        """Release the files of an archive that will not be finished."""
        for close in (self._builder.abort, self._zip.close):
            with contextlib.suppress(Exception):
                close()
