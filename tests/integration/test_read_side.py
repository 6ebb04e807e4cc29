"""The read side on real Kafka: statistics, status and job pages projected from the log; restart; replay.

A mix of jobs (successes and failures, two requesters, several resources) runs through the service as
separate processes (worker, projector, ingress). Every statistics endpoint is checked against the numbers
the mix implies, the ingress and the projector are restarted and answer the same at once (the views are in
the database, not in the ingress), and the replay tool rebuilds the views from the log and finds no
difference.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from jsonschema import Draft202012Validator

from packager.adapters.kafka_log import Topics
from packager.dev.ckan_server import Faults, SyntheticTable, serve_ckan
from packager.domain.requesters import pseudonym
from packager.domain.schemas import SCHEMA_DIRECTORY
from tests.integration.conftest import SECRET
from tests.integration.support import ROOT, SmtpSink, read_topic, service, wait_for_port

pytestmark = pytest.mark.kafka


async def post(port: int, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}{path}", data={"secret": SECRET, **params}) as resp,
    ):
        return resp.status, await resp.json()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def test_statistics_status_and_jobs_come_from_the_log_and_survive_a_restart(
    kafka_bootstrap: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "a.csv").write_bytes(b"a,b\n1,2\n")
    (folder / "b.csv").write_bytes(b"x\n" * 1000)
    table = SyntheticTable("ds", 3000, seed=1)
    port = int(service_env["PACKAGER_PORT"])
    logs = tmp_path / "logs"

    async with serve_ckan({table.resource_id: table}) as api_url:
        with service(["worker"], service_env, logs) as worker:
            with service(["projector"], service_env, logs), service(["ingress"], service_env, logs):
                wait_for_port(port)
                mix = [
                    (
                        "/package_url",
                        {
                            "resource_id": "res-a",
                            "resource_url": f"{base_url}/a.csv",
                            "email": "ann@example.org",
                        },
                    ),
                    (
                        "/package_url",
                        {
                            "resource_id": "res-a",
                            "resource_url": f"{base_url}/a.csv",
                            "email": "bob@example.org",
                        },
                    ),
                    (
                        "/package_url",
                        {
                            "resource_id": "res-b",
                            "resource_url": f"{base_url}/b.csv",
                            "email": "ann@example.org",
                        },
                    ),
                    (
                        "/package_url",
                        {
                            "resource_id": "res-b",
                            "resource_url": f"{base_url}/gone.csv",
                            "email": "bob@example.org",
                        },
                    ),
                    (
                        "/package_datastore",
                        {"resource_id": "ds", "api_url": api_url, "email": "ann@example.org"},
                    ),
                    (
                        "/package_datastore",
                        {"resource_id": "nope", "api_url": api_url, "email": "ann@example.org"},
                    ),
                ]
                jobs = []
                for path, params in mix:
                    status, body = await post(port, path, **params)
                    assert status == 200, body
                    assert body["status_url"].endswith(f"/jobs/{body['job_id']}")
                    jobs.append(body["job_id"])
                try:
                    await smtp.wait_for(len(mix), timeout=120)
                except TimeoutError:
                    pytest.fail(f"not every job emailed.\nworker log:\n{worker.log()}")

                async def settled() -> bool:
                    # The email is sent before EmailSent is appended, so the pages may lag the sink.
                    _, body = await post(port, "/status")
                    if body.get("queue_length") != 0 or body.get("processed_requests") != len(mix):
                        return False
                    async with aiohttp.ClientSession() as http:
                        for job_id in jobs:
                            async with http.get(f"http://127.0.0.1:{port}/jobs/{job_id}") as resp:
                                if not (await resp.json()).get("emailed"):
                                    return False
                    return True

                await eventually(settled, "the read model to see every job finish")
                before = await snapshot_of_answers(port, jobs)
                check_numbers(before, jobs)
                status, body = await post(port, "/status")
                assert body["worker_count"] == 1

            # A new ingress and projector answer the same, at once: the views outlive both processes.
            with service(["projector"], service_env, logs), service(["ingress"], service_env, logs):
                wait_for_port(port)

                async def same() -> bool:
                    try:
                        return await snapshot_of_answers(port, jobs) == before
                    except (aiohttp.ClientError, KeyError):
                        return False

                await eventually(same, "the restarted ingress to give the same answers", timeout=20)

    # An audit: rebuild every view from the log and compare it with the live views, row by row.
    env = {**os.environ, **service_env, "PYTHONPATH": str(ROOT)}
    audit = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "packager", "replay", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "identical" in audit.stdout

    await check_schemas_and_analytics(kafka_bootstrap, service_env, env)

    history = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "packager", "replay", "history", "--job", jobs[3]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    types = [orjson.loads(line)["type"] for line in history.stdout.splitlines()]
    assert types[0] == "PackageRequested" and "PackageFailed" in types and types[-1] == "EmailSent"


async def check_schemas_and_analytics(
    bootstrap: str, service_env: dict[str, str], env: dict[str, str]
) -> None:
    """Every event emitted validates against its committed schema; analytics mirror them, pseudonymised."""
    topics = Topics(service_env["PACKAGER_TOPIC_PREFIX"])
    schemas = {p.stem: orjson.loads(p.read_bytes()) for p in SCHEMA_DIRECTORY.glob("*.json")}
    emitted = [v for t in (topics.requests, topics.events) for _, v in await read_topic(bootstrap, t)]
    for value in emitted:
        doc = orjson.loads(value)
        Draft202012Validator(schemas[f"{doc['type']}.v{doc['schema_version']}"]).validate(doc)

    async def mirrored() -> bool:
        return len(await read_topic(bootstrap, topics.analytics)) >= len(emitted)

    await eventually(mirrored, "the analytics topic to mirror every event")
    analytics = [orjson.loads(v) for _, v in await read_topic(bootstrap, topics.analytics)]
    assert {a["event_id"] for a in analytics} == {orjson.loads(v)["event_id"] for v in emitted}
    text = orjson.dumps(analytics).decode()
    assert "ann@example.org" not in text and "bob@example.org" not in text  # requesters pseudonymised
    summary = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(ROOT / "examples" / "analytics_summary.py"),
            "--bootstrap",
            bootstrap,
            "--prefix",
            topics.prefix,
            "--max-seconds",
            "4",
            "--every",
            "100",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "requests 6" in summary.stdout and "requesters 2" in summary.stdout, (
        summary.stdout + summary.stderr
    )


async def snapshot_of_answers(port: int, jobs: list[str]) -> dict[str, Any]:
    """Every statistics answer plus the jobs' pages, as one comparable value."""
    answers: dict[str, Any] = {}
    answers["totals"] = (await post(port, "/statistics"))[1]["totals"]
    answers["totals_a"] = (await post(port, "/statistics", resource_id="res-a"))[1]["totals"]
    answers["requests"] = (await post(port, "/statistics/requests"))[1]["requests"]
    answers["requests_bob"] = (await post(port, "/statistics/requests", email="bob@example.org"))[1][
        "requests"
    ]
    answers["requests_page"] = (await post(port, "/statistics/requests", offset="1", limit="2"))[1][
        "requests"
    ]
    answers["errors"] = (await post(port, "/statistics/errors"))[1]["errors"]
    answers["errors_b"] = (await post(port, "/statistics/errors", resource_id="res-b"))[1]["errors"]
    async with aiohttp.ClientSession() as http:
        for job_id in jobs:
            async with http.get(f"http://127.0.0.1:{port}/jobs/{job_id}") as resp:
                answers[job_id] = await resp.json()
    return answers


