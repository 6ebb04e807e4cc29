"""Operations on real components: /metrics moves on the ingress and the worker, /health/ready turns 200,
and every log line is a JSON object, tagged with its job and free of the shared secret.

The ingress and a worker run as separate processes on a real broker; CKAN is the project's compatible
server in this test process; SMTP is aiosmtpd.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from packager.dev.ckan_server import SyntheticTable, serve_ckan
from tests.integration.conftest import SECRET
from tests.integration.support import ServiceProcess, SmtpSink, service, wait_for_port

pytestmark = pytest.mark.kafka

TABLE = SyntheticTable("ops-specimens", 2_000, seed=3)
ROWS = 250


@pytest.fixture
async def ckan() -> AsyncIterator[str]:
    async with serve_ckan({TABLE.resource_id: TABLE}) as url:
        yield url


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    wanted = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if (
            match
            and match.group(1) == name
            and sorted(filter(None, (match.group(2) or "").split(","))) == wanted
        ):
            return float(match.group(3))
    return 0.0


def log_lines(process: ServiceProcess) -> list[dict[str, object]]:
    """Every line the process wrote, each of which must be one JSON object."""
    lines = process.log_file.read_text(errors="replace").splitlines()
    parsed = []
    for line in lines:
        if line.strip():
            try:
                parsed.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pytest.fail(f"{process.argv} wrote a line that is not JSON: {line!r}")
    return parsed


async def metrics_port_of(worker: ServiceProcess) -> int:
    """The port the worker's ops server took (METRICS_PORT=0), from its start-up log line."""
    await worker.wait_for_output("metrics listening on")
    for line in log_lines(worker):
        if "metrics_port" in line:
            return int(str(line["metrics_port"]))
    raise AssertionError(f"no metrics_port in the worker's log:\n{worker.log()}")


async def wait_ready(http: aiohttp.ClientSession, url: str, process: ServiceProcess) -> dict[str, object]:
    """Poll /health/ready until it answers 200 (deadline 90 s); the last answer names what was missing."""
    deadline = time.monotonic() + 90
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as resp:
                body = await resp.json()
                if resp.status == 200:
                    return body
                assert resp.status == 503, body
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.5)
    pytest.fail(f"{url} never turned ready (last answer {body}).\n{process.log()}")


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_metrics_move_health_turns_ready_and_logs_are_json_with_job_ids(
    service_env: dict[str, str], smtp: SmtpSink, ckan: str, tmp_path: Path
) -> None:
    port = int(service_env["PACKAGER_PORT"])
    ingress_url = f"http://127.0.0.1:{port}"
    with (
        service(["worker", "--lanes", "fast"], service_env, tmp_path / "logs") as worker,
        service(["projector"], service_env, tmp_path / "logs"),
        service(["ingress"], service_env, tmp_path / "logs") as ingress,
    ):
        wait_for_port(port)
        worker_url = f"http://127.0.0.1:{await metrics_port_of(worker)}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ingress_url}/health/live") as resp:
                assert resp.status == 200
            async with http.get(f"{worker_url}/health/live") as resp:
                assert resp.status == 200
            await wait_ready(http, f"{ingress_url}/health/ready", ingress)
            ready = await wait_ready(http, f"{worker_url}/health/ready", worker)
            assert int(str(ready["partitions"])) > 0

            ingress_before = await scrape(http, f"{ingress_url}/metrics")
            worker_before = await scrape(http, f"{worker_url}/metrics")

            async with http.post(f"{ingress_url}/package_datastore", data={"secret": "wrong"}) as resp:
                assert resp.status == 401
            async with http.post(
                f"{ingress_url}/package_datastore",
                data={
                    "secret": SECRET,
                    "api_url": ckan,
                    "resource_id": TABLE.resource_id,
                    "limit": str(ROWS),
                    "email": "requester@example.org",
                    "key": "ckan-api-key-never-logged",
                },
            ) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            job_id = str(body["job_id"])
            try:
                await smtp.wait_for(1, timeout=90)
            except TimeoutError:
                pytest.fail(f"no email arrived.\nworker log:\n{worker.log()}")

            # The email's EmailSent is counted once the agent appended it: poll the scrape with a deadline.
            deadline = time.monotonic() + 30
            while True:
                worker_after = await scrape(http, f"{worker_url}/metrics")
                emails = sample(worker_after, "packager_emails_sent_total", about="PackageCompleted")
                if emails >= 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            # The projector folds the last events within a moment: the views then hold the whole log.
            while True:
                ingress_after = await scrape(http, f"{ingress_url}/metrics")
                if sample(ingress_after, "packager_read_model_caught_up") == 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)

    def moved(before: str, after: str, name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert (
        moved(
            ingress_before, ingress_after, "packager_requests_accepted_total", endpoint="/package_datastore"
        )
        == 1
    )
    assert (
        moved(
            ingress_before,
            ingress_after,
            "packager_requests_rejected_total",
            endpoint="/package_datastore",
            reason="NotAuthorizedError",
        )
        == 1
    )
    assert sample(ingress_after, "packager_read_model_caught_up") == 1
    assert moved(worker_before, worker_after, "packager_jobs_total", lane="fast", outcome="completed") == 1
    assert moved(worker_before, worker_after, "packager_jobs_queued_total", lane="fast") == 1
    assert moved(worker_before, worker_after, "packager_rows_packaged_total", lane="fast") == ROWS
    assert moved(worker_before, worker_after, "packager_bytes_packaged_total", lane="fast") > 0
    assert (
        moved(
            worker_before,
            worker_after,
            "packager_job_duration_seconds_count",
            lane="fast",
            outcome="completed",
        )
        == 1
    )
    assert moved(worker_before, worker_after, "packager_emails_sent_total", about="PackageCompleted") == 1
    assert sample(worker_after, "packager_worker_ready") == 1
    assert "packager_consumer_lag{" in worker_after

    worker_lines, ingress_lines = log_lines(worker), log_lines(ingress)
    about_job = [line for line in worker_lines if line.get("job_id") == job_id]
    assert any(str(line["msg"]).startswith("job completed") for line in about_job), "the packer's line"
    assert any(line["msg"] == "email sent" for line in about_job), "the mailer's line names the job"
    assert any(line.get("job_id") == job_id for line in ingress_lines), "the ingress's line names the job"
    for process in (worker, ingress):
        text = process.log_file.read_text(errors="replace")
        assert SECRET not in text and "ckan-api-key-never-logged" not in text
