"""The chaos campaign's store settings: a shared folder, or one bucket with nothing shared on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos_store import BUCKET_PREFIX, CampaignStore, store_env
from packager.core.settings import load_settings
from packager.dev.s3proxy import S3Proxy

SERVER = S3Proxy(1234, 1, "s3proxy.jar", "/data", "/log", "bucket", "key-id", "secret-key")


def test_the_folder_store_is_one_folder_every_process_shares(tmp_path: Path) -> None:
    envs = [store_env("folder", tmp_path, name, None) for name in ("worker-1", "ingress-2")]
    assert envs[0] == envs[1] == {"PACKAGER_STORE_DIRECTORY": str(tmp_path / "store")}


def test_the_s3_store_is_one_bucket_prefix_and_a_local_folder_per_process(tmp_path: Path) -> None:
    worker = store_env("s3", tmp_path, "worker-1", SERVER)
    ingress = store_env("s3", tmp_path, "ingress-2", SERVER)
    assert worker["PACKAGER_STORE_URL"] == ingress["PACKAGER_STORE_URL"] == f"s3://bucket/{BUCKET_PREFIX}"
    assert worker["PACKAGER_S3_ENDPOINT_URL"] == "http://127.0.0.1:1234"
    # Partial files stay on each process's own disk: a ZIP reaches another process only through the bucket.
    assert worker["PACKAGER_STORE_DIRECTORY"] != ingress["PACKAGER_STORE_DIRECTORY"]
    settings = load_settings({**worker, "PACKAGER_SECRET": "s" * 32})  # settings the service accepts
    assert settings.store_url == f"s3://bucket/{BUCKET_PREFIX}"
    assert settings.partial_directory == tmp_path / "local" / "worker-1" / ".partial"


def test_an_s3_store_not_started_or_an_unknown_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        CampaignStore("s3", tmp_path, print).env("worker-1")
    with pytest.raises(ValueError, match="folder, s3"):
        CampaignStore("disk", tmp_path, print)
