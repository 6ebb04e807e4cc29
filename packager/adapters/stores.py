"""Adapter: which store the settings name (apart from both stores, so neither imports the other)."""

from __future__ import annotations

from pathlib import Path

from packager.adapters.store import FolderStore, Store
from packager.core.settings import Settings


def open_store(settings: Settings) -> Store:
    """The store the settings name: the object store of STORE_URL, else the folder STORE_DIRECTORY."""
    if settings.store_url:
        from packager.adapters.s3_store import S3Store

        return S3Store.from_settings(settings)
    return FolderStore(Path(settings.store_directory), settings.partial_directory)
