"""A requester's view of the whole service, in Debian's chromium: the link from the accept answer, opened at
once, follows the job live (no reload) through progress to the download link and the email line turning to
"sent"; the download saves under a name that says what it is; a failing request says so in plain words.

The service runs as separate processes (worker, projector, ingress) on a real Kafka broker, with the CKAN
stand-in and an SMTP sink, as in `tests/integration/test_read_side.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect

from packager.dev.ckan_server import Faults, SyntheticTable, serve_ckan
from tests.browser.support import keep_screenshot, open_page, serious_accessibility_problems
from tests.integration.support import SmtpSink, service, wait_for_port
from tests.integration.test_read_side import post

pytestmark = [pytest.mark.kafka, pytest.mark.browser, pytest.mark.features]

JOB_MS = 120_000  # the whole job, on a loaded 2-core machine


async def test_a_requester_follows_a_job_live_in_the_browser_to_its_download_and_email(
    service_env: dict[str, str], smtp: SmtpSink, tmp_path: Path
) -> None:
    table = SyntheticTable("specimens", 60_000, seed=5)
    env = {**service_env, "PACKAGER_PAGE_SIZE": "2000", "PACKAGER_PORTAL_NAME": "Test Portal"}
    port = int(env["PACKAGER_PORT"])
    async with serve_ckan({table.resource_id: table}, faults=Faults(slow_page_delay=0.2)) as api_url:
        with (
            service(["worker"], env, tmp_path / "logs"),
            service(["projector"], env, tmp_path / "logs"),
            service(["ingress"], env, tmp_path / "logs"),
        ):
            wait_for_port(port)
            _, good = await post(
                port,
                "/package_datastore",
                resource_id="specimens",
                api_url=api_url,
                email="r@example.org",
                format="xlsx",
            )
            _, bad = await post(
                port, "/package_datastore", resource_id="nope", api_url=api_url, email="r@example.org"
            )
            async with open_page(tmp_path) as page:
                loads: list[str] = []
                page.on("load", lambda loaded: loads.append(loaded.url))
                await page.goto(good["status_url"])
                bar = page.get_by_role("progressbar", name="Progress of the download being prepared")
                # Progress shown part-way, then the link: all in the page first loaded.
                await page.wait_for_function(
                    "() => { const b = document.getElementById('bar');"
                    " return b && b.value > 0 && b.value < 100; }",
                    timeout=JOB_MS,
                )
                await expect(page.locator("#progress")).to_contain_text("rows")
                await expect(page.locator("main")).to_contain_text("All rows; every column.")
                await expect(page.locator("main")).to_contain_text("Excel workbook (XLSX)")
                link = page.get_by_role("link", name="Download ZIP (")
                await expect(link).to_be_visible(timeout=JOB_MS)
                await expect(bar).to_be_hidden()
                await expect(page.locator("#email")).to_contain_text("Sent", timeout=JOB_MS)
                assert loads == [good["status_url"]], "the page was reloaded"
                problems = await serious_accessibility_problems(page)
                assert problems == [], problems
                await keep_screenshot(page, tmp_path, "completed-live")
                async with page.expect_download() as saving:
                    await link.click()
                saved = await saving.value
                assert saved.suggested_filename.startswith("specimens_")
                assert saved.suggested_filename.endswith(".zip")

                await page.goto(bad["status_url"])
                await expect(page.get_by_role("status")).to_have_text("Could not be prepared", timeout=JOB_MS)
                await expect(page.locator("#message")).to_contain_text("The data portal refused the query")
                await expect(page.locator("#next")).to_be_visible()
                await expect(page.get_by_role("progressbar")).to_be_hidden()
                body = await page.locator("body").inner_text()
                assert api_url not in body and "127.0.0.1" not in body
                await keep_screenshot(page, tmp_path, "failed-live")
