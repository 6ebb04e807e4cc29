"""Adapter: finished ZIPs in an S3-compatible object store (`STORE_URL=s3://bucket/prefix`).

The client is obstore (the Rust `object_store` crate's Python binding): async calls that do not hold the event
loop, multipart uploads fed from an async iterator, ranged streaming reads, listing and presigned URLs, in
one wheel with no Python dependencies. aioboto3 was the other candidate: it pins its own botocore and aiohttp
ranges (this service already pins aiohttp) and brings a dozen packages for the same calls.

Publication: the ZIP is built in the local partial folder as with the folder store, then read from disk in
chunks (hashed on the way) and uploaded as one multipart upload of S3_PART_SIZE parts straight to its final
key. S3 shows no object under a key until its upload completes, and completes it atomically, so a partial
package is never visible; memory holds at most a few parts, never the ZIP, and ZIP64 archives upload like any
other file. A failed upload is aborted; one cut short by a killed process stays invisible and is removed by
the bucket's AbortIncompleteMultipartUpload lifecycle rule (docs/operations.md). S3 offers no portable
"create only if absent" for multipart uploads, so each publication takes a key of its own (the name asked
for plus a random suffix): two builds of one job can never overwrite, or later remove, each other's ZIP.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store as ObjectStoreS3

from packager.adapters.store import COPY_CHUNK, PartialArea, PublishedFile, StoredFile, safe_file_name

if TYPE_CHECKING:
    from obstore.store import S3Config

    from packager.core.settings import Settings

# Parts uploaded at once: bounds the memory an upload holds (this many parts) and its share of the link.
UPLOAD_CONCURRENCY = 4


class S3Store(PartialArea):
    """A bucket (and key prefix) of an S3-compatible object store, with a local partial-file area."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        partial_directory: Path,
        *,
        endpoint_url: str = "",
        region: str = "us-east-1",
        access_key_id: str = "",
        secret_access_key: str = "",
        part_size: int = 16 * 1024 * 1024,
        presign_time: float | None = None,
    ) -> None:
        super().__init__(partial_directory)
        config: S3Config = {"region": region}
        if endpoint_url:
            # Path-style requests: what s3proxy, MinIO and most self-hosted stores answer.
            config |= {"endpoint": endpoint_url, "virtual_hosted_style_request": False}
        if access_key_id:
            config |= {"access_key_id": access_key_id, "secret_access_key": secret_access_key}
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.presign_time = presign_time
        self.client = ObjectStoreS3(
            bucket,
            prefix=self.prefix or None,
            config=config,
            client_options={"allow_http": endpoint_url.startswith("http://")},
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """The store of STORE_URL and the S3_* settings."""
        bucket, _, prefix = settings.store_url.removeprefix("s3://").partition("/")
        return cls(
            bucket,
            prefix,
            settings.partial_directory,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            part_size=settings.s3_part_size,
            presign_time=settings.s3_presign_time if settings.s3_downloads == "redirect" else None,
        )

    def __repr__(self) -> str:  # never the credentials
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def local_path(self, name: str) -> Path | None:
        """None: the objects are not on local disk."""
        return None

    async def publish(self, partial: Path, name: str) -> PublishedFile:
        """Upload the finished file in parts under a key of its own derived from `name`; remove the file."""
        base = safe_file_name(name, "file")
        stem, dot, ext = base.rpartition(".")
        key = f"{stem}-{secrets.token_hex(4)}.{ext}" if dot else f"{base}-{secrets.token_hex(4)}"
        digest = hashlib.sha256()
        size = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal size
            fh = await asyncio.to_thread(open, partial, "rb")
            try:
                while chunk := await asyncio.to_thread(fh.read, COPY_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
            finally:
                fh.close()

        # An async iterator always takes the multipart path, whatever the size: one way to publish.
        await obstore.put_async(
            self.client,
            key,
            chunks(),
            chunk_size=self.part_size,
            max_concurrency=UPLOAD_CONCURRENCY,
            attributes={"Content-Type": "application/zip"},
        )
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        return PublishedFile(name=key, size=size, sha256=digest.hexdigest())

    async def stat(self, name: str) -> StoredFile | None:
        """The object's size and last-modified time, or None when there is no such object."""
        try:
            meta = await obstore.head_async(self.client, name)
        except FileNotFoundError:
            return None
        return StoredFile(name=name, size=meta["size"], modified=meta["last_modified"].timestamp())

    async def read(self, name: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes `start` to `end` (excluded), streamed (FileNotFoundError if it is gone)."""
        if end is not None and end <= start:
            return
        wanted: Any = (start, end) if end is not None else {"offset": start}
        result = await obstore.get_async(self.client, name, options={"range": wanted})
        async for chunk in result.stream(min_chunk_size=COPY_CHUNK):
            yield bytes(chunk)

    async def remove(self, name: str) -> None:
        """Delete the object (S3 answers a delete of a missing key with success)."""
        await obstore.delete_async(self.client, name)

    async def listing(self) -> list[StoredFile]:
        """Every object under the prefix."""
        found: list[StoredFile] = []
        async for batch in obstore.list(self.client, prefix=None):
            for meta in batch:
                found.append(
                    StoredFile(
                        name=meta["path"], size=meta["size"], modified=meta["last_modified"].timestamp()
                    )
                )
        return sorted(found, key=lambda f: f.name)

    async def download_url(self, name: str) -> str | None:
        """A presigned GET URL valid S3_PRESIGN_TIME seconds when downloads redirect (S3_DOWNLOADS)."""
        if self.presign_time is None:
            return None
        expires = datetime.timedelta(seconds=self.presign_time)
        return await obstore.sign_async(self.client, "GET", name, expires)
