"""The browser tests' tools install once and never leave a half install: axe-core from npm into the cache,
against a stand-in `npm` that records its calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.dev import browser
from packager.dev.processes import ServiceError

FAKE_NPM = """#!/usr/bin/env bash
# Stands in for npm: `install --prefix DIR axe-core@V` writes DIR/node_modules/axe-core/axe.min.js.
echo "$*" >> "{calls}"
[ -n "${{FAKE_NPM_FAILS:-}}" ] && {{ echo "npm ERR! network"; exit 1; }}
while [ $# -gt 0 ]; do [ "$1" = "--prefix" ] && prefix=$2; shift; done
mkdir -p "$prefix/node_modules/axe-core"
echo "window.axe = {{}};" > "$prefix/node_modules/axe-core/axe.min.js"
"""


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "npm-calls"
    (bin_dir / "npm").write_text(FAKE_NPM.format(calls=calls))
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("PACKAGER_BROWSER_CACHE", str(tmp_path / "cache"))
    return calls


def test_axe_core_is_installed_once_then_taken_from_the_cache(fake_npm: Path) -> None:
    script = browser.axe_core(log=lambda _: None)
    assert script.read_text().startswith("window.axe")
    assert f"axe-core@{browser.AXE_CORE_VERSION}" in fake_npm.read_text()
    assert browser.axe_core(log=lambda _: None) == script
    assert len(fake_npm.read_text().splitlines()) == 1  # the second call did not run npm


def test_a_failed_install_says_why_and_leaves_nothing_behind(
    fake_npm: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_NPM_FAILS", "1")
    with pytest.raises(ServiceError, match="npm ERR! network"):
        browser.axe_core(log=lambda _: None)
    assert list((tmp_path / "cache").iterdir()) == []


def test_chromium_starts_with_the_flags_a_closed_network_needs() -> None:
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        assert flag in browser.CHROMIUM_ARGS
