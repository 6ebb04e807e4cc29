"""The checks GBIF's data validator applies that can run offline, over the core rows of a GBIF-ready archive.

`GbifChecks` sees every page of core values as the builder writes them (text, column by column) and counts:

- `occurrence_id_missing`: rows without an `occurrenceID` (every row when the core has no such column);
- `occurrence_id_duplicates`: rows whose `occurrenceID` an earlier row already has;
- `basis_of_record_invalid`: rows whose `basisOfRecord` is empty or not a term of GBIF's vocabulary (GBIF
  requires it; it reads the names without regard to case, spaces or underscores, as is done here);
- `event_date_invalid`: rows whose non-empty `eventDate` is not an ISO 8601 date, date-time or interval;
- `coordinates_out_of_range`: rows whose `decimalLatitude` is not a number in [-90, 90] or whose
  `decimalLongitude` is not one in [-180, 180] (an empty value is not counted).

`examples` holds the first few findings (row number in the core file, the term, the value). The result is
written into `manifest.json`; a finding never fails the job.

Memory stays flat in the number of rows: occurrence ids are kept as 8-byte BLAKE2b digests in runs of
`run_size`, each sorted and spilled to a file in the spool directory when full, and merged at the end to
count repeats. Two different ids share a digest with a probability of about n^2 / 2^65 (1 in 3,700 for 100
million rows), which would count one false duplicate.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import math
import os
import re
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Final

# GBIF's basisOfRecord vocabulary (https://rs.gbif.org/vocabulary/dwc/basis_of_record.xml), folded as GBIF
# compares them: lower case, no spaces or underscores.
BASIS_OF_RECORD: Final = frozenset(
    name.lower()
    for name in (
        "PreservedSpecimen",
        "FossilSpecimen",
        "LivingSpecimen",
        "MaterialSample",
        "MaterialEntity",
        "MaterialCitation",
        "HumanObservation",
        "MachineObservation",
        "Observation",
        "Occurrence",
    )
)
MAX_EXAMPLES: Final = 20
RUN_SIZE: Final = 1 << 19  # digests per sorted run: 4 MiB as an array, about 20 MiB while sorted
_READ_CHUNK: Final = 1 << 16

_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_TIME = re.compile(r"(\d{2})(?::(\d{2})(?::(\d{2})(?:[.,]\d+)?)?)?(Z|[+-]\d{2}(?::?\d{2})?)?")
_FOLD = re.compile(r"[\s_]+")


def _instant_is_iso(text: str) -> bool:
    day, separator, clock = text.partition("T")
    found = _DATE.fullmatch(day)
    if found is None:
        return False
    year, month, dom = found.groups()
    if separator and dom is None:
        return False  # a time needs a full date
    try:
        date(int(year), int(month or 1), int(dom or 1))
    except ValueError:
        return False
    if not separator:
        return True
    timed = _TIME.fullmatch(clock)
    if timed is None:
        return False
    hours, minutes, seconds, zone = timed.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return False
    return (
        zone is None or zone == "Z" or (int(zone[1:3]) <= 14 and int(zone[-2:] if len(zone) > 3 else 0) < 60)
    )


def event_date_is_iso(text: str) -> bool:
    """True for an ISO 8601 date, date-time or interval (`2007-03-01/2007-03-11`, `2007-11-13/15`)."""
    text = text.strip()
    parts = text.split("/")
    if len(parts) == 1:
        return _instant_is_iso(text)
    if len(parts) != 2 or not _instant_is_iso(parts[0]):
        return False
    start, end = parts
    if _instant_is_iso(end):
        return True
    # An end written without its leading parts, which it shares with the start.
    return 0 < len(end) < len(start) and _instant_is_iso(start[: len(start) - len(end)] + end)


def basis_of_record_is_valid(text: str) -> bool:
    """True for a term of GBIF's basisOfRecord vocabulary, compared as GBIF does."""
    return _FOLD.sub("", text).lower() in BASIS_OF_RECORD


def _in_range(text: str, limit: float) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and -limit <= value <= limit


