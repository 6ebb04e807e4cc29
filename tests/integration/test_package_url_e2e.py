"""The whole path on real components: HTTP -> Kafka -> Faust agents -> ZIP -> email -> download.

The ingress and a worker run as separate processes, as in production; Kafka is a real broker, the SMTP
server is aiosmtpd, and the file comes from a local HTTP server.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from packager.adapters.kafka_log import Topics
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, read_events, service, wait_for_port

pytestmark = pytest.mark.kafka


async def test_a_url_request_becomes_an_emailed_link_to_a_zip_of_the_same_bytes(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    file_server: tuple[str, Path],
    smtp: SmtpSink,
    tmp_path: Path,
    store_dir: Path,
) -> None:
    base_url, folder = file_server
    source = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not a round size
    (folder / "specimens.bin").write_bytes(source)
    port = int(service_env["PACKAGER_PORT"])

    with (
        service(["worker"], service_env, tmp_path / "logs") as worker,
        service(["ingress"], service_env, tmp_path / "logs") as ingress,
    ):
        wait_for_port(port)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{port}/package_url",
                data={
                    "secret": SECRET,
                    "resource_id": "res-1",
                    "resource_url": f"{base_url}/specimens.bin",
                    "email": "requester@example.org",
                },
            ) as resp:
                body = await resp.json()
            assert resp.status == 200, body
            assert body["status"] == "success" and body["success"] is True
            job_id = body["job_id"]

            try:
                [message] = await smtp.wait_for(1, timeout=90)
            except TimeoutError:
                pytest.fail(f"no email arrived.\nworker log:\n{worker.log()}\ningress log:\n{ingress.log()}")
            assert message["To"] == "requester@example.org"
            text = message.get_body(("plain",))
            assert text is not None
            [link] = re.findall(r"http://\S+\.zip", text.get_content())
            assert job_id in link

            async with http.get(link) as resp:
                assert resp.status == 200
                zipped = await resp.read()

    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        assert zf.namelist() == ["specimens.bin"]
        assert zf.read("specimens.bin") == source
    assert not list((store_dir / ".partial").iterdir()), "intermediate files were left behind"

    events = [
        e for e in await read_events(kafka_bootstrap, Topics(topic_prefix).events) if e.job_id == job_id
    ]
    counts = Counter(e.type for e in events)
    assert counts["PackageCompleted"] == 1
    assert counts["PackageFailed"] == 0
    assert counts["EmailSent"] == 1
    assert counts["PackageStarted"] == 1
    completed = next(e for e in events if e.type == "PackageCompleted")
    assert completed.payload.size == len(zipped)  # type: ignore[attr-defined]


async def test_a_missing_file_fails_the_job_and_tells_the_requester(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    file_server: tuple[str, Path],
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    base_url, _ = file_server
    port = int(service_env["PACKAGER_PORT"])
    with (
        service(["worker"], service_env, tmp_path / "logs") as worker,
        service(["ingress"], service_env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/package_url",
                json={
                    "secret": SECRET,
                    "resource_id": "res-404",
                    "resource_url": f"{base_url}/missing.csv",
                    "email": "requester@example.org",
                },
            ) as resp,
        ):
            job_id = (await resp.json())["job_id"]
        try:
            [message] = await smtp.wait_for(1, timeout=90)
        except TimeoutError:
            pytest.fail(f"no failure email arrived.\nworker log:\n{worker.log()}")
    assert "could not be prepared" in message["Subject"]
    assert "The file could not be fetched" in message.get_content()

    events = [
        e for e in await read_events(kafka_bootstrap, Topics(topic_prefix).events) if e.job_id == job_id
    ]
    counts = Counter(e.type for e in events)
    assert (counts["PackageFailed"], counts["PackageCompleted"], counts["EmailSent"]) == (1, 0, 1)