def check_numbers(answers: dict[str, Any], jobs: list[str]) -> None:
    totals = answers["totals"]
    assert totals["*"] == {"requests": 6, "errors": 2, "emails": 2}
    assert totals["res-a"] == {"requests": 2, "errors": 0, "emails": 2}
    assert totals["res-b"] == {"requests": 2, "errors": 1, "emails": 2}
    assert totals["ds"] == {"requests": 1, "errors": 0, "emails": 1}
    assert totals["nope"] == {"requests": 1, "errors": 1, "emails": 1}
    assert answers["totals_a"] == {"res-a": totals["res-a"]}

    requests = answers["requests"]
    assert len(requests) == 6
    assert [r["timestamp"] for r in requests] == sorted((r["timestamp"] for r in requests), reverse=True)
    # Requesters are pseudonyms by default (ANONYMIZE_EMAILS); the filter takes the address.
    assert {r["email"] for r in answers["requests_bob"]} == {pseudonym(SECRET, "bob@example.org")}
    assert len(answers["requests_bob"]) == 2
    assert answers["requests_page"] == requests[1:3]
    assert all(r["domain"] == "example.org" for r in requests)
    assert {e["resource_id"] for e in answers["errors"]} == {"res-b", "nope"}
    assert [e["resource_id"] for e in answers["errors_b"]] == ["res-b"]
    assert "404" in answers["errors_b"][0]["message"]

    done = answers[jobs[4]]
    assert (done["state"], done["emailed"], done["percent"], done["rows_done"]) == (
        "completed",
        True,
        100.0,
        3000,
    )
    assert done["download_url"].endswith(f"{jobs[4]}.zip")
    assert answers[jobs[1]]["lane"] == "cache"  # the second identical request reused the first's ZIP
    failed = answers[jobs[5]]
    assert failed["state"] == "failed" and "Not Found" in failed["error"] and failed["emailed"] is True