def _digest(text: str) -> int:
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class GbifChecks:
    """Counts what GBIF's validator would flag in the core rows; flat memory (see the module docstring)."""

    def __init__(self, terms: Sequence[str], *, spool_dir: Path, run_size: int = RUN_SIZE) -> None:
        """`terms` names the core's columns in order (the first is the record id)."""
        self._positions = {name: index for index, name in enumerate(terms)}
        self._spool_dir = spool_dir
        self._run_size = run_size
        self._run = array("Q")
        self._spills: list[Path] = []
        self.rows = 0
        self.counts = dict.fromkeys(
            (
                "occurrence_id_missing",
                "occurrence_id_duplicates",
                "basis_of_record_invalid",
                "event_date_invalid",
                "coordinates_out_of_range",
            ),
            0,
        )
        self.examples: list[dict[str, Any]] = []

    def _flag(self, check: str, row: int, term: str, value: str) -> None:
        self.counts[check] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"check": check, "row": row, "term": term, "value": value})

    def _column(self, columns: Sequence[Sequence[str]], term: str) -> Sequence[str] | None:
        position = self._positions.get(term)
        return None if position is None else columns[position]

    def observe(self, columns: Sequence[Sequence[str]]) -> None:
        """Check one page of core rows, given column by column as the text written."""
        if not columns or not columns[0]:
            return
        first = self.rows + 1
        count = len(columns[0])
        self.rows += count
        ids = self._column(columns, "occurrenceID")
        if ids is None:
            self.counts["occurrence_id_missing"] += count
        else:
            for number, value in enumerate(ids, start=first):
                if value.strip():
                    self._remember(value.strip())
                else:
                    self._flag("occurrence_id_missing", number, "occurrenceID", value)
        basis = self._column(columns, "basisOfRecord")
        if basis is None:
            self.counts["basis_of_record_invalid"] += count
        else:
            for number, value in enumerate(basis, start=first):
                if not basis_of_record_is_valid(value):
                    self._flag("basis_of_record_invalid", number, "basisOfRecord", value)
        dates = self._column(columns, "eventDate")
        for number, value in enumerate(dates or (), start=first):
            if value.strip() and not event_date_is_iso(value):
                self._flag("event_date_invalid", number, "eventDate", value)
        self._check_coordinates(columns, first)

    def _check_coordinates(self, columns: Sequence[Sequence[str]], first: int) -> None:
        latitudes = self._column(columns, "decimalLatitude")
        longitudes = self._column(columns, "decimalLongitude")
        count = len(columns[0])
        for offset in range(count):
            for term, values, limit in (
                ("decimalLatitude", latitudes, 90.0),
                ("decimalLongitude", longitudes, 180.0),
            ):
                value = values[offset].strip() if values is not None else ""
                if value and not _in_range(value, limit):
                    self._flag("coordinates_out_of_range", first + offset, term, value)
                    break

    def _remember(self, occurrence_id: str) -> None:
        self._run.append(_digest(occurrence_id))
        if len(self._run) >= self._run_size:
            self._spill()

    def _spill(self) -> None:
        ordered = array("Q", sorted(self._run))
        self._run = array("Q")
        handle, name = tempfile.mkstemp(prefix="gbif-ids-", suffix=".bin", dir=self._spool_dir)
        self._spills.append(Path(name))
        with os.fdopen(handle, "wb") as out:
            ordered.tofile(out)

    def _read_run(self, path: Path) -> Iterator[int]:
        with path.open("rb") as source:
            while chunk := source.read(_READ_CHUNK):
                yield from array("Q", chunk)

    def _duplicates(self) -> int:
        runs: list[Iterator[int]] = [iter(sorted(self._run))]
        runs += [self._read_run(path) for path in self._spills]
        repeats, previous = 0, None
        for digest in heapq.merge(*runs):
            if digest == previous:
                repeats += 1
            previous = digest
        return repeats

    def result(self) -> dict[str, Any]:
        """The counts and examples, for `manifest.json`; removes the spill files."""
        try:
            self.counts["occurrence_id_duplicates"] = self._duplicates()
        finally:
            self.discard()
        return {"rows_checked": self.rows, **self.counts, "examples": list(self.examples)}

    def discard(self) -> None:
        """Remove the spill files (an aborted archive)."""
        self._run = array("Q")
        for path in self._spills:
            with contextlib.suppress(OSError):
                path.unlink()
        self._spills = []
