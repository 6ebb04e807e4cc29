"""`packager dev s3` without a server: it says so and touches nothing (the running server is exercised by the
store tests' session fixture, tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.cli.main import main


def test_status_and_stop_of_a_server_never_started_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dev", "s3", "status", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out == "not running\n"
    assert main(["dev", "s3", "stop", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no server was running\n"
    assert list(tmp_path.iterdir()) == []
