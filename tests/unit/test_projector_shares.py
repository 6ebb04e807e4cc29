"""Projectors sharing the log (`--share I/K`, `--processes K`) without a broker: which partitions a share
reads, what the command refuses, and each share's status reported on its own (one share that is well does
not hide another's failure), with rows of an earlier way of running cleared."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from packager.adapters import projector, viewreads
from packager.adapters.projector_shares import WHOLE, Share, clear_other_statuses, statuses
from packager.adapters.read_guard import FoldHealth
from packager.adapters.viewdb import ViewDatabase, database_url
from packager.cli.main import main
from packager.core.settings import Settings, load_settings
from tests.unit.samples import SECRET


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(tmp_path))


def test_shares_split_every_partition_between_them_exactly_once() -> None:
    shares = [Share.parse(f"{i}/3") for i in (1, 2, 3)]
    for partition in range(12):
        assert [s.owns(partition) for s in shares].count(True) == 1
    assert [p for p in range(8) if Share.parse("2/3").owns(p)] == [1, 4, 7]
    assert all(WHOLE.owns(p) for p in range(8))
    assert str(Share.parse(" 2 / 3 ")) == "2/3"


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "half", "1/2/3", "-1/2", ""])
def test_what_is_not_a_share_is_refused_with_the_form_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a share"):
        Share.parse(text)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--share", "3/2"], "--share: '3/2' is not a share: I/K needs 1 <= I <= K"),
        (["--share", "1/2", "--processes", "2"], "--processes and --share are alternatives"),
        (["--processes", "-1"], "--processes needs a number of processes, 1 or more"),
        (["--processes", "0"], "--processes needs a number of processes, 1 or more"),
    ],
)
def test_the_command_refuses_a_wrong_share_before_it_starts(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["projector", *argv]) == 2
    assert said in capsys.readouterr().err


def test_more_shares_than_partitions_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PACKAGER_SECRET", SECRET)
    monkeypatch.setenv("PACKAGER_PARTITIONS", "3")
    assert main(["projector", "--processes", "4"]) == 2
    assert "4 shares of the log's partitions, but the topics have PARTITIONS=3" in capsys.readouterr().err
    assert main(["projector", "--share", "4/4"]) == 2


def test_a_metrics_port_in_use_is_said_in_a_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PACKAGER_SECRET": SECRET, "PACKAGER_STORE_DIRECTORY": str(tmp_path)}
        command = [sys.executable, "-m", "packager", "projector", "--metrics-port", str(port)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    said = f"packager projector: cannot serve metrics on 127.0.0.1:{port} (Address already in use)"
    assert said in done.stderr
    assert "Traceback" not in done.stderr


async def test_each_share_reports_its_own_failure_and_a_new_count_clears_the_old_rows(
    settings: Settings,
) -> None:
    db = ViewDatabase(database_url(settings))
    first, second = Share.parse("1/2"), Share.parse("2/2")
    failing = FoldHealth(stopped="the database is unreachable")
    await projector._publish(db, failing, first)
    await projector._publish(db, FoldHealth(), second)  # the well share writes after
    reads = viewreads.ReadViews(settings)
    try:
        told = await reads.projector_status()
        assert told.startswith("share 1/2: the read side stopped (the database is unreachable)")
        assert "2/2" not in told

        # Followed by one projector again: the shares' rows describe projectors no longer running.
        conn = db.connect()
        try:
            clear_other_statuses(db, conn, WHOLE)
            assert statuses(db, conn) == {}
        finally:
            conn.close()
        await projector._publish(db, FoldHealth(), WHOLE)
        assert await reads.projector_status() == ""
    finally:
        await reads.close()
