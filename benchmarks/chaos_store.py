"""The package store a chaos stack runs on: a folder every process shares, or a bucket of s3proxy.

`--store folder` (the default before issue 17) gives every ingress and worker the same `STORE_DIRECTORY`.
`--store s3` starts s3proxy with the dev tool (`packager.dev.s3proxy`, what `packager dev s3 start` runs) in
the campaign's temp folder, points every process at one bucket prefix, and gives each process a local folder
of its own for its partial files: nothing on disk is shared, so a ZIP one worker built reaches an ingress (or
the checker) only through the object store, as on separate machines.

The checker reads ZIPs from a folder; `readable_copy()` gives it one: the store folder itself, or a copy of
the named objects read through the service's own S3 client (`S3Store.read`): a ZIP is verified as stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path

from packager.adapters.s3_store import S3Store
from packager.dev import s3proxy

STORES = ("folder", "s3")
BUCKET_PREFIX = "chaos"


def store_env(kind: str, root: Path, process: str, server: s3proxy.S3Proxy | None) -> dict[str, str]:
    """The `PACKAGER_*` store settings of one process (`process` names its own local folder)."""
    if kind == "folder":
        return {"PACKAGER_STORE_DIRECTORY": str(root / "store")}
    if kind != "s3":
        raise ValueError(f"unknown store {kind!r}: one of {', '.join(STORES)}")
    if server is None:
        raise RuntimeError("the S3 store's server is not started")
    # STORE_DIRECTORY is then only where the process builds its partial files: its own, never shared.
    return {
        **server.settings_env(prefix=BUCKET_PREFIX),
        "PACKAGER_STORE_DIRECTORY": str(root / "local" / process),
    }


class CampaignStore:
    """The store of one stack: started before the service's processes, stopped after them."""

    def __init__(self, kind: str, root: Path, log: Callable[[str], None]) -> None:
        if kind not in STORES:
            raise ValueError(f"unknown store {kind!r}: one of {', '.join(STORES)}")
        self.kind = kind
        self.root = root
        self.log = log
        self.server: s3proxy.S3Proxy | None = None

    @property
    def folder(self) -> Path:
        """The shared store folder (folder store), where the ZIPs are."""
        return self.root / "store"

    @property
    def s3_dir(self) -> Path:
        """s3proxy's record, log and data (the bucket is a folder of it)."""
        return self.root / "s3"

    def start(self) -> None:
        """Create the folder, or start s3proxy (its jar resolved from Maven Central the first time)."""
        if self.kind == "folder":
            self.folder.mkdir(parents=True, exist_ok=True)
            return
        self.s3_dir.mkdir(parents=True, exist_ok=True)
        self.server = s3proxy.start(self.s3_dir, log=self.log)
        self.log(f"s3proxy at {self.server.endpoint}, bucket {self.server.bucket}/{BUCKET_PREFIX}")

    def env(self, process: str) -> dict[str, str]:
        """The store settings of the process named `process`."""
        return store_env(self.kind, self.root, process, self.server)

    async def readable_copy(self, names: Iterable[str]) -> Path:
        """A folder where each of `names` that the store holds can be read as a file."""
        if self.kind == "folder":
            return self.folder
        target = self.root / "from-s3"
        target.mkdir(parents=True, exist_ok=True)
        server = self.server
        if server is None:
            raise RuntimeError("the S3 store's server is not started")
        store = S3Store(
            server.bucket,
            BUCKET_PREFIX,
            self.root / "local" / "checker",
            endpoint_url=server.endpoint,
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
        )
        for name in sorted(set(names)):
            if Path(name).name == name:  # a plain object name; anything else stays "missing" for the checker
                await _download(store, name, target / name)
        return target

    def stop(self, keep_data: bool) -> None:
        """Stop s3proxy (by the pid it recorded), keeping its objects if asked; safe to call twice."""
        if self.kind == "s3" and self.s3_dir.exists():
            s3proxy.stop(self.s3_dir, keep_data=keep_data)
            self.server = None


async def _download(store: S3Store, name: str, path: Path) -> None:
    """Copy one object to `path`; nothing is written when the object is missing (the checker says so)."""
    partial = path.with_name(path.name + ".part")
    out = await asyncio.to_thread(partial.open, "wb")
    complete = False
    try:
        async for chunk in store.read(name):
            await asyncio.to_thread(out.write, chunk)
        complete = True
    except FileNotFoundError:
        pass
    finally:
        out.close()
        # Only a whole object takes its name: the checker must never verify half of one.
        if complete:
            partial.rename(path)
        else:
            partial.unlink(missing_ok=True)
