"""Email rendering: placeholders, DOI text, and HTML escaping of every value."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from packager.core.errors import ConfigurationError
from packager.core.settings import load_settings
from packager.domain.emails import load_templates, render_completed, render_failed
from packager.domain.events import PackageFailed
from tests.unit.samples import completed

SETTINGS = load_settings(
    {}, secret="unit-test-secret-0123456789", download_url_base="https://dl.example.org/z"
)


def parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_completed_email_links_to_the_download() -> None:
    msg = render_completed(SETTINGS, "job-1", completed())
    text, html = parts(msg)
    assert msg["To"] == "a@example.org"
    assert msg["X-Packager-Job"] == "job-1"  # a cache hit's link names another job: the header names this one
    assert msg["Subject"] == "Resource from data.example.org"
    assert "https://dl.example.org/z/job-1.zip" in text
    assert 'href="https://dl.example.org/z/job-1.zip"' in html
    assert "doi.org" not in text


def test_completed_email_names_the_job_and_its_status_page() -> None:
    settings = load_settings(
        {}, secret="unit-test-secret-0123456789", download_url_base="https://pkg.example.org/downloads/"
    )
    job_id = "0b7c6f1e-1d2c-4a52-9e57-5d1f7a9c0b11"
    text, html = parts(render_completed(settings, job_id, completed()))
    status_url = f"https://pkg.example.org/jobs/{job_id}"
    assert f"job {job_id}" in text and status_url in text
    assert f"job {job_id}" in html and f'href="{status_url}"' in html


@pytest.mark.parametrize(
    ("env", "status_base"),
    [
        ({}, "http://127.0.0.1:8765/jobs"),
        ({"PACKAGER_DOWNLOAD_URL_BASE": "https://pkg.example.org/downloads"}, "https://pkg.example.org/jobs"),
        # Downloads served by another server (a store behind a CDN): status pages stay on the ingress.
        ({"PACKAGER_DOWNLOAD_URL_BASE": "https://cdn.example.org/zips"}, "http://127.0.0.1:8765/jobs"),
        (
            {
                "PACKAGER_DOWNLOAD_URL_BASE": "https://pkg.example.org/downloads",
                "PACKAGER_STATUS_URL_BASE": "https://status.example.org/j/",
            },
            "https://status.example.org/j",
        ),
    ],
)
def test_status_links_follow_the_public_address_of_the_downloads(
    env: dict[str, str], status_base: str
) -> None:
    assert load_settings(env, secret="unit-test-secret-0123456789").status_base == status_base


def test_doi_text_appears_only_with_a_doi() -> None:
    text, html = parts(render_completed(SETTINGS, "job-1", completed(doi="10.5072/abc")))
    assert "https://doi.org/10.5072/abc" in text
    assert 'href="https://doi.org/10.5072/abc"' in html


def test_html_part_escapes_values() -> None:
    _, html = parts(render_completed(SETTINGS, "job-1", completed(resource_id="<script>alert(1)</script>")))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_failure_email_says_what_failed() -> None:
    failed = PackageFailed(
        cache_key="ck",
        resource_id="r1",
        email="a@example.org",
        ckan_host="data.example.org",
        error="The file at https://x/f could not be fetched: HTTP 404 Not Found",
        error_type="PackagingError",
    )
    msg = render_failed(SETTINGS, "job-9", failed)
    body = msg.get_content()
    # In the requester's words, with what to do next; the raw error (hosts, codes) is the operator's.
    assert "The file could not be fetched from where the portal keeps it." in body
    assert "Please try again later." in body and "job-9" in body
    assert "HTTP 404" not in body and "https://x/f" not in body
    assert msg["X-Packager-Job"] == "job-9"
    assert "could not be prepared" in msg["Subject"]
    # An operator's own template may still show the raw error.
    raw = load_settings({}, secret="unit-test-secret-0123456789", failure_body="{what_happened} ({error})")
    assert render_failed(raw, "job-9", failed).get_content().strip() == (
        "The file could not be fetched from where the portal keeps it. "
        "(The file at https://x/f could not be fetched: HTTP 404 Not Found)"
    )


def test_new_placeholders_render() -> None:
    settings = load_settings(
        {},
        secret="unit-test-secret-0123456789",
        email_body="{row_count} rows, {file_size}, until {expires_at}: {status_url}",
        status_url_base="https://pkg.example.org/jobs",
        cache_time=86400,
    )
    msg = render_completed(settings, "job-1", completed(rows=1234567, finished_at="2026-11-26T10:00:00.000Z"))
    text, _ = parts(msg)
    assert (
        text.strip()
        == "1,234,567 rows, 2.0 KiB, until 2026-11-27 10:00 UTC: https://pkg.example.org/jobs/job-1"
    )


@pytest.mark.parametrize(
    ("setting", "template", "message"),
    [
        ("email_body", "Hi {name}", "unknown placeholder"),
        ("email_subject", "{resource_id.__class__}", "only plain placeholders"),
        ("failure_body", "{download_url}", "unknown placeholder"),
        ("doi_body", "{doi_body}", "unknown placeholder"),
        ("email_body_html", "{unclosed", "malformed"),
    ],
)
def test_templates_with_unknown_placeholders_are_refused(setting: str, template: str, message: str) -> None:
    settings = load_settings({}, secret="unit-test-secret-0123456789", **{setting: template})
    with pytest.raises(ConfigurationError, match=message) as info:
        load_templates(settings)
    assert setting.upper() in str(info.value)


def test_templates_can_come_from_files(tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text("Your file: {download_url}\n", encoding="utf-8")
    settings = load_settings({"PACKAGER_EMAIL_BODY_FILE": str(body)}, secret="unit-test-secret-0123456789")
    text, _ = parts(render_completed(settings, "job-1", completed()))
    assert text.strip() == "Your file: http://127.0.0.1:8765/downloads/job-1.zip"
    bad = tmp_path / "bad.txt"
    bad.write_text("{nope}", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="nope"):
        load_templates(load_settings({}, secret="unit-test-secret-0123456789", failure_body_file=str(bad)))


def test_a_value_cannot_break_the_subject_line() -> None:
    msg = render_completed(SETTINGS, "job-1", completed(ckan_host="evil.example.org\r\nBcc: x@example.org"))
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])
