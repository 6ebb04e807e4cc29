"""Rendering the requester's emails: for a terminal event, and the reminder before a download expires
(`render_expiry_notice`, fixed wording). Pure: no SMTP here (see `packager.adapters.smtp`).

Templates use the original service's placeholders (`{resource_id}`, `{zip_file_name}`, `{ckan_host}`, `{doi}`,
`{doi_body}`, `{doi_body_html}`) plus `{download_url}`, `{status_url}`, `{row_count}`, `{file_size}`,
`{expires_at}` and `{job_id}`; failure templates have `{what_happened}` and `{what_next}` (the failure in a
requester's words) and `{error}` (the raw message) instead of the download ones. Templates come
from the settings or from files they name, and are checked at start-up: an unknown placeholder, or anything
but a plain name between braces, stops the service with a message naming the template. Every value is
HTML-escaped in the HTML part.

Every message carries the job it reports in an `X-Packager-Job` header (a cache hit's download link names the
job that built the ZIP, not the one being answered), so a mailbox can be checked against the log.
"""

from __future__ import annotations

import functools
import html
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from packager.core.errors import ConfigurationError
from packager.core.settings import Settings
from packager.domain.events import ExpiryNoticeDue, PackageCancelled, PackageCompleted, PackageFailed
from packager.domain.wording import ask_again_text, failure_texts

DOI_PLACEHOLDERS = frozenset(
    {
        "resource_id",
        "zip_file_name",
        "ckan_host",
        "doi",
        "download_url",
        "status_url",
        "row_count",
        "file_size",
        "expires_at",
        "job_id",
    }
)
COMPLETED_PLACEHOLDERS = DOI_PLACEHOLDERS | {"doi_body", "doi_body_html"}
# `{what_happened}` and `{what_next}` tell the failure for a requester; `{error}` is the raw message (hosts,
# exception names), kept for operators' own templates.
FAILED_PLACEHOLDERS = frozenset(
    {"resource_id", "ckan_host", "error", "what_happened", "what_next", "job_id", "status_url"}
)
# The header naming the job an email reports.
JOB_HEADER = "X-Packager-Job"


@dataclass(frozen=True, slots=True)
class Templates:
    """The checked templates of both emails."""

    email_subject: str
    email_body: str
    email_body_html: str
    doi_body: str
    doi_body_html: str
    failure_subject: str
    failure_body: str


