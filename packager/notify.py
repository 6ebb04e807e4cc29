"""Rendering the requester's email for a terminal event. Pure: no SMTP here (see `packager.smtp`).

Templates use the original service's placeholders (`{resource_id}`, `{zip_file_name}`, `{ckan_host}`, `{doi}`,
`{doi_body}`, `{doi_body_html}`) plus `{download_url}`, `{job_id}` and `{file_size}`. Every value is
HTML-escaped in the HTML part.
"""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from packager.events import PackageCompleted, PackageFailed
from packager.settings import Settings

FAILED_SUBJECT = "Your download from {ckan_host} could not be prepared"
FAILED_BODY = """Hello,

We could not prepare the data you requested from {ckan_host} (resource {resource_id}).

What went wrong: {error}

You can request the download again from the portal. If it keeps failing, please contact the portal's
administrators and quote this job id: {job_id}

Best wishes,
The Data Portal Bot
"""


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def render_completed(settings: Settings, job_id: str, event: PackageCompleted) -> EmailMessage:
    """The 'your download is ready' message, plain text with an HTML alternative."""
    values = {
        "resource_id": event.resource_id,
        "zip_file_name": event.zip_file_name,
        "ckan_host": event.ckan_host,
        "doi": event.doi,
        "download_url": f"{settings.download_base}/{event.zip_file_name}",
        "job_id": job_id,
        "file_size": _human_size(event.size),
    }
    escaped = {k: html.escape(v) for k, v in values.items()}
    text_values = dict(values, doi_body="", doi_body_html="")
    html_values = dict(escaped, doi_body="", doi_body_html="")
    if event.doi:
        text_values["doi_body"] = settings.doi_body.format(**values)
        html_values["doi_body_html"] = settings.doi_body_html.format(**escaped)
    msg = EmailMessage()
    msg["Subject"] = settings.email_subject.format(**text_values)
    msg.set_content(settings.email_body.format(**text_values))
    msg.add_alternative(settings.email_body_html.format(**html_values), subtype="html")
    return _addressed(msg, settings, event.email)


def render_failed(settings: Settings, job_id: str, event: PackageFailed) -> EmailMessage:
    """The 'your download failed' message."""
    values = {
        "resource_id": event.resource_id,
        "ckan_host": event.ckan_host,
        "error": event.error,
        "job_id": job_id,
    }
    msg = EmailMessage()
    msg["Subject"] = FAILED_SUBJECT.format(**values)
    msg.set_content(FAILED_BODY.format(**values))
    return _addressed(msg, settings, event.email)


def _addressed(msg: EmailMessage, settings: Settings, to: str) -> EmailMessage:
    msg["From"] = settings.email_from
    msg["To"] = to
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="ckanpackager")
    return msg
