"""`packager replay` with no broker to read: a message saying what to do, not a traceback."""

from __future__ import annotations

import pytest

from packager.cli import replay
from packager.dev.processes import free_port


def test_an_unreachable_log_is_explained(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir("/")  # no var/stack.toml here
    monkeypatch.setenv("PACKAGER_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")  # nothing listens
    assert replay.main(["history", "--job", "some-job"]) == 2
    said = capsys.readouterr().err
    assert "packager replay: cannot read the log at 127.0.0.1:" in said
    assert "is the stack running (bash scripts/up)?" in said and "Traceback" not in said
