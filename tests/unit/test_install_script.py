"""The first `bash scripts/up` or `scripts/test` shows progress while pip installs: never minutes of silence.

`scripts/_install.sh` runs here against a stand-in for the virtualenv's Python whose "pip" takes its time.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.support import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for .venv/bin/python: `-m pip install -r LOCK` collects 25 packages slowly, as a first install.
if [[ " $* " == *" -r "* ]]; then
  for n in $(seq 1 25); do echo "Collecting pkg$n==1.0"; sleep "${FAKE_PIP_PACE:-0.5}"; done
  [ -n "${FAKE_PIP_FAILS:-}" ] && { echo "ERROR: pkg25 has a wrong hash"; exit 3; }
  echo "Installing collected packages: pkg1, pkg2"
  echo "Successfully installed pkg1-1.0 pkg2-1.0"
else
  echo "Successfully installed ckanpackager-0"
fi
"""


def install_tree(tmp_path: Path) -> Path:
    """A copy of the install script with a 25-package lock and the stand-in Python."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_install.sh", tmp_path / "scripts" / "_install.sh")
    (tmp_path / "requirements-test.lock").write_text(
        "".join(f"pkg{n}==1.0 \\\n    --hash=sha256:{n:064x}\n" for n in range(1, 26))
    )
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return tmp_path


def run_install(tree: Path, **env: str) -> tuple[int, list[tuple[float, str]]]:
    """Run the script; (exit status, [(seconds since start, line on stderr)])."""
    started = time.monotonic()
    with subprocess.Popen(
        ["bash", str(tree / "scripts" / "_install.sh")],
        cwd=tree,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            # No broker to start; Java and Maven (for s3proxy) are there: the suite's install added them.
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        lines = [(time.monotonic() - started, line.rstrip()) for line in proc.stderr]
        return proc.wait(timeout=60), lines


def test_a_slow_install_says_what_it_does_at_least_every_ten_seconds(tmp_path: Path) -> None:
    status, lines = run_install(install_tree(tmp_path))
    assert status == 0, lines
    text = [line for _, line in lines]
    assert (
        text[0] == "Installing 25 locked Python packages into .venv (the first time takes a minute or two)..."
    )
    assert "  collected 10 of 25 packages" in "\n".join(text)
    assert "  collected 20 of 25 packages" in "\n".join(text)
    assert any(line.startswith("  ... still installing (10s)") for line in text)
    assert any(line.startswith("  installing 25 packages into .venv") for line in text)
    assert "Installing the project itself into .venv..." in text
    times = [0.0, *(at for at, _ in lines)]
    assert max(b - a for a, b in itertools.pairwise(times)) < 11, lines
    assert any(p.name.startswith(".installed-") for p in (tmp_path / ".venv").iterdir())
    assert lines[-1][0] < 20, "the output stayed open after the install (a heartbeat left behind)"


def test_a_failed_install_shows_the_end_of_pips_output_and_fails(tmp_path: Path) -> None:
    status, lines = run_install(install_tree(tmp_path), FAKE_PIP_FAILS="1", FAKE_PIP_PACE="0.01")
    assert status == 3
    text = "\n".join(line for _, line in lines)
    assert "pip failed (exit 3)" in text and "ERROR: pkg25 has a wrong hash" in text
    assert not any(p.name.startswith(".installed-") for p in (tmp_path / ".venv").iterdir())


def test_resolving_kafka_from_maven_says_it_is_still_going() -> None:
    from packager.dev.kafka_jars import _run_saying_progress

    said: list[str] = []
    done = _run_saying_progress(
        ["bash", "-c", "sleep 1.3; echo jars; echo warning >&2; exit 3"], said.append, "resolving", every=0.5
    )
    assert len(said) >= 2 and all(re.fullmatch(r"  \.\.\. still resolving \(\d+s\)", m) for m in said), said
    assert (done.returncode, done.stdout, done.stderr) == (3, "jars\n", "warning\n")
