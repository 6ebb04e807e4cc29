"""Security properties of the running service, checked after real jobs ran through the whole stack.

The ingress and a worker run as processes on a real broker (DEBUG logging, the most talkative setting); CKAN
is the project's server requiring an API token; SMTP is aiosmtpd; files come from a local HTTP server. Then:

- the shared secret and the CKAN key, in clear or base64, are in no record of any topic of the deployment
  (keys, values, headers), no line the processes wrote, no ZIP entry, no file in the store and no email;
- hostile resource ids and file names (`../`, absolute paths, backslashes, NUL, very long) are refused or
  land inside the store, and nothing outside the store changed;
- the job status page shows none of the requester's text unescaped.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from packager.adapters.kafka_log import Topics
from packager.dev.ckan_server import SyntheticTable, serve_ckan
from packager.dev.kafka import free_port
from packager.domain.events import PackageCompleted, PackageFailed
from tests.integration.conftest import SECRET
from tests.integration.support import ROOT, SmtpSink, end_offsets, read_events, service, wait_for_port

pytestmark = pytest.mark.kafka

CKAN_KEY = f"ckan-api-token-{uuid.uuid4().hex}"
TABLE = SyntheticTable("secured", 300, seed=5)
TOKEN = uuid.uuid4().hex[:10]  # marks every hostile name, to look for it anywhere on disk afterwards
MARKUP = "<script>alert('x')</script>"


def needles(secret: str) -> dict[str, bytes]:
    """The secret in clear and as base64 (standard and URL-safe) at each of the three byte alignments."""
    found = {"clear": secret.encode()}
    for shift in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * shift + secret.encode())
            # Drop the characters that also encode the padding bytes or the unknown neighbours.
            found[f"{name}+{shift}"] = text[(4 * shift + 2) // 3 : -4]
    return found


NEEDLES = {
    f"{which} {how}": value
    for which, secret in (("secret", SECRET), ("CKAN key", CKAN_KEY))
    for how, value in needles(secret).items()
}


def leaks(where: str, data: bytes) -> list[str]:
    return [f"{name} in {where}" for name, needle in NEEDLES.items() if needle in data]


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_the_search_finds_a_secret_in_base64_wherever_it_starts(shift: int) -> None:
    blob = b"header " + base64.b64encode(b"p" * shift + b"Bearer " + CKAN_KEY.encode() + b"!") + b" tail"
    assert leaks("blob", blob)
    assert leaks("blob", base64.urlsafe_b64encode(b"q" * shift + SECRET.encode()))
    assert not leaks("blob", base64.b64encode(b"p" * shift + b"something else entirely, of some length"))


@pytest.fixture
async def file_host() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server answering every path with a small CSV; it keeps the Authorization headers it saw."""
    seen: list[str] = []

    async def any_file(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"id,name\n1,<b>x</b>\n", content_type="text/csv")

    app = web.Application()
    app.router.add_get("/{tail:.*}", any_file)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def tree(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` (but not under `skip`) with its size and mtime."""
    listing: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if Path(folder, d) not in skip and d not in {".git", "__pycache__", ".pytest_cache"}
        ]
        for name in [*dirs, *files]:
            path = Path(folder, name)
            stat = path.lstat()
            listing[str(path.relative_to(root))] = (stat.st_size if name in files else 0, stat.st_mtime_ns)
    return listing


@pytest.fixture
def outside_the_store(tmp_path: Path, store_dir: Path) -> Iterator[None]:
    """Fail if anything outside the store changed: the test's folder, the repository; no name holds TOKEN."""
    logs = tmp_path / "logs"
    before = tree(tmp_path, {store_dir, logs}), tree(ROOT, {ROOT / ".hypothesis"})
    yield
    after = tree(tmp_path, {store_dir, logs}), tree(ROOT, {ROOT / ".hypothesis"})
    assert after[0] == before[0], "files outside the store changed"
    assert after[1] == before[1], "files in the working directory of the processes changed"
    for top in (Path("/"), Path("/tmp"), tmp_path.parent, ROOT.parent):
        assert not [p for p in top.iterdir() if TOKEN in p.name], f"a hostile name landed in {top}"


async def post(
    http: aiohttp.ClientSession, port: int, path: str, **params: str
) -> tuple[int, dict[str, str]]:
    async with http.post(f"http://127.0.0.1:{port}{path}", data={"secret": SECRET, **params}) as resp:
        return resp.status, await resp.json()


async def every_record(
    bootstrap: str, prefix: str
) -> list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """(topic, key, value, headers) of every record of every topic of the deployment, changelogs included."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()
    records: list[Any] = []
    for topic in topics:
        ends = await end_offsets(bootstrap, topic)
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        if not tps:
            continue
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp.partition]]:
                for tp, batch in (await consumer.getmany(timeout_ms=1000)).items():
                    records.extend(
                        (topic, m.key, m.value, list(m.headers or ()))
                        for m in batch
                        if m.offset < ends[tp.partition]
                    )
        finally:
            await consumer.stop()
    return records


async def test_no_secret_leaks_no_file_escapes_the_store_and_the_status_page_escapes(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_host: tuple[str, list[str]],
    store_dir: Path,
    tmp_path: Path,
    outside_the_store: None,
) -> None:
    files, authorizations = file_host
    env = {**service_env, "PACKAGER_LOG_LEVEL": "DEBUG"}
    port = int(env["PACKAGER_PORT"])
    hostile_ids = {
        "dotdot": f"../../../{TOKEN}-dotdot",
        "absolute": f"{tmp_path}/{TOKEN}-absolute",
        "backslash": f"..\\..\\{TOKEN}-backslash",
        "long": f"{TOKEN}-" + "l" * 480,
        "markup": MARKUP,
    }
    hostile_files = {
        "dotdot": f"..%2F..%2F..%2F{TOKEN}-file.csv",
        "absolute": quote(f"{tmp_path}/{TOKEN}-file.csv", safe=""),
        "backslash": f"..%5C..%5C{TOKEN}-file.csv",
        "markup": quote("<img src=x onerror=alert(1)>.csv", safe=""),
        "long": "f" * 300 + ".csv",
    }
    async with serve_ckan({TABLE.resource_id: TABLE}, api_token=CKAN_KEY) as ckan:
        with (
            service(["worker"], env, tmp_path / "logs") as worker,
            service(["projector"], env, tmp_path / "logs"),
            service(["ingress"], env, tmp_path / "logs") as ingress,
        ):
            wait_for_port(port)
            async with aiohttp.ClientSession() as http:
                jobs: dict[str, str] = {}
                status, body = await post(
                    http,
                    port,
                    "/package_datastore",
                    api_url=ckan,
                    resource_id=TABLE.resource_id,
                    email="ds@example.org",
                    key=CKAN_KEY,
                    format="xlsx",
                )
                assert status == 200, body
                jobs["datastore"] = body["job_id"]
                status, body = await post(
                    http,
                    port,
                    "/package_datastore",
                    api_url=ckan,
                    resource_id=TABLE.resource_id,
                    email="wrong@example.org",
                    key=CKAN_KEY[::-1],
                )
                jobs["wrong key"] = body["job_id"]
                status, body = await post(
                    http,
                    port,
                    "/package_dwc_archive",
                    api_url=ckan,
                    resource_id=TABLE.resource_id,
                    email="dwc@example.org",
                    key=CKAN_KEY,
                )
                assert status == 200, body
                jobs["dwc"] = body["job_id"]
                for name, resource_id in hostile_ids.items():
                    status, body = await post(
                        http,
                        port,
                        "/package_url",
                        resource_id=resource_id,
                        resource_url=f"{files}/d/{hostile_files.get(name, 'data.csv')}",
                        email="url@example.org",
                        key=CKAN_KEY,
                    )
                    assert status == 200, body
                    jobs[f"url {name}"] = body["job_id"]
                for refused in ("a\x00b", "r" * 501, f"\x00../{TOKEN}"):
                    status, body = await post(
                        http,
                        port,
                        "/package_url",
                        resource_id=refused,
                        resource_url=f"{files}/x.csv",
                        email="url@example.org",
                    )
                    assert status == 400, body
                # The secret in a query string, as a monitoring probe would send it.
                async with http.get(f"http://127.0.0.1:{port}/status", params={"secret": SECRET}) as resp:
                    assert resp.status in (200, 503)
                assert (await post(http, port, "/statistics"))[0] == 200

                try:
                    messages = await smtp.wait_for(len(jobs), timeout=240)
                except TimeoutError:
                    pytest.fail(
                        f"not every job emailed.\nworker log:\n{worker.log()}\ningress:\n{ingress.log()}"
                    )

                pages = {}
                for name, job_id in jobs.items():
                    async with http.get(
                        f"http://127.0.0.1:{port}/jobs/{job_id}", headers={"Accept": "text/html"}
                    ) as resp:
                        assert resp.status == 200
                        pages[name] = await resp.text()
                async with http.get(f"http://127.0.0.1:{port}/jobs/{jobs['url markup']}") as resp:
                    markup_job = await resp.json()
                async with http.get(f"http://127.0.0.1:{port}/jobs/{quote(MARKUP, safe='')}") as resp:
                    assert resp.status == 404
                    assert MARKUP not in await resp.text()

    # The jobs did what they should: the key was needed and used, hostile names were packaged.
    events = await read_events(kafka_bootstrap, Topics(topic_prefix).events)
    outcome = {e.job_id: e.payload for e in events if isinstance(e.payload, PackageCompleted | PackageFailed)}
    assert isinstance(outcome[jobs["datastore"]], PackageCompleted)
    assert isinstance(outcome[jobs["dwc"]], PackageCompleted)
    assert isinstance(outcome[jobs["wrong key"]], PackageFailed)
    assert all(isinstance(outcome[jobs[f"url {n}"]], PackageCompleted) for n in hostile_ids)
    assert CKAN_KEY in authorizations  # sent to the host the request named, as the original did

    found: list[str] = []
    records = await every_record(kafka_bootstrap, topic_prefix)
    assert {Topics(topic_prefix).requests, Topics(topic_prefix).events} <= {r[0] for r in records}
    for topic, key, value, headers in records:
        found += leaks(f"a key on {topic}", key or b"")
        found += leaks(f"a value on {topic}", value or b"")
        for header, data in headers:
            found += leaks(f"header {header} on {topic}", header.encode() + b"\0" + (data or b""))
    logs = sorted((tmp_path / "logs").iterdir())
    assert len(logs) == 3 and all(p.stat().st_size > 0 for p in logs)  # worker, projector, ingress
    for log_file in logs:
        found += leaks(f"the log {log_file.name}", log_file.read_bytes())
    for message in messages:
        found += leaks(f"the email to {message['To']}", message.as_bytes())
    stored = await asyncio.to_thread(lambda: [p for p in store_dir.rglob("*") if p.is_file()])
    zips = [p for p in stored if p.suffix == ".zip"]
    assert len(zips) == len(jobs) - 1  # every job but the one with the wrong key
    for path in stored:
        found += leaks(f"the stored file {path.relative_to(store_dir)}", path.read_bytes())
    for path in zips:
        with zipfile.ZipFile(path) as zf:
            for entry in zf.infolist():
                assert not entry.filename.startswith(("/", "\\")) and ".." not in Path(entry.filename).parts
                assert "\\" not in entry.filename and "\0" not in entry.filename
                found += leaks(f"{path.name}:{entry.filename}", entry.filename.encode() + zf.read(entry))
    assert found == []

    # Hostile names end up inside the store, as the job's ZIP, whose entries have safe names.
    for name in hostile_ids:
        completed = outcome[jobs[f"url {name}"]]
        assert isinstance(completed, PackageCompleted)
        path = store_dir / completed.zip_file_name
        assert path.parent == store_dir and path.is_file() and not path.is_symlink()
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zf:
            [entry_name] = zf.namelist()
            assert "/" not in entry_name and len(entry_name) <= 150

    # The status page shows what was asked for (the resource, the file's name) only as escaped text, and
    # never the requester's address; the job's data carries it verbatim, as data.
    for name, page in pages.items():
        assert MARKUP not in page and "<img" not in page, name
        assert "@example.org" not in page, name
    assert "&lt;script&gt;alert(" in pages["url markup"]  # the hostile resource id, shown as text
    assert markup_job["resource_id"] == MARKUP
    for message in messages:
        html = message.get_body(("html",))
        if html is not None:
            assert MARKUP not in html.get_content() and "<img src=x" not in html.get_content()
