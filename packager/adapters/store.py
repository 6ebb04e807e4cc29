"""Adapter: the file store where finished ZIPs live, and the atomic way they get there.

Files are built under `<partial_directory>` and renamed into the store only when complete, so a partial ZIP is
never visible under its final name. The partial directory defaults to a folder inside the store so the rename
stays on one filesystem. A build removes its own partial files however it ends, except when its process is
killed (`kill -9`, a power cut): `sweep_partials` removes what such a build left, by age, since several
workers may share the directory and a file's owner cannot be told from its name.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packager.domain.zip_entries import PackageZipFile

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


class FileStore:
    """The store directory and its partial-file area."""

    def __init__(self, directory: Path, partial_directory: Path) -> None:
        self.directory = directory
        self.partial_directory = partial_directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.partial_directory.mkdir(parents=True, exist_ok=True)

    def partial_path(self, job_id: str, suffix: str) -> Path:
        """Where a job builds one of its intermediate files."""
        return self.partial_directory / f"{safe_file_name(job_id, 'job')}{suffix}"

    def path_of(self, name: str) -> Path:
        """The path of a published file."""
        return self.directory / safe_file_name(name, "file")

    def publish(self, partial: Path, name: str) -> PublishedFile:
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


def zip_one_file(source: Path, arcname: str, destination: Path) -> None:
    """Write `source` into a new deflated, ZIP64-capable archive at `destination`, streaming in chunks."""
    with (
        PackageZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf,
        open(source, "rb") as src,
        zf.open(arcname, "w", force_zip64=True) as dst,
    ):
        while chunk := src.read(COPY_CHUNK):
            dst.write(chunk)
