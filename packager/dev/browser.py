"""What the `browser` tests need on the machine: Debian's chromium and the axe-core accessibility checker.

`npm_file()` installs any pinned npm package the tests read (axe-core, the Compose Specification's schema)
the same way.

`chromium()` installs the `chromium` and `chromium-driver` packages when missing (as root, through apt-get,
like `packager.dev.postgres`) and returns the browser's path; nothing here downloads a browser of its own
(Playwright's `playwright install` is never run). `axe_core()` installs the pinned `axe-core` from npm once
into a cache folder (`$PACKAGER_BROWSER_CACHE`, else `~/.cache/ckanpackager`) and returns its script.

`CHROMIUM_ARGS` are the flags every launch needs on a closed network: without them chromium tries to reach
outside hosts (component updates, sync, QUIC probes) at start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from packager.dev.processes import ServiceError, ensure_debian_packages

CHROMIUM = Path("/usr/bin/chromium")
AXE_CORE_VERSION = "4.11.4"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in containers, where chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(*, log: Callable[[str], None] = print) -> Path:
    """Debian's chromium, installed (with chromium-driver) when missing."""
    if not CHROMIUM.exists():
        ensure_debian_packages(["chromium", "chromium-driver"], log=log)
    if not CHROMIUM.exists():
        raise ServiceError(f"chromium is not at {CHROMIUM} after installing Debian's package")
    return CHROMIUM


def cache_root() -> Path:
    """The folder holding what this module installed once (shared by every checkout)."""
    return Path(os.environ.get("PACKAGER_BROWSER_CACHE") or Path.home() / ".cache" / "ckanpackager")


def axe_core(*, log: Callable[[str], None] = print) -> Path:
    """`axe.min.js` of the pinned axe-core, installed from npm into the cache folder on first use."""
    return npm_file("axe-core", AXE_CORE_VERSION, "axe.min.js", log=log)


def npm_file(package: str, version: str, path: str, *, log: Callable[[str], None] = print) -> Path:
    """A file of an npm package pinned to `version`, installed into the cache folder on first use."""
    folder = cache_root() / f"{package}-{version}"
    wanted = folder / "node_modules" / package / path
    if wanted.exists():
        return wanted
    npm = shutil.which("npm")
    if npm is None:
        ensure_debian_packages(["npm"], log=log)
        npm = shutil.which("npm")
    if npm is None:
        raise ServiceError(f"npm is needed to install {package} and is missing")
    log(f"installing {package} {version} from npm into {folder}...")
    # Into a temporary folder first, renamed at the end: a half-finished install is never taken for one.
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(partial), f"{package}@{version}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ServiceError(f"npm could not install {package}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return wanted
