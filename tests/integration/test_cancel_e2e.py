"""Cancelling on the real service: worker, projector and ingress as processes, a real broker.

A local server trickles a file one byte every 0.3 s, so a build of it runs for as long as the test needs.
The worker builds one file at a time: job A builds it, job Q (another resource) is queued behind it, and
job W, an identical request to A, waits for A's build. The operator cancels Q while it is queued: it is
never built. A's requester cancels A with the token from the accept answer: A ends with one
`PackageCancelled`, its build stops and its partial file is gone within 2 s, and W (which did not ask for
anything) gets a build of its own. The operator then cancels W with `ckanpackager cancel`. No job completes
or is emailed as completed; with EMAIL_CANCELLATIONS on each requester gets the short "cancelled" note. A
finished job answers 409, an unknown one 404, a wrong secret or token 401 (as every route of the service
answers a wrong secret).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from packager.adapters.kafka_log import Topics
from packager.dev.kafka import free_port
from tests.integration.conftest import SECRET
from tests.integration.support import (
    ROOT,
    SmtpSink,
    partial_files,
    post_form,
    read_events,
    running_stack,
    trickle,
    wait_for_event,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.features]

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def trickling_url() -> AsyncIterator[str]:
    """The URL of a file sent one byte every 0.3 s (each connection its own trickle)."""
    app = web.Application()
    app.router.add_get("/slow.csv", trickle)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}/slow.csv"
    finally:
        await runner.cleanup()


async def test_a_running_build_is_cancelled_at_once_and_its_waiter_is_built_on_its_own(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    trickling_url: str,
    file_server: tuple[str, Path],
    smtp: SmtpSink,
    tmp_path: Path,
    store_dir: Path,
) -> None:
    env = {**service_env, "PACKAGER_EMAIL_CANCELLATIONS": "true", "PACKAGER_WORKER_CONCURRENCY": "1"}
    port = int(env["PACKAGER_PORT"])
    partial = store_dir / ".partial"
    logs = tmp_path / "logs"
    quick_base, quick_folder = file_server
    (quick_folder / "quick.csv").write_text("a,b\n1,2\n")
    asked = {"secret": SECRET, "resource_id": "res-slow", "resource_url": trickling_url}

    with running_stack(env, logs, projector=True) as stack:
        status, a = await post_form(port, "/package_url", **asked, email="ann@example.org")
        assert status == 200, a
        job_a = a["job_id"]
        try:
            await wait_until(lambda: partial_files(partial, job_a), 90, "A's build did not start")
        except TimeoutError:
            pytest.fail(stack.diagnostics())
        status, q = await post_form(
            port, "/package_url", **{**asked, "resource_id": "res-queued"}, email="quinn@example.org"
        )
        assert status == 200, q
        job_q = q["job_id"]
        await wait_for_event(
            kafka_bootstrap, topic_prefix, lambda e: e.job_id == job_q and e.type == "PackageQueued", 60
        )
        status, w = await post_form(port, "/package_url", **asked, email="will@example.org")
        assert status == 200, w
        job_w = w["job_id"]
        # W waits for A's build (the planner says so; waiting leaves no event in the log).
        await stack.worker.wait_for_output(f"being built (job {job_a})")

        # Wrong credentials change nothing.
        assert (await post_form(port, f"/jobs/{job_a}/cancel", secret="wrong-secret-0123456789"))[0] == 401
        assert (await post_form(port, f"/jobs/{job_a}/cancel", token=w["cancel_token"]))[0] == 401
        assert (await post_form(port, f"/jobs/{UNKNOWN}/cancel", secret=SECRET))[0] == 404

        # Q, queued behind A's build, is cancelled before it starts.
        status, answer = await post_form(port, f"/jobs/{job_q}/cancel", secret=SECRET)
        assert status in (200, 202), answer
        await wait_for_event(
            kafka_bootstrap, topic_prefix, lambda e: e.job_id == job_q and e.type == "PackageCancelled", 30
        )

        started = time.monotonic()
        gone = asyncio.create_task(
            wait_until(lambda: not partial_files(partial, job_a), 10, "A's partial file stayed")
        )
        status, answer = await post_form(port, f"/jobs/{job_a}/cancel", token=a["cancel_token"])
        assert status in (200, 202), answer
        try:
            stopped_after = await gone - started
        except TimeoutError:
            pytest.fail(stack.diagnostics())
        assert stopped_after < 2.0, f"the build stopped {stopped_after:.2f}s after the cancel"

        # W was not cancelled: it is built on its own, from its own request.
        try:
            await wait_for_event(
                kafka_bootstrap, topic_prefix, lambda e: e.job_id == job_w and e.type == "PackageStarted", 60
            )
            await wait_until(lambda: partial_files(partial, job_w), 30, "W's build did not start")
        except TimeoutError:
            pytest.fail(stack.diagnostics())
        status, again = await post_form(port, f"/jobs/{job_a}/cancel", secret=SECRET)
        assert (status, again["state"]) == (409, "cancelled"), again

        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "packager.cli.operator", "-D", "-p", f"127.0.0.1:{port}"),
            *("-s", SECRET, "cancel", job_w),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
        )
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, err.decode()
        assert f"Job {job_w} is" in out.decode()
        await wait_until(lambda: not partial_files(partial, job_w), 10, "W's partial file stayed")

        # A job that completed cannot be cancelled.
        status, quick = await post_form(
            port,
            "/package_url",
            secret=SECRET,
            resource_id="res-quick",
            resource_url=f"{quick_base}/quick.csv",
            email="q@example.org",
        )
        await wait_for_event(
            kafka_bootstrap, topic_prefix, lambda e: e.job_id == quick["job_id"] and e.type == "EmailSent"
        )
        deadline = time.monotonic() + 30
        while (
            result := await post_form(port, f"/jobs/{quick['job_id']}/cancel", token=quick["cancel_token"])
        )[1].get("state") != "completed":  # the views may not have folded the completion yet
            assert time.monotonic() < deadline, result
            await asyncio.sleep(0.2)
        assert result[0] == 409 and "already finished" in result[1]["message"]

        messages = await smtp.wait_for(4, timeout=60)

    events = [e for e in await read_events(kafka_bootstrap, Topics(topic_prefix).events)]
    ends = Counter((e.job_id, e.type) for e in events if e.job_id in (job_a, job_w, job_q))
    assert [ends[(job, "PackageCancelled")] for job in (job_a, job_w, job_q)] == [1, 1, 1], ends
    assert not any(t in ("PackageCompleted", "PackageFailed") for _, t in ends), ends
    assert ends[(job_q, "PackageStarted")] == 0, "a job cancelled while queued was built"
    cancelled_a = next(e for e in events if e.job_id == job_a and e.type == "PackageCancelled")
    assert cancelled_a.payload.by == "requester"  # type: ignore[attr-defined]
    about = {(m["X-Packager-Job"], m["Subject"]) for m in messages}
    assert {job for job, _ in about} == {job_a, job_w, job_q, quick["job_id"]}
    for job, subject in about:
        assert ("cancelled" in subject) == (job != quick["job_id"]), subject
    assert list(partial.glob("*")) == [], "partial files were left behind"
