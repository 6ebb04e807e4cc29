"""Expiry notices on the real service: every requester whose link points at a package is reminded once
before it expires, also when the worker is restarted between the reminder and the expiry."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest

from packager.adapters.kafka_log import Topics
from packager.domain.emails import JOB_HEADER
from packager.domain.events import Envelope
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, read_events, service, submit, wait_for_port

pytestmark = [pytest.mark.kafka, pytest.mark.features]

CACHE_TIME, NOTICE_BEFORE = 50, 35  # the reminder is due 15 s after the package is ready


def notices(smtp: SmtpSink) -> list[EmailMessage]:
    return [m for m in list(smtp.messages) if "expires on" in str(m["Subject"])]


async def log_events(bootstrap: str, prefix: str) -> list[Envelope]:
    return await read_events(bootstrap, Topics(prefix).events)


async def test_each_requester_is_reminded_once_before_the_package_expires(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "data.csv").write_bytes(b"a,b\n1,2\n")
    env = {
        **service_env,
        "PACKAGER_CACHE_TIME": str(CACHE_TIME),
        "PACKAGER_EXPIRY_NOTICE_BEFORE": str(NOTICE_BEFORE),
        "PACKAGER_JANITOR_INTERVAL": "1",
        "PACKAGER_PORTAL_NAME": "Example Portal",
        "PACKAGER_PORTAL_URL": "https://portal.example.org",
    }
    port = int(env["PACKAGER_PORT"])
    logs = tmp_path / "logs"
    asked = {"resource_id": "res", "resource_url": f"{base_url}/data.csv"}
    with service(["ingress"], env, logs):
        with service(["worker"], env, logs) as worker:
            wait_for_port(port)
            built = await submit(port, "package_url", SECRET, email="ann@example.org", **asked)
            await smtp.wait_for(1, timeout=90)
            ready_at = time.time()
            # Answered from the cache: the same ZIP, so the same expiry, and a reminder of its own.
            reused = await submit(port, "package_url", SECRET, email="bob@example.org", **asked)
            await smtp.wait_for(2, timeout=60)
            deadline = time.monotonic() + CACHE_TIME
            while len(notices(smtp)) < 2:
                assert time.monotonic() < deadline, f"no reminders:\n{worker.log()}"
                await asyncio.sleep(0.5)
            # Not sent before it was due.
            assert time.time() >= ready_at + CACHE_TIME - NOTICE_BEFORE - 2
        # A new worker (the tables restored from their changelogs) must not remind anyone again.
        with service(["worker"], env, logs) as restarted:
            deadline = time.monotonic() + CACHE_TIME + 60
            while not any(
                e.type == "PackageExpired" for e in await log_events(kafka_bootstrap, topic_prefix)
            ):
                assert time.monotonic() < deadline, f"the package never expired:\n{restarted.log()}"
                await asyncio.sleep(1.0)
            await asyncio.sleep(3 * 1.0)  # three more janitor sweeps after the expiry
    sent = notices(smtp)
    assert Counter(str(m[JOB_HEADER]) for m in sent) == {built: 1, reused: 1}
    assert sorted(str(m["To"]) for m in sent) == ["ann@example.org", "bob@example.org"]
    body = sent[0].get_content()
    assert "can be downloaded until" in body and f"/downloads/{built}.zip" in body
    assert (
        "ask for the data again from the dataset's page on Example Portal (https://portal.example.org)"
        in body
    )
    events = await log_events(kafka_bootstrap, topic_prefix)
    due = Counter(e.job_id for e in events if e.type == "ExpiryNoticeDue")
    assert due == {built: 1, reused: 1}
    outcomes = [e for e in events if e.type == "EmailSent" and e.payload.about == "ExpiryNoticeDue"]  # type: ignore[attr-defined]
    assert Counter(e.job_id for e in outcomes) == {built: 1, reused: 1}
    # The completion emails went once each too.
    assert len(smtp.messages) == 4