def test_a_wrong_topic_prefix_is_said_and_not_taken_for_an_empty_log(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **service_env,
        "PYTHONPATH": str(ROOT),
        "PACKAGER_TOPIC_PREFIX": "no-such-prefix",
        "PACKAGER_DATABASE_URL": f"sqlite:///{tmp_path / 'views.sqlite3'}",
    }

    def packager(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "packager", *args]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    verify = packager("replay", "verify")
    assert verify.returncode == 2, verify.stdout + verify.stderr
    assert "has no topic no-such-prefix.requests, no-such-prefix.events" in verify.stderr
    assert "is the topic prefix 'no-such-prefix' right?" in verify.stderr and "identical" not in verify.stdout
    once = packager("projector", "--until-caught-up")
    assert once.returncode == 0 and "0 events applied" in once.stdout, once.stdout + once.stderr
    assert "no topic no-such-prefix.requests, no-such-prefix.events at" in once.stderr


async def test_the_event_stream_of_a_running_job_shows_progress_rising_to_100_percent(
    service_env: dict[str, str], smtp: SmtpSink, tmp_path: Path
) -> None:
    table = SyntheticTable("big", 100_000, seed=3)
    env = {**service_env, "PACKAGER_PAGE_SIZE": "2000"}
    port = int(env["PACKAGER_PORT"])
    async with serve_ckan({table.resource_id: table}, faults=Faults(slow_page_delay=0.1)) as api_url:
        with (
            service(["worker"], env, tmp_path / "logs"),
            service(["projector"], env, tmp_path / "logs"),
            service(["ingress"], env, tmp_path / "logs"),
        ):
            wait_for_port(port)
            _, body = await post(
                port, "/package_datastore", resource_id="big", api_url=api_url, email="r@example.org"
            )
            percents: list[float] = []
            states: list[str] = []
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http,
                http.get(f"http://127.0.0.1:{port}/jobs/{body['job_id']}/events") as resp,
            ):
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                async for line in resp.content:
                    if line.startswith(b"data: ") and line.strip() != b"data: {}":
                        job = orjson.loads(line[6:])
                        states.append(job["state"])
                        if job["percent"] is not None:
                            percents.append(job["percent"])
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{port}/jobs/{body['job_id']}", headers={"Accept": "text/html"}
                ) as resp,
            ):
                page = await resp.text()
    assert states[-1] == "completed"
    assert percents == sorted(percents), percents
    assert percents[-1] == 100.0
    assert len({p for p in percents if 0 < p < 100}) >= 3, percents  # progress seen along the way
    assert "job.js" in page and body["job_id"] in page  # the live page (tests/browser runs it)
