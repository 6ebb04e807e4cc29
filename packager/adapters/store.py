"""Adapter: the store where finished ZIPs live, and the atomic way they get there.

One `Store` protocol, two implementations: `FolderStore` here (a local folder, the embedded default) and
`S3Store` in `packager.adapters.s3_store` (any S3-compatible object store, `STORE_URL=s3://bucket/prefix`);
`packager.adapters.stores.open_store` picks one from the settings. Both build a ZIP as a local file under
`<partial_directory>` and publish it only when complete, so a partial ZIP is never visible under its final
name: the folder renames it into place, the object store uploads it in parts from disk as one multipart
upload, which S3 makes visible only when the upload completes. The partial directory defaults to a folder
inside STORE_DIRECTORY so the folder's rename stays on one filesystem. A build removes its own partial files
however it ends, except when its process is killed (`kill -9`, a power cut): `sweep_partials` removes what
such a build left, by age, since several workers may share the directory and a file's owner cannot be told
from its name.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from packager.domain.zip_entries import PackageZipFile

if TYPE_CHECKING:
    pass

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

COPY_CHUNK = 1024 * 1024


def safe_file_name(name: str, fallback: str) -> str:
    """A file name with no path separators, NULs or leading dots, never empty."""
    cleaned = _SAFE.sub("_", name.replace("\x00", "")).strip("._")[:150]
    return cleaned or _SAFE.sub("_", fallback).strip("._")[:150] or "resource"


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """A file that is now in the store."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What the store says of a published file: its size and when it was published (Unix seconds)."""

    name: str
    size: int
    modified: float