def _placeholders(name: str, template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(f"Template {name.upper()} is malformed: {exc}") from None
    fields = set()
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ConfigurationError(
                f"Template {name.upper()} has {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}: only plain placeholders like {{resource_id}} are allowed"
            )
        fields.add(field)
    return fields


@functools.lru_cache(maxsize=8)
def load_templates(settings: Settings) -> Templates:
    """Read the templates (files override settings) and refuse unknown placeholders."""
    allowed = {
        "email_subject": COMPLETED_PLACEHOLDERS,
        "email_body": COMPLETED_PLACEHOLDERS,
        "email_body_html": COMPLETED_PLACEHOLDERS,
        "doi_body": DOI_PLACEHOLDERS,
        "doi_body_html": DOI_PLACEHOLDERS,
        "failure_subject": FAILED_PLACEHOLDERS,
        "failure_body": FAILED_PLACEHOLDERS,
    }
    texts: dict[str, str] = {}
    for name, permitted in allowed.items():
        path = getattr(settings, f"{name}_file")
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(
                    f"Template file {path} ({name.upper()}_FILE) cannot be read: {exc}"
                ) from None
        else:
            text = getattr(settings, name)
        unknown = _placeholders(name, text) - permitted
        if unknown:
            raise ConfigurationError(
                f"Template {name.upper()} uses unknown placeholder(s) "
                f"{', '.join('{' + u + '}' for u in sorted(unknown))}; "
                f"known: {', '.join('{' + p + '}' for p in sorted(permitted))}"
            )
        texts[name] = text
    return Templates(**texts)


def human_size(size: int) -> str:
    """A byte count in binary units, labelled as such (69,203,991 bytes is 66.0 MiB)."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def _expires_at(finished_at: str, cache_time: int) -> str:
    try:
        finished = datetime.fromisoformat(finished_at.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return (finished + timedelta(seconds=cache_time)).strftime("%Y-%m-%d %H:%M UTC")


def render_completed(settings: Settings, job_id: str, event: PackageCompleted) -> EmailMessage:
    """The 'your download is ready' message, plain text with an HTML alternative."""
    templates = load_templates(settings)
    values = {
        "resource_id": event.resource_id,
        "zip_file_name": event.zip_file_name,
        "ckan_host": event.ckan_host,
        "doi": event.doi,
        "download_url": f"{settings.download_base}/{event.zip_file_name}",
        "status_url": f"{settings.status_base}/{job_id}",
        "row_count": f"{event.rows:,}" if event.rows is not None else "",
        "file_size": human_size(event.size),
        "expires_at": _expires_at(event.finished_at, settings.cache_time),
        "job_id": job_id,
    }
    escaped = {k: html.escape(v) for k, v in values.items()}
    text_values = dict(values, doi_body="", doi_body_html="")
    html_values = dict(escaped, doi_body="", doi_body_html="")
    if event.doi:
        text_values["doi_body"] = templates.doi_body.format(**values)
        html_values["doi_body_html"] = templates.doi_body_html.format(**escaped)
    msg = EmailMessage()
    msg["Subject"] = _one_line(templates.email_subject.format(**text_values))
    msg.set_content(templates.email_body.format(**text_values))
    msg.add_alternative(templates.email_body_html.format(**html_values), subtype="html")
    return _addressed(msg, settings, event.email, job_id)


def render_failed(settings: Settings, job_id: str, event: PackageFailed) -> EmailMessage:
    """The 'your download failed' message: what failed, in plain words."""
    templates = load_templates(settings)
    what_happened, what_next = failure_texts(event.error)
    values = {
        "resource_id": event.resource_id,
        "ckan_host": event.ckan_host,
        "error": event.error,
        "what_happened": what_happened,
        "what_next": what_next,
        "job_id": job_id,
        "status_url": f"{settings.status_base}/{job_id}",
    }
    msg = EmailMessage()
    msg["Subject"] = _one_line(templates.failure_subject.format(**values))
    msg.set_content(templates.failure_body.format(**values))
    return _addressed(msg, settings, event.email, job_id)


EXPIRY_NOTICE_SUBJECT = "Your download from {ckan_host} expires on {expires_at}"
EXPIRY_NOTICE_BODY = """Hello,

The data you requested from {ckan_host} (resource {resource_id}) can be downloaded until {expires_at}:
{download_url}

After that the file is removed. {ask_again}

This was job {job_id}; its status page is {status_url}

Best wishes,
The Data Portal Bot
"""


def render_expiry_notice(settings: Settings, job_id: str, event: ExpiryNoticeDue) -> EmailMessage:
    """The reminder that a download's link stops working soon (EXPIRY_NOTICE_BEFORE), plain text."""
    expires = _expires_at(event.expires_at, 0)
    values = {
        "ckan_host": event.ckan_host,
        "resource_id": event.resource_id,
        "expires_at": expires,
        "download_url": f"{settings.download_base}/{event.zip_file_name}",
        "ask_again": ask_again_text(settings.portal_name, settings.portal_url),
        "job_id": job_id,
        "status_url": f"{settings.status_base}/{job_id}",
    }
    msg = EmailMessage()
    msg["Subject"] = _one_line(EXPIRY_NOTICE_SUBJECT.format(**values))
    msg.set_content(EXPIRY_NOTICE_BODY.format(**values))
    return _addressed(msg, settings, event.email, job_id)


def render_cancelled(settings: Settings, job_id: str, event: PackageCancelled) -> EmailMessage:
    """The short 'your request was cancelled' note (sent only with EMAIL_CANCELLATIONS on)."""
    who = "you" if event.by == "requester" else "the service's operator"
    msg = EmailMessage()
    msg["Subject"] = _one_line(f"Your download request for {event.resource_id} was cancelled")
    msg.set_content(
        f"Your request for the data of resource {event.resource_id} was cancelled by {who} before it was"
        " ready, so no download link will follow.\n\n"
        "If you still want the data, please ask for it again from the portal.\n\n"
        f"Details: {settings.status_base}/{job_id}\n"
    )
    return _addressed(msg, settings, event.email, job_id)


def _one_line(text: str) -> str:
    """Headers are one line: a template's or a value's line breaks become spaces."""
    return " ".join(text.split())


def _addressed(msg: EmailMessage, settings: Settings, to: str, job_id: str) -> EmailMessage:
    msg["From"] = settings.email_from
    msg[JOB_HEADER] = job_id
    msg["To"] = to
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="ckanpackager")
    return msg
