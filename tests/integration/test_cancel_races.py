"""Cancelling datastore builds on the real service, up to the moment they complete.

Worker, projector and ingress run as processes on a real broker, with the project's CKAN server answering
`datastore_search` slowly, an SMTP sink, and EMAIL_CANCELLATIONS on (so every job gets exactly one email).

1. A datastore build that is fetching pages is cancelled by its requester: the build stops and its partial
   file leaves the store within 2 s; the job ends with one `PackageCancelled`; no ZIP is published.
2. The race: jobs whose build takes about two seconds are cancelled at once, after completion, then ever
   closer to the moment they complete (each cancel halves the window between the latest one that won and
   the latest that lost: the last ones land within milliseconds of the completion). Whatever wins, each job
   has exactly one terminal event, the cancel answer agrees with it (200 cancelled / 409 completed), the one
   email matches it (a cancellation note, or the completion with its link), a cancelled job leaves no ZIP,
   and a completed one keeps its ZIP.
3. After the run, the Grafana dashboard's expressions are checked against what the running ingress and
   worker really serve on `/metrics`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from packager.adapters.kafka_log import Topics
from packager.dev.ckan_server import Faults, SyntheticTable, serve_ckan
from packager.dev.kafka import free_port
from packager.domain.emails import JOB_HEADER
from tests.integration.conftest import SECRET
from tests.integration.support import (
    SmtpSink,
    partial_files,
    post_form,
    read_events,
    running_stack,
    wait_for_event,
    wait_until,
    wait_until_group_caught_up,
)
from tests.unit.test_grafana_dashboard import DASHBOARD, expressions, series_in

pytestmark = [pytest.mark.kafka, pytest.mark.features]

TERMINAL = {"PackageCompleted", "PackageFailed", "PackageCancelled"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
# When each race's cancel is sent, in units of an uncancelled build's measured time (accept answer to the
# completion seen in the views): the first at once (before its build ends, whatever the load), the second
# once its job shows completed; then each halves the window between the latest cancel that won and the
# latest that lost (from 0 to 1.5), so the others land ever closer to the moment the job completes, where
# the two terminal events race.
RACES = 10


async def job_state(port: int, job_id: str) -> str | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/jobs/{job_id}", headers={"Accept": "application/json"}) as resp,
    ):
        return str((await resp.json())["state"]) if resp.status == 200 else None


async def served_series(url: str) -> set[str]:
    """Every series name a `/metrics` answer declares or samples (a family's name and its samples')."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, url
        text = await resp.text()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            family.type, ("",)
        )
        names.update(family.name + s for s in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


async def test_cancels_stop_datastore_builds_and_a_cancel_racing_completion_ends_the_job_once(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    store_dir: Path,
    tmp_path: Path,
) -> None:
    env = {**service_env, "PACKAGER_EMAIL_CANCELLATIONS": "true", "PACKAGER_PAGE_SIZE": "500"}
    worker_metrics = free_port()
    port = int(env["PACKAGER_PORT"])
    partial, logs = store_dir / ".partial", tmp_path / "logs"
    slow_table, quick_table = (
        SyntheticTable("slow-birds", 50_000, seed=3),
        SyntheticTable("birds", 3_000, seed=4),
    )
    async with (
        serve_ckan({slow_table.resource_id: slow_table}, faults=Faults(slow_page_delay=0.4)) as slow_api,
        serve_ckan({quick_table.resource_id: quick_table}, faults=Faults(slow_page_delay=0.12)) as quick_api,
    ):
        with running_stack(
            env, logs, projector=True, worker_env={"PACKAGER_METRICS_PORT": str(worker_metrics)}
        ) as stack:
            # 1. A build fetching pages from a slow portal is stopped, and its partial file removed.
            asked = {"secret": SECRET, "api_url": slow_api, "resource_id": slow_table.resource_id}
            status, slow = await post_form(port, "/package_datastore", **asked, email="sam@example.org")
            assert status == 200, slow
            try:
                await wait_for_event(
                    kafka_bootstrap,
                    topic_prefix,
                    lambda e: e.job_id == slow["job_id"] and e.type == "PackageProgress",
                    90,
                )
                await wait_until(lambda: partial_files(partial, slow["job_id"]), 30, "no partial file")
            except TimeoutError:
                pytest.fail(stack.diagnostics())
            started = time.monotonic()
            gone = asyncio.create_task(
                wait_until(lambda: not partial_files(partial, slow["job_id"]), 10, "the partial file stayed")
            )
            status, answer = await post_form(
                port, f"/jobs/{slow['job_id']}/cancel", token=slow["cancel_token"]
            )
            assert (status, answer.get("state")) in ((200, "cancelled"), (202, None)), answer
            stopped_after = await gone - started
            assert stopped_after < 2.0, f"the build stopped {stopped_after:.2f}s after the cancel"

            # 2. Calibration: one build left alone, timed from its accept answer to its completion.
            quick = {"secret": SECRET, "api_url": quick_api, "resource_id": quick_table.resource_id}
            accepted = time.monotonic()
            status, alone = await post_form(port, "/package_datastore", **quick, email="al@example.org")
            assert status == 200, alone
            try:
                done = await wait_until(
                    functools.partial(_state_in, port, alone["job_id"], ("completed",)), 120, "no completion"
                )
            except TimeoutError:
                pytest.fail(stack.diagnostics())
            build_time = done - accepted

            # The races: each job asks for different rows (its own cache key, so its own build).
            races: dict[str, tuple[float, int, dict[str, Any]]] = {}
            won, lost = 0.0, 1.5
            for n in range(1, RACES + 1):
                at = 0.0 if n == 1 else lost if n == 2 else (won + lost) / 2
                accepted = time.monotonic()
                status, job = await post_form(
                    port, "/package_datastore", **quick, offset=str(n), email=f"r{n}@example.org"
                )
                assert status == 200, job
                if n == 2:
                    await wait_until(
                        functools.partial(_state_in, port, job["job_id"], ("completed",)),
                        120,
                        "no completion",
                    )
                await asyncio.sleep(max(0.0, accepted + at * build_time - time.monotonic()))
                answered = await post_form(port, f"/jobs/{job['job_id']}/cancel", token=job["cancel_token"])
                races[job["job_id"]] = (at, *answered)
                try:
                    await wait_until(
                        functools.partial(
                            _state_in, port, job["job_id"], ("completed", "cancelled", "failed")
                        ),
                        120,
                        f"job {job['job_id']} never ended",
                    )
                except TimeoutError:
                    pytest.fail(stack.diagnostics())
                if n > 2 and await job_state(port, job["job_id"]) == "cancelled":
                    won = at
                elif n > 2:
                    lost = at

            jobs = [slow["job_id"], alone["job_id"], *races]
            try:
                await smtp.wait_for(len(jobs), timeout=90)
                await wait_until_group_caught_up(
                    kafka_bootstrap, Topics(topic_prefix).events, f"{topic_prefix}-mailer"
                )
            except TimeoutError:
                pytest.fail(stack.diagnostics())

            # 3. The dashboard reads only series the running processes serve.
            served = await served_series(f"http://127.0.0.1:{port}/metrics")
            served |= await served_series(f"http://127.0.0.1:{worker_metrics}/metrics")

    for expr in expressions(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
        missing = series_in(expr) - served
        assert not missing, f"{expr!r} reads series no process serves: {sorted(missing)}"

    events = await read_events(kafka_bootstrap, Topics(topic_prefix).events)
    ends = {job: [e.type for e in events if e.job_id == job and e.type in TERMINAL] for job in jobs}
    assert all(len(types) == 1 for types in ends.values()), f"not one terminal event each: {ends}"
    outcome = {job: types[0] for job, types in ends.items()}
    assert outcome[slow["job_id"]] == "PackageCancelled" and outcome[alone["job_id"]] == "PackageCompleted"
    first, second = list(races)[:2]
    assert (outcome[first], outcome[second]) == ("PackageCancelled", "PackageCompleted"), "at once, after"
    for job_id, (at, status, answer) in races.items():
        if outcome[job_id] == "PackageCancelled":
            assert (status, answer.get("state")) in ((200, "cancelled"), (202, None)), (at, answer)
        else:
            assert outcome[job_id] == "PackageCompleted", (at, outcome[job_id])
            assert (status, answer.get("state")) in ((409, "completed"), (202, None)), (at, answer)
            assert status == 202 or "finished" in answer["message"], answer

    mails = Counter(str(m[JOB_HEADER]) for m in smtp.messages)
    assert mails == Counter(jobs), f"not one email per job: {mails}"
    zips = {e.job_id: e.payload.zip_file_name for e in events if e.type == "PackageCompleted"}  # type: ignore[attr-defined]
    for message in smtp.messages:
        job_id = str(message[JOB_HEADER])
        cancelled, body = outcome[job_id] == "PackageCancelled", message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert ("cancelled" in str(message["Subject"])) == cancelled, (message["Subject"], outcome[job_id])
        if cancelled:
            assert "/downloads/" not in text, "a cancelled job was emailed a download link"
            assert partial_files(store_dir, job_id) == [], "a cancelled job left its ZIP"
        else:
            assert f"/downloads/{zips[job_id]}" in text and (store_dir / zips[job_id]).is_file()
    assert list(partial.glob("*")) == [], "partial files were left behind"
    print(
        f"build time {build_time:.2f}s; races: "
        + ", ".join(f"{races[j][0]:.3f}x: {outcome[j][7:]} ({races[j][1]})" for j in races)
    )


async def _state_in(port: int, job_id: str, wanted: tuple[str, ...]) -> bool:
    """True when the service says the job is in one of the `wanted` states."""
    return await job_state(port, job_id) in wanted
