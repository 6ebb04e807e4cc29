"""What the operator command prints: human text or JSON, tables, times, sizes and progress lines."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO


@dataclass
class Output:
    """Where results go: human text or JSON on stdout, nothing when quiet; errors always on stderr."""

    quiet: bool = False
    as_json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def text(self, line: str = "") -> None:
        """A line of human output."""
        if not self.quiet and not self.as_json:
            print(line, file=self.out, flush=True)

    def document(self, doc: Any) -> None:
        """A JSON document (with --json)."""
        if not self.quiet and self.as_json:
            print(json.dumps(doc, indent=2, ensure_ascii=False), file=self.out, flush=True)

    def json_line(self, doc: Any) -> None:
        """One JSON document on one line (with --json, for streams)."""
        if not self.quiet and self.as_json:
            print(json.dumps(doc, ensure_ascii=False, separators=(",", ":")), file=self.out, flush=True)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def when(timestamp: Any) -> str:
    """A UNIX timestamp as UTC ISO 8601 to the second."""
    try:
        moment = datetime.fromtimestamp(float(timestamp), tz=UTC)
    except (TypeError, ValueError, OverflowError):
        return str(timestamp)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def human_size(size: int | None) -> str:
    """Bytes in B, KiB, MiB or GiB (powers of 1024, labelled as such)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progress_line(job: Mapping[str, Any], width: int = 30) -> str:
    """One line describing a job's progress: a bar when the percentage is known, counts, and its state."""
    parts: list[str] = []
    percent = job.get("percent")
    if isinstance(percent, int | float):
        filled = round(width * min(max(percent, 0.0), 100.0) / 100.0)
        parts.append(f"[{'#' * filled}{'-' * (width - filled)}] {percent:5.1f}%")
    rows_done, rows_total = job.get("rows_done") or 0, job.get("rows_total")
    if rows_total:
        parts.append(f"{rows_done:,} of {rows_total:,} rows")
    elif rows_done:
        parts.append(f"{rows_done:,} rows")
    bytes_done = job.get("bytes_done") or 0
    if bytes_done:
        parts.append(f"{human_size(bytes_done)} fetched")
    parts.append(str(job.get("state") or "?"))
    return "  ".join(parts)


class ProgressDisplay:
    """A bar redrawn in place on a terminal; elsewhere a line per state and per tenth of the way."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.live = not out.quiet and not out.as_json and out.err.isatty()
        self.drawn = False
        self.printed: tuple[Any, Any] | None = None

    def show(self, job: Mapping[str, Any]) -> None:
        """Show the job's progress: redraw the bar, or print a line when the state or tenth changed."""
        if self.out.quiet or self.out.as_json:
            return
        line = progress_line(job)
        if self.live:
            width = shutil.get_terminal_size((80, 24)).columns
            self.out.err.write("\r" + line[: width - 1].ljust(width - 1))
            self.out.err.flush()
            self.drawn = True
            return
        percent = job.get("percent")
        key = (job.get("state"), int(percent // 10) if isinstance(percent, int | float) else None)
        if key != self.printed:
            self.printed = key
            print(line, file=self.out.err, flush=True)

    def close(self) -> None:
        """End the bar's line, if one was drawn."""
        if self.drawn:
            self.out.err.write("\n")
            self.out.err.flush()
            self.drawn = False
