"""What the requester's pages say, without a browser: sizes, the request in words, failures in plain words,
the file name a download saves under, and the operator's template and colours checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog
from packager.core.errors import ConfigurationError
from packager.core.settings import load_settings
from packager.http import pages
from packager.http.ingress import create_app
from packager.http.job_texts import (
    Expiry,
    display,
    download_file_name,
    failure_texts,
    query_text,
    size_text,
)
from projections.jobs import JobState

SECRET = "unit-test-secret-0123456789"


def test_sizes_are_in_binary_units_and_say_so() -> None:
    assert size_text(69_203_991) == "66.0 MiB"
    assert size_text(1023) == "1,023 bytes"
    assert size_text(2048) == "2.0 KiB"
    assert size_text(5 * 1024**3) == "5.0 GiB"


def test_the_request_in_words() -> None:
    details = {"kind": "datastore", "filters": {"year": 2020}, "offset": 100, "limit": 50, "fields": "a,b"}
    assert query_text(details, "datastore") == (
        "Rows where year is “2020”; rows 101 to 150 of those; columns a, b."
    )
    assert query_text({"kind": "url", "file": "f.csv"}, "url") == "The file f.csv"
    assert query_text(None, "datastore") == "Not recorded for this job."


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            "CKAN at http://10.0.0.9:5000/api kept failing after 5 attempts: ClientConnectorError: x",
            "The data portal did not answer",
        ),
        ('CKAN refused the query: field "nope" does not exist', "The data portal refused the query"),
        ("The file at http://10.0.0.9/f.csv could not be fetched: HTTP 500", "The file could not be fetched"),
        ("KeyError: 'x' in packager/service/packaging.py", "Something went wrong"),
    ],
)
def test_failures_are_told_without_internals(error: str, words: str) -> None:
    message, next_step = failure_texts(error)
    assert message.startswith(words)
    assert "10.0.0.9" not in message + next_step and "Error" not in message + next_step
    assert next_step


def test_a_failed_job_has_no_bar_no_link_and_says_what_next() -> None:
    failed = JobState(job_id="j", state="failed", error="CKAN at http://h kept failing: boom")
    shown = display(failed)
    assert (shown["state"], shown["bar"], shown["download"]) == ("failed", False, None)
    assert "http://h" not in str(shown) and shown["next"]


def test_a_running_job_with_every_row_fetched_is_finishing() -> None:
    job = JobState(job_id="j", state="running", rows_done=1000, rows_total=1000)
    assert display(job)["headline"] == "Finishing"


def test_a_file_at_a_url_shows_its_progress_in_bytes_of_the_file_and_the_link_the_zip_s_size() -> None:
    job = JobState(job_id="j", state="running", kind="url", bytes_done=3 * 1024**2, bytes_total=10 * 1024**2)
    assert display(job)["progress"] == "Fetched 3.0 MiB of the file's 10.0 MiB (30%)"
    unknown = JobState(job_id="j", state="running", kind="url", bytes_done=2048)
    assert display(unknown)["progress"] == "Fetched 2.0 KiB of the file so far"
    nearly = JobState(job_id="j", state="running", kind="url", bytes_done=999, bytes_total=1000)
    assert display(nearly)["progress"].startswith("The file is fetched; the ZIP archive is being written")
    done = JobState(job_id="j", state="completed", kind="url", zip_file_name="j.zip", size=4 * 1024**2)
    assert display(done, download_url="http://x/j.zip")["download"]["text"] == "Download ZIP (4.0 MiB)"


def test_a_completed_job_past_its_link_s_life_is_expired() -> None:
    job = JobState(job_id="j", state="completed", zip_file_name="j.zip", size=10)
    shown = display(job, expiry=Expiry(at=None, gone=True), download_url="http://x/j.zip")
    assert (shown["state"], shown["download"], shown["bar"]) == ("expired", None, False)


def test_downloads_are_named_by_resource_and_day() -> None:
    name = download_file_name("Specimens 2024/β", "2026-12-02T09:15:00.000Z", "j.zip")
    assert name == "Specimens-2024_2026-12-02.zip"
    assert download_file_name("", "2026-12-02T09:15:00.000Z", "j.zip") == "j.zip"


def test_a_template_with_an_unknown_placeholder_stops_the_service(tmp_path: Path) -> None:
    template = tmp_path / "page.html"
    template.write_text("<title>$title</title>$main $nonsense")
    with pytest.raises(ConfigurationError, match=r"unknown placeholder\(s\) nonsense"):
        pages.load_template(load_settings({}, secret=SECRET, page_template_file=str(template)))
    template.write_text("<p>$footer</p>")
    with pytest.raises(ConfigurationError, match=r"lacks \$main, \$title"):
        pages.load_template(load_settings({}, secret=SECRET, page_template_file=str(template)))


def test_colours_must_be_colours() -> None:
    with pytest.raises(ConfigurationError, match="PAGE_ACCENT_COLOUR='blue' is not a colour"):
        load_settings({}, secret=SECRET, page_accent_colour="blue")


async def test_the_operator_s_template_and_branding_make_the_pages(tmp_path: Path) -> None:
    template = tmp_path / "page.html"
    template.write_text("<html><title>$title</title><body class=custom>$portal $main</body></html>")
    settings = load_settings(
        {},
        secret=SECRET,
        store_directory=str(tmp_path),
        page_template_file=str(template),
        portal_name="Museum <Data>",
        portal_url="https://data.example.org/",
        portal_logo_url="https://data.example.org/logo.png",
    )
    app = create_app(settings, event_log=InMemoryEventLog(), read_views=False)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/", headers={"Accept": "text/html"})
        page = await resp.text()
        programs = await client.get("/")
    assert resp.status == 200 and "<body class=custom>" in page
    assert "Museum &lt;Data&gt;" in page and "Museum <Data>" not in page
    assert '<a href="https://data.example.org/"><img src="https://data.example.org/logo.png" alt="">' in page
    assert programs.content_type == "application/json"
