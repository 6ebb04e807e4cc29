"""Driving Debian's chromium from the `browser` tests: a fresh headless browser per test, axe-core, and the
screenshot every test keeps.

The browser is Debian's `chromium` (installed by `packager.dev.browser` when missing), launched by Playwright
with the flags a closed network needs and a user-data folder of its own under the test's tmp dir. Each test's
screenshots are written to its tmp dir (`pytest`'s `--basetemp`, by default under
/tmp/pytest-of-<user>/), whose path the test prints, and copied to `$BROWSER_ARTEFACTS/<test>/`, by
default `var/browser-artefacts/<test>/` in the work tree (so `bash .ci/run` leaves them where CI collects
them). Every JavaScript error on a page fails the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, ViewportSize, async_playwright

from packager.dev import browser
from packager.dev.processes import ServiceError

# Where screenshots are copied when BROWSER_ARTEFACTS names no folder (var/ is git-ignored).
ARTEFACTS = Path(__file__).resolve().parents[2] / "var" / "browser-artefacts"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
# How long a page may take to show what a test waits for (the views are polled every 0.25 s).
WAIT_MS = 15_000


def chromium_and_axe() -> tuple[Path, Path]:
    """Debian's chromium and axe-core's script, installed when missing; the test fails if they cannot be."""
    try:
        return browser.chromium(), browser.axe_core()
    except ServiceError as exc:
        pytest.fail(f"The browser tests need chromium and axe-core: {exc}", pytrace=False)


@contextlib.asynccontextmanager
async def open_page(tmp_path: Path, viewport: ViewportSize = DESKTOP) -> AsyncIterator[Page]:
    """A page of a fresh headless chromium; fails the test on any JavaScript error the page raised."""
    executable, _ = chromium_and_axe()
    profile = tmp_path / "chromium-profile"
    errors: list[str] = []
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(executable),
            args=list(browser.CHROMIUM_ARGS),
            headless=True,
            viewport=viewport,
            locale="en-GB",
            timezone_id="UTC",
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
        finally:
            await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def serious_accessibility_problems(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations of impact `serious` or `critical` on the page as it is now."""
    _, axe = chromium_and_axe()
    await page.add_script_tag(path=str(axe))
    violations: list[dict[str, Any]] = await page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations.map(v => ({
             id: v.id, impact: v.impact, help: v.help,
             nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5)}))"""
    )
    return [v for v in violations if v["impact"] in ("serious", "critical")]


async def keep_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """Save the whole page as `<tmp_path>/screenshots/<name>.png` (the test's artefact) and say where."""
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    # pytest keeps only its last three tmp dirs: a copy outside them outlives later runs, for CI to collect.
    test = os.environ.get("PYTEST_CURRENT_TEST", "test").split("::")[-1].split(" ")[0]
    kept = Path(os.environ.get("BROWSER_ARTEFACTS") or ARTEFACTS) / test
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, kept / path.name)
    return path
