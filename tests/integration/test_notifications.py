"""Emails on real components: what a fresh, a cached and a failed job send, and an SMTP outage.

The worker and ingress run as processes on a real broker; SMTP is aiosmtpd (started late, or slow, on
purpose); files come from a local HTTP server.
"""

from __future__ import annotations

import asyncio
import io
import re
import zipfile
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from packager.adapters.kafka_log import Topics
from packager.dev.kafka import free_port
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, read_events, service, smtp_sink, submit, wait_for_port

pytestmark = pytest.mark.kafka


async def post(port: int, **params: str) -> str:
    return await submit(port, "package_url", SECRET, **params)


def parts(message: EmailMessage) -> tuple[str, str | None]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    return text.get_content(), html.get_content() if html is not None else None


async def test_fresh_cached_and_failed_jobs_send_the_right_emails(
    service_env: dict[str, str], smtp: SmtpSink, file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base_url, folder = file_server
    (folder / "data.csv").write_bytes(b"id,name\n1,<b>x</b>\n")
    port = int(service_env["PACKAGER_PORT"])
    markup = "<script>alert('x')</script>"
    with (
        service(["worker"], service_env, tmp_path / "logs"),
        service(["ingress"], service_env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        fresh = await post(
            port, resource_id=markup, resource_url=f"{base_url}/data.csv", email="a@example.org"
        )
        [first] = await smtp.wait_for(1)
        cached = await post(
            port, resource_id=markup, resource_url=f"{base_url}/data.csv", email="b@example.org"
        )
        await smtp.wait_for(2)
        failed = await post(
            port, resource_id="gone", resource_url=f"{base_url}/gone.csv", email="c@example.org"
        )
        messages = await smtp.wait_for(3)
        by_to = {m["To"]: m for m in messages}

        text, html = parts(by_to["a@example.org"])
        [link] = re.findall(r"http://\S+\.zip", text)
        assert fresh in link and markup in text
        assert html is not None and markup not in html and "&lt;script&gt;" in html
        async with aiohttp.ClientSession() as http, http.get(link) as resp:
            with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
                assert zf.read("data.csv") == (folder / "data.csv").read_bytes()

        cached_text, cached_html = parts(by_to["b@example.org"])
        assert re.findall(r"http://\S+\.zip", cached_text) == [link]  # the same ZIP, at once
        assert cached not in link and cached_html is not None and markup not in cached_html

        failed_text, _ = parts(by_to["c@example.org"])
        assert "could not be prepared" in by_to["c@example.org"]["Subject"]
        assert "The file could not be fetched" in failed_text and f"/jobs/{failed}" in failed_text
        assert "HTTP 404" not in failed_text  # the raw error is the operator's
    assert first["From"] == "ckanpackager@localhost"


async def test_every_email_arrives_once_after_a_30_second_smtp_outage(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    smtp_port = free_port()
    env = {**service_env, "PACKAGER_SMTP_PORT": str(smtp_port), "PACKAGER_SMTP_RETRY_MAX_DELAY": "2"}
    port = int(env["PACKAGER_PORT"])
    for n in range(5):
        (folder / f"f{n}.csv").write_bytes(f"n\n{n}\n".encode())
    with service(["worker"], env, tmp_path / "logs") as worker, service(["ingress"], env, tmp_path / "logs"):
        wait_for_port(port)
        jobs = [
            await post(
                port, resource_id=f"r{n}", resource_url=f"{base_url}/f{n}.csv", email=f"u{n}@example.org"
            )
            for n in range(5)
        ]
        await asyncio.sleep(30)  # SMTP is down all this time
        with smtp_sink(smtp_port) as sink:
            try:
                await sink.wait_for(5, timeout=90)
            except TimeoutError:
                pytest.fail(f"emails missing after the outage.\n{worker.log()}")
            await asyncio.sleep(3)  # anything duplicated would arrive now
            received = Counter(m["To"] for m in sink.messages)
    assert received == Counter(f"u{n}@example.org" for n in range(5))
    events = await read_events(kafka_bootstrap, Topics(topic_prefix).events)
    sent = Counter(e.job_id for e in events if e.type == "EmailSent")
    assert sent == Counter(jobs)
    assert not [e for e in events if e.type == "EmailFailed"]
