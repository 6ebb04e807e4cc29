"""What a requester reads about a job: its state in words, the request in words, sizes, times, what next.

Pure: the job's page renders these texts on the server, and its script receives the same texts with every
update of the event stream (`display` in the job's JSON), so the page has one source of words. Failures are
told in words a requester understands; the raw error (hosts, exception names) stays in the operator's log
and in the `error` field programs read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from packager.domain.wording import ask_again_text, failure_texts
from projections.jobs import ABANDONED, CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, JobState

# Progress at or above which a running job is writing its archive (the rows are all fetched).
FINISHING_AT = 99.5

# Page states: the job's own states, plus `finishing` (running, rows done), `expired` (completed, the link
# no longer works) and `cancelled` (abandoned: never accepted).
FINISHING, EXPIRED = "finishing", "expired"

_FORMATS = {
    "csv": "CSV (comma-separated values)",
    "tsv": "TSV (tab-separated values)",
    "json": "JSON lines",
    "jsonl": "JSON lines",
    "xlsx": "Excel workbook (XLSX)",
    "xls": "Excel workbook (XLSX)",
}


def size_text(size: int | None) -> str:
    """A byte count in binary units, labelled as such (69,203,991 bytes is 66.0 MiB)."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return ""  # pragma: no cover - the loop always returns


