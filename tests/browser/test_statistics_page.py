"""The statistics page in a real browser (Debian's chromium, headless): a person types the secret, sees
three charts drawn from the views, picks a resource and sees its charts; a wrong secret says so.

The ingress runs in the test on 127.0.0.1 over SQLite views filled with a known history; the browser has
no network but loopback, so the charts are drawn with nothing from elsewhere. Screenshots are kept (see
`tests.browser.support`) and the page is checked with axe-core.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, expect

from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.resolver import system_resolver
from packager.core.settings import Settings, load_settings
from packager.http.ingress import create_app
from tests.browser.support import PHONE, keep_screenshot, open_page, serious_accessibility_problems
from tests.unit.samples import SECRET, attach_views, fill_views
from tests.unit.test_statistics_page import history

pytestmark = [pytest.mark.browser, pytest.mark.features]


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(store_dir), portal_name="Example Data Portal")


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[TestServer]:
    fill_views(settings, history())
    app = create_app(settings, event_log=InMemoryEventLog(), resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def bars(page: Page, chart: str) -> list[int]:
    """The values of a chart's bars, as drawn (each bar's `data-value`), oldest day first."""
    values: list[str] = await page.locator(f"#chart-{chart} svg rect").evaluate_all(
        "bars => bars.map(b => b.getAttribute('data-value'))"
    )
    return [int(v) for v in values]


async def test_the_statistics_page_draws_charts_after_the_secret_and_per_resource(
    site: TestServer, tmp_path: Path
) -> None:
    async with open_page(tmp_path) as page:
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        await page.goto(str(site.make_url("/statistics/page")))
        await expect(page.get_by_role("heading", name="Download statistics")).to_be_visible()
        await expect(page.locator("#charts")).to_be_hidden()

        await page.get_by_label("Service secret").fill("not the secret")
        await page.get_by_role("button", name="Show").click()
        await expect(page.get_by_role("alert")).to_have_text("The secret is not right. Please type it again.")
        await keep_screenshot(page, tmp_path, "statistics-wrong-secret")

        await page.get_by_label("Service secret").fill(SECRET)
        await page.get_by_role("button", name="Show").click()
        await expect(page.get_by_role("alert")).to_be_hidden()
        requests = page.get_by_role("img", name="Requests per day: 6 in 30 days, most 4 on", exact=False)
        await expect(requests).to_be_visible()
        await expect(
            page.get_by_role("img", name="Failures per day: 1 in 30 days", exact=False)
        ).to_be_visible()
        await expect(
            page.get_by_role("img", name="Unique requesters per day over 30 days, most 3 on", exact=False)
        ).to_be_visible()
        assert len(await bars(page, "requests")) == 30
        assert (await bars(page, "requests"))[-3:] == [2, 0, 4]
        assert (await bars(page, "requesters"))[-3:] == [1, 0, 3]
        box = await page.locator("#chart-requests rect").last.bounding_box()
        assert box is not None and box["height"] > 50, "today's bar is drawn, the tallest"
        await expect(page.locator("#summary")).to_have_text(
            "All resources, since ever: 7 requests, 1 failure, 5 unique requesters."
        )
        await keep_screenshot(page, tmp_path, "statistics")

        await page.get_by_label("Resource").select_option("birds")
        await expect(page.locator("#summary")).to_contain_text(
            "Resource birds, since ever: 1 request, 0 failures"
        )
        assert (await bars(page, "requests"))[-3:] == [0, 0, 1]
        await page.get_by_label("Period").select_option("7")
        await expect(
            page.get_by_role("img", name="Requests per day: 1 in 7 days", exact=False)
        ).to_be_visible()
        await keep_screenshot(page, tmp_path, "statistics-one-resource")

        problems = await serious_accessibility_problems(page)
        assert problems == [], problems

        await page.set_viewport_size(PHONE)
        await expect(page.locator("#chart-requests svg")).to_be_visible()
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, "on a phone the page scrolls sideways"
        await keep_screenshot(page, tmp_path, "statistics-phone")
        origin = str(site.make_url("/"))
        assert all(url.startswith(origin) for url in urls), f"requests outside the service: {urls}"
        assert not any("secret" in url or SECRET in url for url in urls), "the secret went into a URL"
