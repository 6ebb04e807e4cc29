"""Statistics per day (`/statistics/daily`) and the statistics page (`/statistics/page`) on SQLite views:
the numbers a chart is drawn from, the secret kept out of URLs, and the page's form."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.resolver import system_resolver
from packager.cli import operator as cli
from packager.core.settings import Settings, load_settings
from packager.domain.events import Envelope, PackageFailed, PackageRequested, envelope
from packager.http.ingress import create_app
from tests.unit.samples import SECRET, attach_views, fill_views

pytestmark = pytest.mark.features


def _at(days_ago: int, hour: int) -> str:
    day = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0) - timedelta(days=days_ago)
    return day.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def history() -> list[tuple[str, int, int, Envelope]]:
    """Requests and failures over the last days: (days ago, resource, requester, failed).

    Today: 3 requests on `specimens` by 2 people, 1 on `birds`, 1 failure; 2 days ago: 2 requests on
    `specimens` by one person; 40 days ago: 1 request (outside a 30-day period).
    """
    asked = [
        (0, "specimens", "ann@example.org", False),
        (0, "specimens", "ann@example.org", True),
        (0, "specimens", "bob@example.net", False),
        (0, "birds", "cat@example.com", False),
        (2, "specimens", "dan@example.org", False),
        (2, "specimens", "dan@example.org", False),
        (40, "specimens", "eve@example.org", False),
    ]
    records: list[tuple[str, int, int, Envelope]] = []
    for offset, (days_ago, resource, email, fails) in enumerate(asked):
        job = str(uuid.uuid4())
        request = PackageRequested(
            kind="url", cache_key=job, resource_id=resource, email=email, ckan_host="h", request={}
        )
        records.append(("t.requests", 0, offset, envelope(job, request, occurred_at=_at(days_ago, 0))))
        if fails:
            failure = PackageFailed(
                cache_key=job, resource_id=resource, email=email, ckan_host="h", error="boom", error_type="E"
            )
            records.append(("t.events", 0, offset, envelope(job, failure, occurred_at=_at(days_ago, 0))))
    return records


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(store_dir))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    app = create_app(settings, event_log=InMemoryEventLog(), resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


def _day(days_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()


async def test_daily_statistics_count_requests_failures_and_people_per_day(
    settings: Settings, client: TestClient
) -> None:
    fill_views(settings, history())
    answer = await client.post("/statistics/daily", data={"secret": SECRET, "days": "7"})
    assert answer.status == 200
    body = await answer.json()
    assert body["resource_id"] == "*"
    days = body["days"]
    assert [d["date"] for d in days] == [_day(n) for n in range(6, -1, -1)], "7 days, oldest first"
    by_date = {d["date"]: (d["requests"], d["errors"], d["requesters"]) for d in days}
    assert by_date[_day(0)] == (4, 1, 3)
    assert by_date[_day(2)] == (2, 0, 1)
    assert by_date[_day(1)] == (0, 0, 0), "a day without requests is there, as zeros"

    one = await client.post("/statistics/daily", json={"secret": SECRET, "resource_id": "birds", "days": 3})
    days = (await one.json())["days"]
    assert [(d["requests"], d["errors"], d["requesters"]) for d in days] == [(0, 0, 0), (0, 0, 0), (1, 0, 1)]

    default = await (await client.post("/statistics/daily", data={"secret": SECRET})).json()
    assert len(default["days"]) == 30
    assert sum(d["requests"] for d in default["days"]) == 6, "the request of 40 days ago is outside"
    year = await (await client.post("/statistics/daily", data={"secret": SECRET, "days": "366"})).json()
    assert sum(d["requests"] for d in year["days"]) == 7


async def test_daily_statistics_need_the_secret_and_a_sane_period(
    settings: Settings, client: TestClient
) -> None:
    fill_views(settings, history())
    assert (await client.post("/statistics/daily", data={"secret": "wrong"})).status == 401
    assert (await client.post("/statistics/daily", data={})).status == 401
    for days in ("0", "367", "-1", "x"):
        answer = await client.post("/statistics/daily", data={"secret": SECRET, "days": days})
        assert answer.status == 400, days
        assert "days" in (await answer.json())["message"]


async def test_the_statistics_page_asks_for_the_secret_and_never_puts_it_in_a_url(
    client: TestClient,
) -> None:
    answer = await client.get("/statistics/page", headers={"Accept": "text/html"})
    assert answer.status == 200 and answer.content_type == "text/html"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    text = await answer.text()
    # The form posts (a GET form would put the secret in the URL, so in access logs and histories).
    assert '<form id="ask" class="ask" method="post" action="daily">' in text
    assert 'type="password"' in text
    assert '<script src="../static/stats.js" defer></script>' in text
    assert "http://" not in text and "https://" not in text, "nothing is loaded from elsewhere"
    script = await client.get("/static/stats.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    source = await script.text()
    assert "http" not in source.replace("http://www.w3.org/2000/svg", ""), "no CDN, no outside URL"
    assert 'method: "POST"' in source


async def test_the_cli_prints_statistics_per_day(
    settings: Settings, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_views(settings, history())
    host = str(client.make_url("/")).rstrip("/")
    argv = ["stats", "daily", "--days", "3", "-r", "specimens", "-p", host, "--no-defaults", "-x"]
    status = await asyncio.to_thread(cli.main, argv, {"CKANPACKAGER_SECRET": SECRET})
    lines = capsys.readouterr().out.splitlines()
    assert status == 1, "-x: the period had a failure"
    assert lines[0].split() == ["day", "(UTC)", "requests", "errors", "requesters"]
    assert [line.split() for line in lines[-3:]] == [
        [_day(2), "2", "0", "1"],
        [_day(1), "0", "0", "0"],
        [_day(0), "3", "1", "2"],
    ]
