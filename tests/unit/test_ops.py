"""The ingress's operations surface with an in-memory log: /metrics counts, /health answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters import metrics
from packager.adapters.kafka_log import InMemoryEventLog
from packager.core.settings import load_settings
from packager.dev.kafka import free_port
from packager.domain.events import EmailSent, PackageCompleted, PackageFailed, PackageQueued
from packager.http.ingress import create_app
from tests.unit.samples import SECRET, URL_REQUEST
from tests.unit.samples import completed as completed_payload

GOOD = URL_REQUEST


async def public_resolver(host: str) -> list[str]:
    return ["93.184.216.34"]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if found == wanted:
                return float(match.group(3))
    return 0.0


@pytest.fixture
async def client(store_dir: Path) -> AsyncIterator[TestClient]:
    # Nothing listens on this port: the broker is "down" for the readiness probe.
    settings = load_settings(
        {}, secret=SECRET, store_directory=str(store_dir), kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"
    )
    app = create_app(settings, event_log=InMemoryEventLog(), resolver=public_resolver)
    async with TestClient(TestServer(app)) as c:
        yield c


async def scrape(client: TestClient) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return await resp.text()


async def test_metrics_count_accepted_and_rejected_requests_by_reason(client: TestClient) -> None:
    before = await scrape(client)
    assert (await client.post("/package_url", data=GOOD)).status == 200
    assert (await client.post("/package_url", data={**GOOD, "secret": "wrong"})).status == 401
    assert (await client.post("/package_url", data={**GOOD, "email": ""})).status == 400
    assert (await client.post("/package_url", data={**GOOD, "email": ""})).status == 400
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("packager_requests_accepted_total", endpoint="/package_url") == 1
    assert (
        moved("packager_requests_rejected_total", endpoint="/package_url", reason="NotAuthorizedError") == 1
    )
    assert moved("packager_requests_rejected_total", endpoint="/package_url", reason="BadRequestError") == 2
    assert moved("packager_http_requests_total", route="/package_url", method="POST", status="400") == 2
    assert "process_resident_memory_bytes" in after


async def test_live_answers_while_ready_says_why_not(client: TestClient) -> None:
    live = await client.get("/health/live")
    assert live.status == 200 and (await live.json())["status"] == "live"
    ready = await client.get("/health/ready")
    body = await ready.json()
    assert ready.status == 503
    assert body["status"] == "not ready" and "Kafka is unreachable" in body["reason"]


async def test_a_packer_job_is_counted_with_its_lane_rows_bytes_and_duration() -> None:
    completed = completed_payload(
        cache_key="k", resource_id="r", ckan_host="h", lane="slow", zip_file_name="j.zip", rows=1500
    )
    failed = PackageFailed(
        cache_key="k", resource_id="r", email="a@example.org", ckan_host="h", error="no", error_type="X"
    )
    before = metrics.exposition().decode()

    async def job(result: PackageCompleted | PackageFailed) -> PackageCompleted | PackageFailed:
        return result

    assert await metrics.observed_job("slow", job(completed)) is completed
    await metrics.observed_job("slow", job(failed))
    metrics.record_published(PackageQueued(cache_key="k", lane="slow", attempt=1))
    metrics.record_published(EmailSent(cache_key="k", about="PackageCompleted", message_id="m", attempts=1))
    after = metrics.exposition().decode()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("packager_jobs_total", lane="slow", outcome="completed") == 1
    assert moved("packager_jobs_total", lane="slow", outcome="failed") == 1
    assert moved("packager_rows_packaged_total", lane="slow") == 1500
    assert moved("packager_bytes_packaged_total", lane="slow") == 2048
    assert moved("packager_job_duration_seconds_count", lane="slow", outcome="completed") == 1
    assert moved("packager_jobs_queued_total", lane="slow") == 1
    assert moved("packager_emails_sent_total", about="PackageCompleted") == 1
    assert sample(after, "packager_jobs_in_progress", lane="slow") == 0
