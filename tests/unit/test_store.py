"""The folder store: atomic publication, safe names, streamed ZIPs, the partial files' sweep (the rest of
the store's behaviour, shared with the object store, is in tests/integration/test_store_contract.py)."""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from pathlib import Path

from packager.adapters.store import FileStore, safe_file_name, zip_one_file


async def test_a_zip_is_invisible_until_published(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", tmp_path / "store" / ".partial")
    source = tmp_path / "data.bin"
    source.write_bytes(b"\x00\x01abc" * 100_000)
    partial = store.partial_path("job-1", ".zip.partial")
    zip_one_file(source, "data.bin", partial)
    assert list(store.directory.glob("*.zip")) == []
    published = await store.publish(partial, "job-1.zip")
    assert not partial.exists()
    final = store.directory / "job-1.zip"
    assert published.size == final.stat().st_size
    assert published.sha256 == hashlib.sha256(final.read_bytes()).hexdigest()
    with zipfile.ZipFile(final) as zf:
        assert zf.testzip() is None
        assert zf.read("data.bin") == source.read_bytes()


def test_names_cannot_escape_the_store() -> None:
    assert safe_file_name("../../etc/passwd", "x") == "etc_passwd"
    assert safe_file_name("/abs/path", "x") == "abs_path"
    assert safe_file_name("a\x00b", "x") == "ab"
    assert safe_file_name("..", "fallback") == "fallback"
    assert safe_file_name("", "") == "resource"


def test_the_sweep_removes_only_partial_files_older_than_the_age_given(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", tmp_path / "store" / ".partial")
    now = time.time()
    left_by_a_kill = store.partial_path("job-killed", ".zip.partial")
    left_by_a_kill.write_bytes(b"x" * 1000)
    os.utime(left_by_a_kill, (now - 7200, now - 7200))
    being_written = store.partial_path("job-running", ".download")
    being_written.write_bytes(b"y")
    os.utime(being_written, (now - 60, now - 60))
    a_folder = store.partial_directory / "someone-elses"
    a_folder.mkdir()
    os.utime(a_folder, (now - 7200, now - 7200))
    published = store.path_of("old.zip")
    published.write_bytes(b"z")
    os.utime(published, (now - 7200, now - 7200))

    assert store.sweep_partials(max_age=3600, now=now) == [left_by_a_kill]

    assert not left_by_a_kill.exists()
    assert being_written.exists() and a_folder.exists() and published.exists()
    assert store.sweep_partials(max_age=3600, now=now) == []
