"""The real CKAN 2.12 of the `real_ckan` tests: started once per session, stopped at its end even on failure.

`packager.dev.real_ckan` installs what is missing (Debian packages as root, CKAN from PyPI into a cached
virtualenv) and starts PostgreSQL, Redis, a Solr stand-in and CKAN. If that cannot be done, every test here
fails with the reason: they never skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from packager.dev import real_ckan
from packager.dev.test_tables import BIG_ROWS, FIELDS, PRIVATE_ROWS, record


@dataclass(frozen=True)
class Portal:
    """The running CKAN and the tables loaded into it."""

    ckan: real_ckan.RealCkan
    api: real_ckan.CkanApi
    big: str  # resource id of the BIG_ROWS-row public table
    private: str  # resource id of a table in a private dataset

    @property
    def api_url(self) -> str:
        return self.ckan.action_url


@pytest.fixture(scope="session")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    state_dir = Path(tmp_path_factory.mktemp("real-ckan"))
    started = time.monotonic()
    try:
        ckan = real_ckan.start(state_dir, log=lambda m: print(m, flush=True))
    except Exception as exc:  # any reason becomes a loud failure that names it
        real_ckan.stop(state_dir)
        pytest.fail(f"A real CKAN 2.12 could not be installed or started: {exc}", pytrace=False)
    try:
        api = real_ckan.CkanApi(ckan.url, ckan.api_token)
        stamp = int(time.time() * 1000)
        big = real_ckan.create_table(api, f"big-{stamp}", FIELDS, (record(i) for i in range(BIG_ROWS)))
        private = real_ckan.create_table(
            api, f"private-{stamp}", FIELDS, (record(i) for i in range(PRIVATE_ROWS)), private=True
        )
        print(f"real CKAN ready with its tables in {time.monotonic() - started:.0f}s", flush=True)
        yield Portal(ckan=ckan, api=api, big=big, private=private)
    finally:
        real_ckan.stop(state_dir)
