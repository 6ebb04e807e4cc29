"""`GET /downloads/{name}`: the link in the requester's email, whichever store holds the ZIP.

The emailed link always names this service. It answers 404 for a name never built, 410 once the ZIP is past
CACHE_TIME or gone from the store (expired, cleared), and otherwise serves the ZIP with Range support: a
folder's file through aiohttp's FileResponse (sendfile, If-Range), an object store's object either streamed
through the ingress (S3_DOWNLOADS=stream, one byte range at a time) or by a redirect to a presigned URL valid
for S3_PRESIGN_TIME seconds (S3_DOWNLOADS=redirect), where the object store itself answers Range requests.
"""

from __future__ import annotations

import logging
import re
import time
from email.utils import formatdate

from aiohttp import web

from packager.adapters.store import Store, StoredFile
from packager.adapters.viewdb import ViewsUnavailable
from packager.http.app_keys import READ_VIEWS, SETTINGS, STORE
from packager.http.job_texts import download_file_name

log = logging.getLogger(__name__)

ZIP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.zip$")
_BUILT_BY = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(-[0-9a-f-]+)?\.zip$")
_GONE = "This download has expired or was removed; please request the data again"


async def download(request: web.Request) -> web.StreamResponse:
    """GET /downloads/{name}: serve a finished ZIP (Range requests supported).

    410 once past CACHE_TIME, and for a ZIP that was built but is gone (expired and swept, or removed by
    `/clear_caches`): the requester's link worked once and they need to ask again. 404 for a name never built.
    """
    name = request.match_info["name"]
    if not ZIP_NAME.match(name):
        raise web.HTTPNotFound(reason="No such download")
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    try:
        found = await store.stat(name)
    except Exception as exc:  # the object store is unreachable: say so, claim nothing about the link
        log.warning("the store could not be asked for %s: %r", name, exc)
        raise web.HTTPServiceUnavailable(reason="The download store is unavailable; try again soon") from None
    if found is None:
        if await _was_built(request, name):
            raise web.HTTPGone(reason=_GONE)
        raise web.HTTPNotFound(reason="No such download")
    if time.time() - found.modified > settings.cache_time:
        raise web.HTTPGone(reason="This download has expired; please request the data again")
    saved_as = await _saved_name(request, name)
    headers = {"Content-Type": "application/zip", "Content-Disposition": f'attachment; filename="{saved_as}"'}
    if (path := store.local_path(name)) is not None:
        return web.FileResponse(path, headers=headers)
    if (url := await store.download_url(name)) is not None:
        # Short-lived and never cached: the link in the email stays the service's, checked on every click.
        raise web.HTTPFound(url, headers={"Cache-Control": "no-store"})
    return await _stream(request, store, found, headers)


async def _stream(
    request: web.Request, store: Store, found: StoredFile, headers: dict[str, str]
) -> web.StreamResponse:
    """Stream the object (or the one byte range asked for) through the ingress."""
    size = found.size
    last_modified = formatdate(found.modified, usegmt=True)
    headers = {**headers, "Accept-Ranges": "bytes", "Last-Modified": last_modified}
    start, end = 0, size
    status = 200
    if_range = request.headers.get("If-Range")
    if request.headers.get("Range") and (if_range is None or if_range == last_modified):
        try:
            asked = request.http_range
        except ValueError:  # several ranges, or none aiohttp can read: 416, as FileResponse answers
            return _unsatisfiable(size)
        if asked.start is not None or asked.stop is not None:
            if asked.start is not None and asked.start < 0:  # a suffix: the last N bytes
                start, end = max(0, size + asked.start), size
            else:
                start = asked.start or 0
                end = size if asked.stop is None else min(asked.stop, size)
            if start >= size or start >= end:
                return _unsatisfiable(size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    chunks = store.read(found.name, start, end)
    first = b""
    if request.method != "HEAD" and end > start:
        try:
            first = await anext(chunks, b"")
        except FileNotFoundError:  # removed between the look and the read
            raise web.HTTPGone(reason=_GONE) from None
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


def _unsatisfiable(size: int) -> web.Response:
    """416 with the size (returned, not raised: the JSON error middleware would drop the header)."""
    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})


async def _saved_name(request: web.Request, name: str) -> str:
    """The name the browser saves the ZIP under: its resource and the day it was built, from the job that
    built it (the store name is the job id); the store name when that job is not known here."""
    views = request.app.get(READ_VIEWS)
    built_by = _BUILT_BY.match(name)
    if views is None or built_by is None:
        return name
    try:
        job = await views.job(built_by.group(1))
    except ViewsUnavailable:
        return name
    if job is None:
        return name
    return download_file_name(job.resource_id, job.finished_at, name)


async def _was_built(request: web.Request, name: str) -> bool:
    views = request.app.get(READ_VIEWS)
    if views is None:
        return False
    try:
        return await views.zip_was_built(name)
    except ViewsUnavailable:
        return False  # unknown: a 404 is the answer that claims less
