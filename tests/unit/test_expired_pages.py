"""The page of a download whose file is gone says how to ask for it again: expired, or cleared early."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.resolver import system_resolver
from packager.core.settings import Settings, load_settings
from packager.domain.events import PackageRequested, envelope
from packager.http.ingress import create_app
from tests.unit.samples import SECRET, attach_views, completed, fill_views

pytestmark = pytest.mark.features

EXPIRED = "0b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d70"
CLEARED = "1b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d71"
ASK_AGAIN = (
    "Please ask for the data again from the dataset's page on Example Portal (https://portal.example.org), "
    "as you did the first time"
)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings(
        {},
        secret=SECRET,
        store_directory=str(store_dir),
        portal_name="Example Portal",
        portal_url="https://portal.example.org",
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    now = datetime.now(UTC)
    records = []
    # One completed two days ago (past CACHE_TIME), one an hour ago whose file was cleared since.
    for n, (job, finished) in enumerate(
        ((EXPIRED, now - timedelta(days=2)), (CLEARED, now - timedelta(hours=1)))
    ):
        asked = PackageRequested(
            kind="url", cache_key="ck", resource_id="r1", email="a@example.org", ckan_host="h", request={}
        )
        done = completed(zip_file_name=f"{job}.zip", size=2048, finished_at=iso(finished))
        records += [
            ("t.requests", 0, n, envelope(job, asked, occurred_at=iso(finished - timedelta(minutes=1)))),
            ("t.events", 0, n, envelope(job, done, occurred_at=iso(finished))),
        ]
    fill_views(settings, records)
    app = create_app(settings, event_log=InMemoryEventLog(), resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


async def page_text(client: TestClient, job_id: str) -> str:
    resp = await client.get(f"/jobs/{job_id}", headers={"Accept": "text/html"})
    assert resp.status == 200
    return html.unescape(await resp.text())


async def test_an_expired_download_s_page_says_where_to_ask_for_it_again(client: TestClient) -> None:
    text = await page_text(client, EXPIRED)
    assert ">Expired<" in text and "has expired, and its file was removed" in text
    assert ASK_AGAIN in text and "The link worked until" in text
    shown = (await (await client.get(f"/jobs/{EXPIRED}")).json())["display"]
    assert shown["state"] == "expired" and shown["next"].startswith(ASK_AGAIN)


async def test_a_cleared_download_s_page_says_it_was_removed_early_and_how_to_ask_again(
    client: TestClient,
) -> None:
    text = await page_text(client, CLEARED)
    assert ">Expired<" in text and "removed before its link expired" in text
    assert ASK_AGAIN in text and "The link worked until" not in text
