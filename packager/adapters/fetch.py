"""Adapter: downloading a resource file over HTTP, streamed to disk, with SSRF checks on every hop.

Redirects are followed by hand so each target is validated like the original URL (a public host may not
redirect into private address space), and the CKAN key is only sent to the host the request named. The
session's connector checks the address actually connected to (adapters.http_client). A file larger than
`max_bytes` fails the download: at once when `Content-Length` says so, else as soon as the body passes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from packager.core import retrying
from packager.core.errors import BadRequestError, PackagingError
from packager.core.retrying import Backoff, Retryable, retry_after_seconds
from packager.domain.emails import human_size
from packager.domain.validation import Resolver, check_url

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# 429 and 503 may carry a Retry-After, which the retry policy honours (within the job's deadline).
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
BACKOFF = Backoff(first=0.5, cap=30.0)

ProgressCallback = Callable[[int, int | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Downloaded:
    """What a download produced."""

    size: int
    sha256: str
    file_name: str  # last path segment of the final URL, may be empty


async def _noop_progress(done: int, total: int | None) -> None:
    return None


async def download_file(
    session: aiohttp.ClientSession,
    url: str,
    destination: Path,
    *,
    key: str,
    resolve: Resolver,
    allow_private: bool,
    max_redirects: int = 5,
    attempts: int = 3,
    max_bytes: int = 0,
    progress: ProgressCallback = _noop_progress,
) -> Downloaded:
    """Stream `url` into `destination`, retrying connection errors, 429 and 5xx; fail with a readable message.

    `max_bytes` (0: no cap) fails the download once the file is known to be larger.
    """
    try:
        return await retrying.call(
            f"fetch of {url}",
            lambda: _download_once(
                session,
                url,
                destination,
                key=key,
                resolve=resolve,
                allow_private=allow_private,
                max_redirects=max_redirects,
                max_bytes=max_bytes,
                progress=progress,
            ),
            backoff=BACKOFF,
            max_attempts=attempts,
            deadline=retrying.current_deadline(),
        )
    except retrying.GaveUp as exc:
        reason = f"; {exc.reason}" if exc.at_deadline else ""
        raise PackagingError(f"The file at {url} could not be fetched: {exc.last}{reason}") from None


async def _download_once(
    session: aiohttp.ClientSession,
    url: str,
    destination: Path,
    *,
    key: str,
    resolve: Resolver,
    allow_private: bool,
    max_redirects: int,
    max_bytes: int,
    progress: ProgressCallback,
) -> Downloaded:
    origin_host = URL(url).host
    current = URL(url)
    for _ in range(max_redirects + 1):
        try:
            await check_url("resource_url", str(current), resolve=resolve, allow_private=allow_private)
        except BadRequestError as exc:
            raise PackagingError(f"The file cannot be fetched: {exc.message}") from None
        headers = {"Authorization": key} if key and current.host == origin_host else {}
        try:
            async with session.get(current, headers=headers, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    current = current.join(URL(resp.headers["Location"]))
                    continue
                if resp.status in RETRYABLE_STATUS:
                    asked = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise Retryable(f"HTTP {resp.status} {resp.reason}", retry_after=asked)
                if resp.status >= 400:
                    raise PackagingError(
                        f"The file at {url} could not be fetched: HTTP {resp.status} {resp.reason}"
                    )
                total = resp.content_length
                if max_bytes and total is not None and total > max_bytes:
                    raise _too_large(url, max_bytes, announced=total)
                digest = hashlib.sha256()
                done = 0
                # File writes go to a thread so a slow disk never stalls the event loop.
                out = await asyncio.to_thread(open, destination, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        await asyncio.to_thread(out.write, chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if max_bytes and done > max_bytes:
                            raise _too_large(url, max_bytes)
                        await progress(done, total)
                finally:
                    await asyncio.to_thread(out.close)
                if total is not None and done != total:
                    raise Retryable(f"connection closed after {done} of {total} bytes")
                return Downloaded(size=done, sha256=digest.hexdigest(), file_name=current.name)
        except aiohttp.SocketTimeoutError:
            # aiohttp's sock_read (FETCH_READ_TIMEOUT): no byte arrived for that long.
            raise Retryable(f"the server sent nothing for {session.timeout.sock_read:g} seconds") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise Retryable(type(exc).__name__ + (f": {exc}" if str(exc) else "")) from None
    raise PackagingError(f"The file at {url} redirects more than {max_redirects} times")


def _too_large(url: str, max_bytes: int, *, announced: int | None = None) -> PackagingError:
    size = f" ({human_size(announced)})" if announced is not None else ""
    return PackagingError(
        f"The file at {url}{size} is larger than this service packages ({human_size(max_bytes)}); "
        "please download it from its source directly."
    )
