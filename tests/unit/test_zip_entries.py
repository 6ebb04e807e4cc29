"""Files inside a package unzip readable by everyone (0644) and dated when they were written, not 1980."""

from __future__ import annotations

import shutil
import subprocess
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from packager.adapters.store import zip_one_file
from packager.domain.archive import DwcPacker, ZipPacker
from packager.domain.dwc import DwcConfig


def assert_entries_readable_and_recent(path: Path, started: float) -> list[str]:
    """Every entry of the ZIP at `path` has mode 0644 and a date between `started` and now."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            assert info.external_attr >> 16 & 0o777 == 0o644, (info.filename, oct(info.external_attr >> 16))
            written = datetime(*info.date_time).timestamp()
            # A ZIP date has a two-second resolution (seconds are stored halved, rounded down).
            assert started - 2 <= written <= time.time() + 1, (info.filename, info.date_time)
            assert info.compress_type == zipfile.ZIP_DEFLATED, info.filename
        assert zf.testzip() is None
    return [info.filename for info in infos]


def test_a_data_package_has_readable_recent_entries(tmp_path: Path) -> None:
    started = time.time()
    path = tmp_path / "package.zip"
    packer = ZipPacker(path, "csv", ["_id", "name"], spool_dir=tmp_path, compresslevel=1)
    packer.write_rows([[1, "a"], [2, "b"]])
    packer.finish({"resource_id": "r1"})
    assert assert_entries_readable_and_recent(path, started) == ["resource.csv", "manifest.json"]


def test_a_darwin_core_archive_has_readable_recent_entries(tmp_path: Path) -> None:
    started = time.time()
    path = tmp_path / "dwc.zip"
    packer = DwcPacker(
        path, ["_id", "associatedMedia"], DwcConfig.default(), spool_dir=tmp_path, eml="", compresslevel=1
    )
    packer.write_rows([[1, "http://e.org/a.jpg"]])
    packer.finish({"resource_id": "r1"})
    names = assert_entries_readable_and_recent(path, started)
    assert {"occurrence.csv", "multimedia.csv", "meta.xml", "manifest.json"} <= set(names)


def test_a_packaged_file_has_a_readable_recent_entry(tmp_path: Path) -> None:
    started = time.time()
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 1000)
    path = tmp_path / "file.zip"
    zip_one_file(source, "data.bin", path)
    assert assert_entries_readable_and_recent(path, started) == ["data.bin"]


@pytest.mark.skipif(shutil.which("unzip") is None, reason="the unzip tool is not installed")
def test_unzip_extracts_files_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "package.zip"
    packer = ZipPacker(path, "csv", ["_id"], spool_dir=tmp_path)
    packer.write_rows([[1]])
    packer.finish({})
    out = tmp_path / "out"
    subprocess.run(["unzip", "-q", str(path), "-d", str(out)], check=True)
    assert (out / "resource.csv").stat().st_mode & 0o777 == 0o644