class Store(Protocol):
    """Where finished ZIPs are published, read back (with ranges), listed and removed."""

    partial_directory: Path

    def partial_path(self, job_id: str, suffix: str) -> Path:
        """Where a job builds one of its intermediate files (always on local disk)."""
        ...

    def discard(self, *paths: Path) -> None:
        """Remove intermediate files of a job, ignoring those already gone."""
        ...

    def sweep_partials(self, max_age: float, now: float | None = None) -> list[Path]:
        """Remove partial files not modified for `max_age` seconds; return the paths removed."""
        ...

    async def publish(self, partial: Path, name: str) -> PublishedFile:
        """Make the finished `partial` visible whole under `name` (or a name derived from it, returned), never
        over a published file (FileExistsError); the partial file is gone afterwards."""
        ...

    async def stat(self, name: str) -> StoredFile | None:
        """The published file `name`, or None when there is none."""
        ...

    def read(self, name: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes `start` to `end` (excluded; None: the end) of a published file, in chunks."""
        ...

    async def remove(self, name: str) -> None:
        """Remove a published file; nothing happens if it is already gone."""
        ...

    async def listing(self) -> list[StoredFile]:
        """Every published file (the janitor's and the operator's view of the store)."""
        ...

    async def download_url(self, name: str) -> str | None:
        """A short-lived URL a browser can fetch the file from directly, or None to serve it ourselves."""
        ...

    def local_path(self, name: str) -> Path | None:
        """The file on local disk when the store is a folder (served with the OS's sendfile), else None."""
        ...


class PartialArea:
    """The local folder where builds write their files before publication (shared by both stores)."""

    def __init__(self, partial_directory: Path) -> None:
        self.partial_directory = partial_directory
        self.partial_directory.mkdir(parents=True, exist_ok=True)

    def partial_path(self, job_id: str, suffix: str) -> Path:
        """Where a job builds one of its intermediate files."""
        return self.partial_directory / f"{safe_file_name(job_id, 'job')}{suffix}"

    def sweep_partials(self, max_age: float, now: float | None = None) -> list[Path]:
        """Remove partial files not modified for `max_age` seconds; return the paths removed.

        `max_age` must exceed the longest a build can run (Settings.partial_max_age): every file of a
        running build was written since that build started, so nothing a live build uses is old enough.
        """
        cutoff = (time.time() if now is None else now) - max_age
        removed: list[Path] = []
        with os.scandir(self.partial_directory) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile by its own build
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(Path(entry.path))
        return removed

    def discard(self, *paths: Path) -> None:
        """Remove intermediate files of a job, ignoring those already gone."""
        for path in paths:
            path.unlink(missing_ok=True)


class FolderStore(PartialArea):
    """The store directory and its partial-file area (the embedded default)."""

    def __init__(self, directory: Path, partial_directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        super().__init__(partial_directory)

    def path_of(self, name: str) -> Path:
        """The path of a published file."""
        return self.directory / safe_file_name(name, "file")

    def local_path(self, name: str) -> Path | None:
        """The published file's path (whether or not it exists)."""
        return self.path_of(name)

    def publish_now(self, partial: Path, name: str) -> PublishedFile:
        """Fsync and atomically move a finished file into the store; return its size and sha256.

        Never replaces a file already published under `name` (FileExistsError): a link either appears
        whole under its final name or not at all, and two builds of one job cannot overwrite each other.
        """
        digest = hashlib.sha256()
        with open(partial, "rb") as fh:
            while chunk := fh.read(COPY_CHUNK):
                digest.update(chunk)
            os.fsync(fh.fileno())
        final = self.path_of(name)
        os.link(partial, final)  # atomic, and fails if the name is taken
        partial.unlink()
        return PublishedFile(name=final.name, size=final.stat().st_size, sha256=digest.hexdigest())

    async def publish(self, partial: Path, name: str) -> PublishedFile:
        """`publish_now` in a thread (it reads the whole file to hash it)."""
        return await asyncio.to_thread(self.publish_now, partial, name)

    async def stat(self, name: str) -> StoredFile | None:
        """The published file's size and modification time, or None."""
        try:
            info = self.path_of(name).stat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return StoredFile(name=self.path_of(name).name, size=info.st_size, modified=info.st_mtime)

    async def read(self, name: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The file's bytes from `start` to `end` (excluded), read in chunks in a thread."""
        fh = await asyncio.to_thread(open, self.path_of(name), "rb")
        try:
            fh.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                want = COPY_CHUNK if left is None else min(COPY_CHUNK, left)
                chunk = await asyncio.to_thread(fh.read, want)
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            fh.close()

    async def remove(self, name: str) -> None:
        """Remove a published file, if it is there."""
        self.path_of(name).unlink(missing_ok=True)

    async def listing(self) -> list[StoredFile]:
        """The published files (the folder's regular files, not its hidden partial or view folders)."""
        found = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            found.append(StoredFile(name=entry.name, size=info.st_size, modified=info.st_mtime))
        return sorted(found, key=lambda f: f.name)

    async def download_url(self, name: str) -> str | None:
        """None: the ingress serves a folder's files itself."""
        return None


async def remove_stale(store: Store, max_age: float, now: float | None = None) -> list[str]:
    """Remove the published ZIPs older than `max_age` seconds; return their names.

    The backstop of expiry: a ZIP no cache entry names (its build's process died between publication and
    its PackageBuilt, or a removal failed) is removed here once no link can serve it any more.
    """
    cutoff = (time.time() if now is None else now) - max_age
    stale = [f.name for f in await store.listing() if f.name.endswith(".zip") and f.modified < cutoff]
    for name in stale:
        await store.remove(name)
    return stale


# The name the code base knew the folder store by.
FileStore = FolderStore


def zip_one_file(source: Path, arcname: str, destination: Path) -> None:
    """Write `source` into a new deflated, ZIP64-capable archive at `destination`, streaming in chunks."""
    with (
        PackageZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf,
        open(source, "rb") as src,
        zf.open(arcname, "w", force_zip64=True) as dst,
    ):
        while chunk := src.read(COPY_CHUNK):
            dst.write(chunk)
