"""Email rendering: placeholders, DOI text, and HTML escaping of every value."""

from __future__ import annotations

from email.message import EmailMessage

from packager.events import PackageCompleted, PackageFailed
from packager.notify import render_completed, render_failed
from packager.settings import load_settings

SETTINGS = load_settings(
    {}, secret="unit-test-secret-0123456789", download_url_base="https://dl.example.org/z"
)


def completed(**overrides: object) -> PackageCompleted:
    fields: dict[str, object] = dict(
        cache_key="ck",
        resource_id="r1",
        email="a@example.org",
        ckan_host="data.example.org",
        doi="",
        lane="fast",
        zip_file_name="job-1.zip",
        size=2048,
        sha256="0" * 64,
        rows=None,
        started_at="t0",
        finished_at="t1",
    )
    fields.update(overrides)
    return PackageCompleted(**fields)  # type: ignore[arg-type]


def parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_completed_email_links_to_the_download() -> None:
    msg = render_completed(SETTINGS, "job-1", completed())
    text, html = parts(msg)
    assert msg["To"] == "a@example.org"
    assert msg["Subject"] == "Resource from data.example.org"
    assert "https://dl.example.org/z/job-1.zip" in text
    assert 'href="https://dl.example.org/z/job-1.zip"' in html
    assert "doi.org" not in text


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
    assert "HTTP 404" in body and "job-9" in body
    assert "could not be prepared" in msg["Subject"]
