"""The requester's pages in a real browser (Debian's chromium, headless): what a person sees.

The ingress runs in the test on 127.0.0.1 over SQLite views that the test fills event by event, as the
projector would: so each state a job passes through is shown in turn, and the page must follow it live,
without a reload. Every test keeps screenshots (see `tests.browser.support`) and checks the page with
axe-core (no serious or critical violation).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, expect

from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.resolver import system_resolver
from packager.core.settings import Settings, load_settings
from packager.domain.events import (
    EmailSent,
    Event,
    PackageFailed,
    PackageProgress,
    PackageQueued,
    PackageRequested,
    PackageStarted,
    RequestAbandoned,
    envelope,
)
from packager.http.ingress import create_app
from tests.browser.support import (
    PHONE,
    WAIT_MS,
    keep_screenshot,
    open_page,
    serious_accessibility_problems,
)
from tests.unit.samples import SECRET, attach_views, completed, fill_views

pytestmark = [pytest.mark.browser, pytest.mark.features]

JOB = "0b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d70"
SIZE = 69_203_991  # 66.0 MiB (69.2 MB): the page must not call it "66.0 MB"
RAW_ERROR = (
    "CKAN at http://10.1.2.3:5000/api/3/action/datastore_search kept failing after 5 attempts: "
    "ClientConnectorError: Cannot connect to host 10.1.2.3:5000 ssl:default [Connect call failed]"
)


class Views:
    """The test's views, fed one event at a time at increasing log offsets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offsets = itertools.count()

    def add(self, job_id: str, payload: Event, *, at: str | None = None) -> None:
        topic = "t.requests" if isinstance(payload, PackageRequested) else "t.events"
        event = envelope(job_id, payload, occurred_at=at)
        fill_views(self.settings, [(topic, 0, next(self.offsets), event)])


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings(
        {},
        secret=SECRET,
        store_directory=str(store_dir),
        portal_name="Example Data Portal",
        portal_url="https://data.example.org/",
    )


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[TestServer]:
    app = create_app(settings, event_log=InMemoryEventLog(), resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def views(settings: Settings) -> Views:
    return Views(settings)


def datastore_request() -> PackageRequested:
    return PackageRequested(
        kind="datastore",
        cache_key="ck",
        resource_id="specimens-2024",
        email="ann@example.org",
        ckan_host="data.example.org",
        request={
            "api_url": "https://data.example.org/api/3/action",
            "resource_id": "specimens-2024",
            "filters": {"country": ["Peru", "Chile"]},
            "q": "beetle",
            "fields": "",
            "sort": "year desc",
            "offset": None,
            "limit": None,
            "format": "csv",
            "key_sealed": "",
        },
    )


def progress(rows: int, total: int = 100_000) -> PackageProgress:
    return PackageProgress(
        cache_key="ck", rows_done=rows, rows_total=total, bytes_done=rows * 100, bytes_total=None, attempt=1
    )


async def assert_accessible(page: Page) -> None:
    problems = await serious_accessibility_problems(page)
    assert problems == [], problems


async def test_a_job_s_page_follows_it_live_to_the_download_and_the_email(
    site: TestServer, views: Views, settings: Settings, tmp_path: Path
) -> None:
    views.add(JOB, datastore_request(), at="2026-12-02T09:15:00.000Z")
    views.add(JOB, PackageQueued(cache_key="ck", lane="slow", attempt=1))
    async with open_page(tmp_path) as page:
        await page.goto(str(site.make_url(f"/jobs/{JOB}")))
        # What, when, what next, before anything happened.
        await expect(page.get_by_role("status")).to_have_text("Waiting to start")
        await expect(page.locator("main")).to_contain_text("specimens-2024")
        await expect(page.locator("main")).to_contain_text(
            "Rows where country is “Peru” or “Chile”; matching the search “beetle”; every column; "
            "sorted by year desc."
        )
        await expect(page.locator("main")).to_contain_text("CSV (comma-separated values), in a ZIP archive")
        await expect(page.locator("main")).to_contain_text("2 Dec 2026, 09:15 UTC")
        await expect(page.locator("#email")).to_have_text(
            "You can close this page: we will email you when it is ready."
        )
        bar = page.get_by_role("progressbar", name="Progress of the download being prepared")
        await expect(bar).to_be_visible()
        await assert_accessible(page)

        # Progress rises without a reload.
        views.add(
            JOB,
            PackageStarted(
                cache_key="ck", lane="slow", worker="w1", attempt=1, lease_until="2099-01-01T00:00:00Z"
            ),
        )
        views.add(JOB, progress(12_000))
        await expect(page.locator("#progress")).to_have_text("12,000 of 100,000 rows (12%)")
        assert await bar.get_attribute("value") == "12"
        views.add(JOB, progress(64_000))
        await expect(page.locator("#progress")).to_have_text("64,000 of 100,000 rows (64%)")
        assert await bar.get_attribute("value") == "64"
        await keep_screenshot(page, tmp_path, "running")

        # Every row fetched: the archive is being written, and the page says so.
        views.add(JOB, progress(100_000))
        await expect(page.get_by_role("status")).to_have_text("Finishing")
        await expect(page.locator("#progress")).to_contain_text("the ZIP archive is being written")
        await expect(bar).to_have_attribute("value", "100")

        # Completed: the link appears by itself, named by what it is, with its size in the right unit.
        (Path(settings.store_directory) / f"{JOB}.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
        views.add(
            JOB, completed(zip_file_name=f"{JOB}.zip", size=SIZE, rows=100_000, resource_id="specimens-2024")
        )
        link = page.get_by_role("link", name="Download ZIP (66.0 MiB)")
        await expect(link).to_be_visible()
        assert await link.get_attribute("href") == f"{settings.download_base}/{JOB}.zip"
        await expect(page.get_by_role("status")).to_have_text("Ready")
        await expect(page).to_have_title("Your data download: Ready · Example Data Portal")
        await expect(bar).to_be_hidden()
        await expect(page.locator("#expires")).to_contain_text("The link works until")
        await expect(page.locator("main")).not_to_contain_text("not ready yet")
        await expect(page.locator("#email")).to_have_text("Being sent…")

        # The email leaves: the page says so, without a reload.
        views.add(JOB, EmailSent(cache_key="ck", about="PackageCompleted", message_id="<m@x>", attempts=1))
        await expect(page.locator("#email")).to_contain_text("Sent")

        # The download link can be reached with the keyboard, and its focus is visible.
        await link.focus()
        outline = await link.evaluate("(a) => getComputedStyle(a).outlineStyle")
        assert outline not in ("", "none")
        await assert_accessible(page)
        await keep_screenshot(page, tmp_path, "completed")

    # On a phone: the same page reflows (nothing wider than the screen).
    async with open_page(tmp_path / "phone", PHONE) as page:
        await page.goto(str(site.make_url(f"/jobs/{JOB}")))
        await expect(page.get_by_role("link", name="Download ZIP (66.0 MiB)")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        await keep_screenshot(page, tmp_path, "completed-phone")

    # The file saves under a name saying what it is and when.
    async with (
        aiohttp.ClientSession() as http,
        http.get(site.make_url(f"/downloads/{JOB}.zip")) as resp,
    ):
        assert resp.status == 200
        assert 'filename="specimens-2024_' in resp.headers["Content-Disposition"]


async def test_a_failed_job_says_what_happened_in_plain_words_and_what_to_do(
    site: TestServer, views: Views, tmp_path: Path
) -> None:
    views.add(JOB, datastore_request())
    views.add(JOB, PackageQueued(cache_key="ck", lane="fast", attempt=1))
    async with open_page(tmp_path) as page:
        await page.goto(str(site.make_url(f"/jobs/{JOB}")))
        await expect(page.get_by_role("status")).to_have_text("Waiting to start")
        failed = PackageFailed(
            cache_key="ck",
            resource_id="specimens-2024",
            email="ann@example.org",
            ckan_host="data.example.org",
            error=RAW_ERROR,
            error_type="PackagingError",
        )
        views.add(JOB, failed)
        await expect(page.get_by_role("status")).to_have_text("Could not be prepared")
        await expect(page.locator("#message")).to_have_text(
            "The data portal did not answer while your data was being fetched."
        )
        await expect(page.locator("#next")).to_contain_text("Please try again later")
        # No bar, no link, no promise of a file, and none of the internals.
        await expect(page.get_by_role("progressbar")).to_be_hidden()
        await expect(page.locator("#link")).to_be_hidden()
        text = await page.locator("body").inner_text()
        for internal in ("ClientConnectorError", "10.1.2.3", "not ready yet", "attempts"):
            assert internal not in text
        views.add(JOB, EmailSent(cache_key="ck", about="PackageFailed", message_id="<m@x>", attempts=1))
        await expect(page.locator("#email")).to_contain_text("Sent")
        await assert_accessible(page)
        await keep_screenshot(page, tmp_path, "failed")


async def test_expired_and_never_accepted_jobs_each_say_so(
    site: TestServer, views: Views, tmp_path: Path
) -> None:
    expired, abandoned = JOB, "1b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d71"
    views.add(expired, datastore_request())
    # Completed long ago: its ZIP is no longer in the store.
    views.add(expired, completed(zip_file_name=f"{expired}.zip", size=2048), at="2026-01-01T00:00:00.000Z")
    views.add(abandoned, datastore_request())
    views.add(
        abandoned,
        RequestAbandoned(
            cache_key="ck", appended_at="2026-01-01T00:00:12Z", answer_deadline="2026-01-01T00:00:10Z"
        ),
    )
    async with open_page(tmp_path) as page:
        await page.goto(str(site.make_url(f"/jobs/{expired}")))
        await expect(page.get_by_role("status")).to_have_text("Expired")
        await expect(page.locator("#next")).to_contain_text("ask for the data again")
        await expect(page.locator("#link")).to_be_hidden()
        await expect(page.get_by_role("progressbar")).to_be_hidden()
        await assert_accessible(page)
        await keep_screenshot(page, tmp_path, "expired")

        await page.goto(str(site.make_url(f"/jobs/{abandoned}")))
        await expect(page.get_by_role("status")).to_have_text("Not accepted")
        await expect(page.locator("#email")).to_have_text("No email will be sent for this request.")
        await expect(page.get_by_role("progressbar")).to_be_hidden()
        await keep_screenshot(page, tmp_path, "not-accepted")


async def test_unknown_jobs_and_broken_links_get_a_404_page_that_says_so(
    site: TestServer, settings: Settings, views: Views, tmp_path: Path
) -> None:
    fill_views(settings, [])  # the views exist (a projector ran) and know no such job
    async with open_page(tmp_path) as page:
        # A link opened before the projector folded its request: the page turns into the job's page.
        late = "2b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d72"
        first = await page.goto(str(site.make_url(f"/jobs/{late}")))
        assert first is not None and first.status == 404
        await expect(page.get_by_role("heading", level=1)).to_have_text("No such download")
        views.add(late, datastore_request())
        await expect(page.get_by_role("status")).to_have_text("Waiting to start")

        unknown = await page.goto(str(site.make_url("/jobs/00000000-0000-4000-8000-000000000000")))
        assert unknown is not None and unknown.status == 404
        await expect(page.get_by_role("heading", level=1)).to_have_text("No such download")
        await expect(page.locator("main")).to_contain_text("00000000-0000-4000-8000-000000000000")
        await expect(page.locator("main")).not_to_contain_text("Waiting")
        await assert_accessible(page)
        await keep_screenshot(page, tmp_path, "unknown-job")

        broken = await page.goto(str(site.make_url("/jobs/0b5b3c9e-1f0e")))
        assert broken is not None and broken.status == 404
        await expect(page.locator("main")).to_contain_text("the link may have been cut short")
        assert "json" not in (broken.headers.get("content-type") or "")

        elsewhere = await page.goto(str(site.make_url("/no/such/page")))
        assert elsewhere is not None and elsewhere.status == 404
        await expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
        await assert_accessible(page)


async def test_the_landing_page_for_people_and_json_for_programs(
    site: TestServer, settings: Settings, tmp_path: Path
) -> None:
    fill_views(settings, [])
    async with open_page(tmp_path) as page:
        landing = await page.goto(str(site.make_url("/")))
        assert landing is not None and landing.status == 200
        await expect(page.get_by_role("heading", level=1)).to_have_text("Data download service")
        await expect(page.locator("header")).to_contain_text("Example Data Portal")
        openapi = page.get_by_role("link", name="The HTTP API's OpenAPI description")
        await expect(openapi).to_be_visible()
        await expect(page.get_by_role("link", name="Back to Example Data Portal")).to_be_visible()
        await assert_accessible(page)
        await keep_screenshot(page, tmp_path, "landing")
        await page.get_by_role("link", name="The HTTP API's endpoints").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("The HTTP API")
        await expect(page.get_by_role("table")).to_contain_text("POST /package_datastore")
        await assert_accessible(page)
        await keep_screenshot(page, tmp_path, "api-docs")
        await page.get_by_role("link", name="the OpenAPI document").click()
        await page.wait_for_url("**/openapi.json", timeout=WAIT_MS)

    # Programs (no Accept, or JSON) get what they always got.
    async with aiohttp.ClientSession() as http:
        async with http.get(site.make_url("/")) as resp:
            assert (resp.status, resp.content_type) == (401, "application/json")
        async with http.get(site.make_url(f"/jobs/{JOB}"), headers={"Accept": "application/json"}) as resp:
            assert (resp.status, resp.content_type) == (404, "application/json")
        async with http.get(site.make_url("/jobs/nope"), headers={"Accept": "*/*"}) as resp:
            assert (resp.status, resp.content_type) == (404, "application/json")
