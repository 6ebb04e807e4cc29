"""Fair limits on a real broker: 429 with `Retry-After`, words for the requester, and nothing appended.

The ingress runs in-process on real Kafka; the views are brought up to date by the projector's own code
(`run_projector(..., until_caught_up=True)`), so each test decides when the views see what. No worker runs:
accepted jobs stay queued (in progress) until the test appends their end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import KafkaEventLog, Topics
from packager.adapters.projector import run_projector
from packager.core.settings import Settings, load_settings
from packager.domain.events import PackageFailed, envelope
from packager.http.app_keys import LIMITS, SETTINGS
from packager.http.ingress import create_app
from tests.integration.support import ROOT, end_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.features]

SECRET = "integration-test-secret-0123456789"
ERROR_KEYS = {"success", "msg", "status", "error", "message", "retry_after"}


async def resolver(host: str) -> list[str]:
    return ["93.184.216.34"]


def request(email: str, resource_id: str = "r1", n: int = 0) -> dict[str, str]:
    return {
        "secret": SECRET,
        "resource_id": resource_id,
        # Different files: different cache keys, so no request shares another's build.
        "resource_url": f"https://data.example.org/files/{resource_id}-{email}-{n}.csv",
        "email": email,
    }


@pytest.fixture
def settings_for(kafka_bootstrap: str, topic_prefix: str, store_dir: Path) -> Callable[..., Settings]:
    def make(**limits: int) -> Settings:
        return load_settings(
            {},
            secret=SECRET,
            kafka_bootstrap_servers=kafka_bootstrap,
            topic_prefix=topic_prefix,
            partitions=2,
            store_directory=str(store_dir),
            **limits,
        )

    return make


@asynccontextmanager
async def ingress(settings: Settings) -> AsyncIterator[TestClient]:
    """An ingress reading the views (a new one forgets what an earlier one accepted)."""
    async with TestClient(TestServer(create_app(settings, resolver=resolver))) as client:
        yield client


async def accept(client: TestClient, params: dict[str, str]) -> str:
    resp = await client.post("/package_url", data=params)
    body = await resp.json()
    assert resp.status == 200, body
    return str(body["job_id"])


async def refused(client: TestClient, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Post a request that must be refused with 429; (Retry-After, body). Nothing may reach any topic."""
    settings = client.app[SETTINGS]
    topics = Topics(settings.topic_prefix)
    bootstrap = settings.kafka_bootstrap_servers
    watched = (topics.requests, topics.events, topics.requester_keys)
    before = {t: await end_offsets(bootstrap, t) for t in watched}
    resp = await client.post("/package_url", data=params)
    body = await resp.json()
    assert resp.status == 429, body
    assert set(body) == ERROR_KEYS
    assert body["success"] is False and body["status"] == "failed"
    assert body["error"] == "TooManyRequestsError" and body["msg"] == body["message"]
    retry_after = int(resp.headers["Retry-After"])
    assert retry_after == body["retry_after"] and retry_after >= 1
    after = {t: await end_offsets(bootstrap, t) for t in before}
    assert after == before, "a refused request appended something"
    return retry_after, body


async def end_job(settings: Settings, job_id: str) -> None:
    """Append a job's end (as its steward would), so that it is no longer in progress."""
    log = KafkaEventLog(
        settings.kafka_bootstrap_servers, Topics(settings.topic_prefix), partitions=2, send_timeout=10
    )
    try:
        failed = PackageFailed(
            cache_key="k", resource_id="r1", email="", ckan_host="", error="stopped", error_type="Test"
        )
        await log.append(Topics(settings.topic_prefix).events, "k", envelope(job_id, failed))
    finally:
        await log.close()


async def test_a_requester_with_as_many_jobs_in_progress_as_allowed_is_told_to_wait(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for(max_active_jobs_per_requester=2)
    ann = "ann@example.org"
    async with ingress(settings) as client:
        first = await accept(client, request(ann, n=1))
        await accept(client, request(ann, n=2))
        # The views do not show these two yet: the ingress counts what it accepted itself.
        retry_after, body = await refused(client, request(ann, n=3))
        assert retry_after == 60
        assert "You already have 2 downloads being prepared" in body["message"]
        assert "try again in a few minutes" in body["message"]
        await accept(client, request("bob@example.org", n=3))  # another requester is not held back
    await run_projector(settings, until_caught_up=True)
    async with ingress(settings) as client:  # a new ingress: only the views know the two jobs
        await refused(client, request(ann.upper(), n=3))  # the same person, however the address is cased
        await end_job(settings, first)
        await run_projector(settings, until_caught_up=True)
        await accept(client, request(ann, n=3))  # one of the two ended: there is room for one more


async def test_a_requester_past_the_hourly_limit_is_told_when_to_ask_again(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for(max_requests_per_hour_per_requester=2)
    ann = "ann@example.org"
    async with ingress(settings) as client:
        jobs = [await accept(client, request(ann, n=n)) for n in (1, 2)]
        started = time.time()
        retry_after, _ = await refused(client, request(ann, n=3))
        assert 3500 <= retry_after <= 3600
    for job_id in jobs:  # finished jobs still count in the hour
        await end_job(settings, job_id)
    await run_projector(settings, until_caught_up=True)
    async with ingress(settings) as client:
        retry_after, body = await refused(client, request(ann, n=3))
        # The operator command line shows the same words.
        pairs = [f"{k}:{v}" for k, v in request(ann, n=4).items() if k != "secret"]
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "packager.cli.operator", "-D", "-s", SECRET),
            *("-p", f"127.0.0.1:{client.port}", "queue", "package_url", *pairs),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
        )
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 1, out.decode()
        assert "is limiting requests: You have asked for 2 downloads in the last hour" in err.decode()
        assert "Please try again after " in err.decode()
    # The first request leaves the window an hour after it was made.
    assert started - 60 + 3600 <= time.time() + retry_after <= started + 3600 + 5
    assert "You have asked for 2 downloads in the last hour" in body["message"]
    assert "Please try again after " in body["message"] and " UTC (in " in body["message"]


async def test_a_resource_with_as_many_jobs_in_progress_as_allowed_refuses_more(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for(max_active_jobs_per_resource=1)
    async with ingress(settings) as client:
        await accept(client, request("ann@example.org", "busy"))
    await run_projector(settings, until_caught_up=True)
    async with ingress(settings) as client:
        retry_after, body = await refused(client, request("bob@example.org", "busy"))
        assert retry_after == 60
        assert "This resource already has 1 download being prepared" in body["message"]
        assert "Please try again in a few minutes" in body["message"]
        await accept(client, request("bob@example.org", "quiet"))


async def test_the_ingress_forgets_what_the_views_show_and_counts_it_once(
    settings_for: Callable[..., Settings],
) -> None:
    """The offsets Kafka gave the requests, against the projector's positions in the views."""
    settings = settings_for(max_active_jobs_per_requester=3)
    ann = "ann@example.org"
    async with ingress(settings) as client:
        limits = client.app[LIMITS]
        for n in (1, 2):
            await accept(client, request(ann, n=n))
        assert limits.pending == 2
        await run_projector(settings, until_caught_up=True)
        await accept(client, request(ann, n=3))
        assert limits.pending == 1  # the first two are in the views now, counted there only
        _, body = await refused(client, request(ann, n=4))
        assert "You already have 3 downloads being prepared" in body["message"]


async def test_without_limits_nothing_is_counted(settings_for: Callable[..., Settings]) -> None:
    """The default (0: no limit) accepts as the service always did."""
    async with ingress(settings_for()) as client:
        for n in range(5):
            await accept(client, request("ann@example.org", n=n))
