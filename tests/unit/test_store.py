"""The file store: atomic publication, safe names, streamed ZIPs."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from packager.store import FileStore, safe_file_name, zip_one_file


def test_a_zip_is_invisible_until_published(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", tmp_path / "store" / ".partial")
    source = tmp_path / "data.bin"
    source.write_bytes(b"\x00\x01abc" * 100_000)
    partial = store.partial_path("job-1", ".zip.partial")
    zip_one_file(source, "data.bin", partial)
    assert list(store.directory.glob("*.zip")) == []
    published = store.publish(partial, "job-1.zip")
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