def parse_time(text: str) -> datetime | None:
    """An event's ISO 8601 time, or None."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def time_text(moment: datetime | None) -> str:
    """A time as people read it, in UTC: `2 Dec 2026, 00:40 UTC`."""
    if moment is None:
        return ""
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def iso(moment: datetime | None) -> str:
    """A time for a `<time datetime>` attribute and for programs."""
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_text(details: dict[str, Any] | None, kind: str) -> str:
    """The file format in words."""
    if kind == "url":
        return "The file as published, in a ZIP archive"
    if kind == "dwc":
        return "Darwin Core Archive, in a ZIP archive"
    fmt = str((details or {}).get("format") or "csv").lower()
    return f"{_FORMATS.get(fmt, fmt.upper())}, in a ZIP archive"


def _value(value: Any) -> str:
    if isinstance(value, list):
        return " or ".join(f"“{v}”" for v in value[:10]) + (" …" if len(value) > 10 else "")
    return f"“{value}”"


def query_text(details: dict[str, Any] | None, kind: str) -> str:
    """The request in words: which rows, which columns, in which order, or which file."""
    if details is None:
        return "Not recorded for this job."
    if kind == "url":
        name = details.get("file")
        return f"The file {name}" if name else "The resource's file"
    parts: list[str] = []
    filters = details.get("filters")
    if isinstance(filters, dict) and filters:
        conditions = [f"{column} is {_value(value)}" for column, value in list(filters.items())[:10]]
        parts.append("rows where " + " and ".join(conditions))
    if details.get("q"):
        parts.append(f"matching the search “{str(details['q'])[:200]}”")
    if not parts:
        parts.append("all rows")
    offset, limit = details.get("offset"), details.get("limit")
    if limit is not None and offset:
        parts.append(f"rows {int(offset) + 1:,} to {int(offset) + int(limit):,} of those")
    elif limit is not None:
        parts.append(f"the first {int(limit):,} of those")
    elif offset:
        parts.append(f"from row {int(offset) + 1:,} on")
    fields = details.get("fields")
    if fields:
        names = fields if isinstance(fields, list) else str(fields).split(",")
        shown = ", ".join(str(n).strip() for n in names[:12]) + (" …" if len(names) > 12 else "")
        parts.append(f"columns {shown}")
    else:
        parts.append("every column")
    if details.get("sort"):
        parts.append(f"sorted by {details['sort']}")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True, slots=True)
class Expiry:
    """When a completed job's link stops working, and whether it has; `removed`: its file went before that
    time (an operator cleared the stored downloads)."""

    at: datetime | None
    gone: bool
    removed: bool = False


def display(
    job: JobState,
    *,
    expiry: Expiry | None = None,
    email_expected: bool = True,
    download_url: str | None = None,
    ask_again: str = "",
) -> dict[str, Any]:
    """Every text the job's page shows, for its state now (sent to the page's script as `display`).

    `ask_again`: how to ask for the data again (`ask_again_text` with the portal's name and address)."""
    state = job.state
    percent = job.percent
    if state == RUNNING and percent is not None and percent >= FINISHING_AT:
        state = FINISHING
    if state == COMPLETED and expiry is not None and expiry.gone:
        state = EXPIRED
    abandoned = state == ABANDONED
    if abandoned:
        state = CANCELLED  # shown like a cancellation: nothing is coming
    out: dict[str, Any] = {
        "state": state,
        "percent": percent,
        "bar": state in (QUEUED, RUNNING, FINISHING),
        "progress": "",
        "message": "",
        "next": "",
        "download": None,
        "size": size_text(job.size),
        "expires": "",
        "expires_at": "",
        "finished": time_text(parse_time(job.finished_at)),
        "email": "",
    }
    if job.kind == "url":  # a file at a URL: its progress is in bytes of the file (not of the ZIP)
        fetched = size_text(job.bytes_done)
        so_far = (
            f"Fetched {fetched} of the file's {size_text(job.bytes_total)}"
            if job.bytes_total
            else f"Fetched {fetched} of the file so far"
        )
    else:
        so_far = (
            f"{job.rows_done:,} of {job.rows_total:,} rows"
            if job.rows_total
            else f"{job.rows_done:,} rows so far"
        )
    if state == QUEUED:
        out["headline"] = "Waiting to start"
        out["progress"] = "Your request is in the queue; it starts as soon as a worker is free."
    elif state == RUNNING:
        out["headline"] = "Being prepared"
        out["progress"] = f"{so_far} ({percent:g}%)" if percent is not None else so_far
    elif state == FINISHING:
        out["headline"] = "Finishing"
        fetched = "The file is fetched" if job.kind == "url" else "Every row is fetched"
        out["progress"] = f"{fetched}; the ZIP archive is being written. This can take a minute."
    elif state == COMPLETED:
        out["headline"] = "Ready"
        out["progress"] = f"{job.rows_done:,} rows" if job.kind != "url" else "The file is packaged."
        if download_url:
            out["download"] = {"url": download_url, "text": f"Download ZIP ({out['size']})"}
        if expiry is not None and expiry.at is not None:
            out["expires"] = f"The link works until {time_text(expiry.at)}."
            out["expires_at"] = iso(expiry.at)
            out["next"] = (
                f"Download it before {time_text(expiry.at)}; after that, please ask for the data again."
            )
    elif state == EXPIRED:
        out["headline"] = "Expired"
        out["next"] = ask_again or ask_again_text()
        if expiry is not None and expiry.removed:
            out["message"] = (
                "This download was ready, but its file was removed before its link expired (the service's "
                "stored downloads were cleared)."
            )
        else:
            out["message"] = "This download was ready but has expired, and its file was removed."
            if expiry is not None and expiry.at is not None:
                out["expires"] = f"The link worked until {time_text(expiry.at)}."
                out["expires_at"] = iso(expiry.at)
    elif state == FAILED:
        out["headline"] = "Could not be prepared"
        out["message"], out["next"] = failure_texts(job.error)
    elif state == CANCELLED and not abandoned:
        out["headline"] = "Cancelled"
        out["message"] = (
            f"This request was {job.error or 'cancelled'} before it was ready; nothing was kept of it."
        )
        out["next"] = "If you still want the data, please ask for it again from the portal."
    elif state == CANCELLED:
        out["headline"] = "Not accepted"
        out["message"] = (
            "The service was too busy to take this request when it was made, so nothing is coming."
        )
        out["next"] = "Please ask for the data again from the portal."
    else:  # a state this page does not know: say only what is sure
        out["headline"] = state.capitalize()
    out["email"] = email_text(job, state, email_expected)
    return out


def email_text(job: JobState, state: str, expected: bool) -> str:
    """The email line: what will come, what came, or that none will."""
    if job.state == CANCELLED and expected:
        return "Sent: an email says it was cancelled." if job.emailed else "An email says it was cancelled."
    if state == CANCELLED or not expected:
        return "No email will be sent for this request."
    if job.emailed:
        return "Sent: the email with this information has left for your inbox."
    if job.email_error:
        return "The email could not be sent. Everything it would say is on this page."
    if state in (QUEUED, RUNNING, FINISHING):
        return "You can close this page: we will email you when it is ready."
    return "Being sent…"


def download_file_name(resource_id: str, finished_at: str, fallback: str) -> str:
    """The name a download saves under: the resource and the day it was built (`<resource>_<YYYY-MM-DD>.zip`),
    in characters every file system takes; `fallback` when the resource is not known."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", resource_id).strip("-._")[:80]
    day = parse_time(finished_at)
    if not slug:
        return fallback
    return f"{slug}_{day:%Y-%m-%d}.zip" if day is not None else f"{slug}.zip"
