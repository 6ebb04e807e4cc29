"""The cache on real Kafka: identical requests reuse a ZIP, concurrent ones build once; clearing; expiry."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from packager.adapters.kafka_log import Topics
from packager.domain.events import Envelope
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, read_events, service, wait_for_port

pytestmark = pytest.mark.kafka


async def post(port: int, path: str, **params: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}{path}", data={"secret": SECRET, **params}) as resp,
    ):
        body = await resp.json()
    assert resp.status == 200, body
    return body


async def download_status(port: int, name: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/downloads/{name}") as resp,
    ):
        return resp.status


def zips(store_dir: Path) -> list[str]:
    return sorted(p.name for p in store_dir.glob("*.zip"))


async def events(bootstrap: str, prefix: str) -> list[Envelope]:
    return await read_events(bootstrap, Topics(prefix).events)


async def test_identical_requests_reuse_one_zip_and_clearing_empties_the_cache(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    store_dir: Path,
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "one.csv").write_bytes(b"a,b\n" * 50_000)
    (folder / "two.csv").write_bytes(b"c,d\n" * 50_000)
    port = int(service_env["PACKAGER_PORT"])
    one = {"resource_id": "one", "resource_url": f"{base_url}/one.csv"}
    two = {"resource_id": "two", "resource_url": f"{base_url}/two.csv"}
    with (
        service(["worker"], service_env, tmp_path / "logs") as worker,
        service(["projector"], service_env, tmp_path / "logs"),
        service(["ingress"], service_env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        await worker.wait_for_output("[^Worker]: Ready")
        first = (await post(port, "/package_url", email="ann@example.org", **one))["job_id"]
        await smtp.wait_for(1)
        started = time.monotonic()
        second = (await post(port, "/package_url", email="bob@example.org", **one))["job_id"]
        await smtp.wait_for(2)
        cache_hit_seconds = time.monotonic() - started

        # Two identical requests at once: one build, two emails.
        together = await asyncio.gather(
            post(port, "/package_url", email="cat@example.org", **two),
            post(port, "/package_url", email="dan@example.org", **two),
        )
        try:
            await smtp.wait_for(4)
        except TimeoutError:
            pytest.fail(f"the shared build did not email both.\n{worker.log()}")

        zips_before = zips(store_dir)
        await post(port, "/clear_caches")
        deadline = time.monotonic() + 30
        while zips(store_dir):
            assert time.monotonic() < deadline, "clear_caches left files in the store"
            await asyncio.sleep(0.3)
        # A cleared link is gone, like an expired one; a name never built is not found.
        cleared = {name: await download_status(port, name) for name in zips_before}
        assert cleared == dict.fromkeys(zips_before, 410)
        assert await download_status(port, "never-built.zip") == 404
        third = (await post(port, "/package_url", email="eve@example.org", **one))["job_id"]
        await smtp.wait_for(5)

    log = await events(kafka_bootstrap, topic_prefix)
    completed = {e.job_id: e.payload for e in log if e.type == "PackageCompleted"}
    started_jobs = Counter(e.job_id for e in log if e.type == "PackageStarted")
    assert completed[second].cached_from == first  # type: ignore[attr-defined]
    assert completed[second].zip_file_name == completed[first].zip_file_name  # type: ignore[attr-defined]
    assert second not in started_jobs, "a cache hit was packaged again"
    a, b = (t["job_id"] for t in together)
    assert sum(started_jobs[j] for j in (a, b)) == 1, "two identical concurrent requests built twice"
    assert {completed[a].zip_file_name, completed[b].zip_file_name} == {  # type: ignore[attr-defined]
        completed[a].zip_file_name  # type: ignore[attr-defined]
    }
    assert len(zips_before) == 2
    assert completed[third].cached_from == "" and started_jobs[third] == 1  # type: ignore[attr-defined]
    assert sum(1 for e in log if e.type == "CacheCleared") == int(service_env["PACKAGER_PARTITIONS"])
    assert Counter(m["To"] for m in smtp.messages) == Counter(
        ["ann@example.org", "bob@example.org", "cat@example.org", "dan@example.org", "eve@example.org"]
    )
    assert cache_hit_seconds < 30  # sanity only; latency is measured by the load benchmark, not here


async def test_the_janitor_expires_old_packages(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    store_dir: Path,
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "old.csv").write_bytes(b"x\n")
    env = {**service_env, "PACKAGER_CACHE_TIME": "3", "PACKAGER_JANITOR_INTERVAL": "1"}
    port = int(env["PACKAGER_PORT"])
    with (
        service(["worker"], env, tmp_path / "logs"),
        service(["projector"], env, tmp_path / "logs"),
        service(["ingress"], env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        job = (
            await post(
                port,
                "/package_url",
                email="ann@example.org",
                resource_id="old",
                resource_url=f"{base_url}/old.csv",
            )
        )["job_id"]
        await smtp.wait_for(1)
        deadline = time.monotonic() + 30
        while (store_dir / f"{job}.zip").exists():
            assert time.monotonic() < deadline, "the janitor did not remove the expired ZIP"
            await asyncio.sleep(0.5)
        assert await download_status(port, f"{job}.zip") == 410
    expired = [e for e in await events(kafka_bootstrap, topic_prefix) if e.type == "PackageExpired"]
    assert expired and all(e.job_id == job for e in expired)
