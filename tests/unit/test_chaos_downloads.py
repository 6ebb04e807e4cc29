"""The chaos campaign's download check: every ZIP through every ingress, compared with its event."""

from __future__ import annotations

import hashlib

from aiohttp import web

from benchmarks.chaos_check import Job, check_downloads
from packager.dev.kafka import free_port
from packager.domain.events import PackageCompleted, envelope


def completed(job_id: str, name: str, data: bytes) -> PackageCompleted:
    sha = hashlib.sha256(data).hexdigest()
    return PackageCompleted("ck", "res", "a@example.org", "h", "", "fast", name, len(data), sha, 1, "a", "b")


async def serving(files: dict[str, bytes]) -> tuple[web.AppRunner, int]:
    async def download(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPGone()
        return web.Response(body=files[name])

    app = web.Application()
    app.router.add_get("/downloads/{name}", download)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_a_zip_one_ingress_cannot_serve_is_reported_with_the_ingress() -> None:
    good, other = b"PK good", b"PK other"
    jobs = {j: Job(j, "distinct", {}, "completed", None, 0.0, 0) for j in ("j1", "j2")}
    events = [envelope(j, completed(j, f"{j}.zip", data)) for j, data in (("j1", good), ("j2", other))]
    first, port_a = await serving({"j1.zip": good, "j2.zip": other})
    second, port_b = await serving({"j1.zip": good})  # this one has lost j2.zip
    try:
        figures, problems = await check_downloads([port_a, port_b], events, jobs)
    finally:
        await first.cleanup()
        await second.cleanup()
    assert figures == {"downloads_checked": 4, "downloads_ok": False}
    assert problems == {f"j2.zip via {port_b}": "HTTP 410"}
