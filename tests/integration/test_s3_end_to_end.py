"""The service on an S3-compatible store (s3proxy), as separate processes on real Kafka: a job's ZIP goes to
the bucket, the emailed link (`/downloads/...` on the ingress) serves it with Range, and clearing and the
janitor's expiry remove the object, after which the link answers 410."""

from __future__ import annotations

import asyncio
import io
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from packager.adapters.s3_store import S3Store
from packager.core.settings import load_settings
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, service, submit, wait_for_port

pytestmark = pytest.mark.kafka


def links(sink: SmtpSink) -> list[str]:
    text = "".join(m.get_body(("plain",)).get_content() for m in sink.messages)  # type: ignore[union-attr]
    return re.findall(r"http://\S+/downloads/\S+\.zip", text)


async def get(url: str, **headers: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.read()


async def until_gone(store: S3Store, name: str, what: str, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while await store.stat(name) is not None:
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.5)


async def test_a_job_zip_goes_to_the_bucket_and_the_emailed_link_serves_it(
    s3proxy_server: Any,
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "one.csv").write_bytes(b"a,b\n" * 100_000)
    (folder / "two.csv").write_bytes(b"c,d\n" * 1_000)
    s3_env = s3proxy_server.settings_env(prefix=f"e2e-{uuid.uuid4().hex[:12]}")
    env = {**service_env, **s3_env, "PACKAGER_CACHE_TIME": "30", "PACKAGER_JANITOR_INTERVAL": "1"}
    store = S3Store.from_settings(load_settings(env))
    port = int(env["PACKAGER_PORT"])
    with (
        service(["worker"], env, tmp_path / "logs") as worker,
        service(["projector"], env, tmp_path / "logs"),
        service(["ingress"], env, tmp_path / "logs"),
    ):
        wait_for_port(port)
        await worker.wait_for_output("[^Worker]: Ready")
        await submit(
            port,
            "package_url",
            SECRET,
            email="ann@example.org",
            resource_id="one",
            resource_url=f"{base_url}/one.csv",
        )
        try:
            await smtp.wait_for(1)
        except TimeoutError:
            pytest.fail(f"no email for the job on the S3 store.\n{worker.log()}")
        [link] = links(smtp)
        name = link.rsplit("/", 1)[1]
        assert [f.name for f in await store.listing()] == [name]  # in the bucket, nothing else beside it
        in_folder = await asyncio.to_thread(lambda: list(Path(env["PACKAGER_STORE_DIRECTORY"]).glob("*.zip")))
        assert in_folder == []  # and not in the store folder

        status, body = await get(link)
        assert status == 200
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.read(zf.namelist()[0]) == (folder / "one.csv").read_bytes()
        status, part = await get(link, Range="bytes=10-109")
        assert status == 206 and part == body[10:110]

        await submit(
            port,
            "package_url",
            SECRET,
            email="bob@example.org",
            resource_id="two",
            resource_url=f"{base_url}/two.csv",
        )
        await smtp.wait_for(2)
        second = links(smtp)[1]
        async with aiohttp.ClientSession() as http:
            await http.post(f"http://127.0.0.1:{port}/clear_caches", data={"secret": SECRET})
        await until_gone(store, name, "clear_caches left the first ZIP in the bucket")
        assert (await get(link))[0] == 410
        # The second ZIP was cleared too; a third package expires by the janitor (CACHE_TIME=30).
        await until_gone(store, second.rsplit("/", 1)[1], "clear_caches left the second ZIP in the bucket")
        await submit(
            port,
            "package_url",
            SECRET,
            email="cat@example.org",
            resource_id="two",
            resource_url=f"{base_url}/two.csv",
        )
        await smtp.wait_for(3)
        third = links(smtp)[2]
        assert (await get(third))[0] == 200
        await until_gone(store, third.rsplit("/", 1)[1], "the janitor did not remove the expired ZIP", 90)
        assert (await get(third))[0] == 410
