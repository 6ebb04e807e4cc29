"""A bug inside a build: the operator gets an ERROR with its traceback and a metric, the requester only hears
that the service failed (never the exception's text), and the build leaves no partial file behind."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from packager.adapters.store import FileStore
from packager.core.settings import Settings, load_settings
from packager.dev.ckan_server import SyntheticTable, serve_ckan
from packager.domain import writers
from packager.domain.emails import render_failed
from packager.domain.events import Event, PackageFailed, PackageRequested, envelope
from packager.service.packaging import INTERNAL_FAILURE, JobContext, run_job

JOB_ID = "0b7d6a1e-3c1f-4f57-9d0e-6f3e2b1a9c88"
TABLE = SyntheticTable("t-bug", 50, seed=1)
SECRET_DETAIL = "division by zero in column 'secret_note'"


async def loopback(host: str) -> list[str]:
    return ["127.0.0.1"]


def leftovers(settings: Settings) -> list[Path]:
    """Partial files and ZIPs a build left in the store."""
    return [*settings.partial_directory.iterdir(), *Path(settings.store_directory).glob("*.zip")]


def internal_errors() -> float:
    return REGISTRY.get_sample_value("packager_internal_errors_total", {"lane": "fast"}) or 0.0


async def test_a_bug_in_a_writer_is_logged_counted_and_reported_only_as_a_service_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: writers.RowWriter, rows: Sequence[Sequence[Any]]) -> None:
        raise ZeroDivisionError(SECRET_DETAIL)

    monkeypatch.setattr(writers.RowWriter, "write_rows", broken)  # undone after the test
    settings = load_settings(
        {}, secret="internal-error-test-secret-0123", store_directory=str(tmp_path), allow_private_urls=True
    )
    store = FileStore(Path(settings.store_directory), settings.partial_directory)
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    before = internal_errors()
    async with serve_ckan({TABLE.resource_id: TABLE}) as api_url, aiohttp.ClientSession() as session:
        req = PackageRequested(
            kind="datastore",
            cache_key="bug-ds",
            resource_id=TABLE.resource_id,
            email="someone@example.org",
            ckan_host="127.0.0.1",
            request={"api_url": api_url, "resource_id": TABLE.resource_id, "format": "csv", "key_sealed": ""},
        )
        ctx = JobContext(
            settings=settings, session=session, store=store, resolve=loopback, emit=emit, worker="test"
        )
        with caplog.at_level(logging.ERROR, logger="packager.service.packaging"):
            outcome = await run_job(envelope(JOB_ID, req), "fast", ctx)

    # The requester: a plain "the service failed", in the terminal event and in the email.
    assert isinstance(outcome, PackageFailed)
    assert outcome.error == INTERNAL_FAILURE and outcome.error_type == "InternalError"
    email = render_failed(settings, JOB_ID, outcome).get_body(("plain",))
    assert email is not None
    body = email.get_content()
    assert "The service stopped while preparing your data." in body  # told for the requester
    for leak in ("ZeroDivisionError", "secret_note", "Traceback"):
        assert leak not in outcome.error and leak not in body
    # The operator: one ERROR record with the traceback and the job id, and the metric.
    records = [
        r for r in caplog.records if r.levelno == logging.ERROR and r.name == "packager.service.packaging"
    ]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[0] is ZeroDivisionError
    assert getattr(records[0], "job_id", None) == JOB_ID
    assert internal_errors() == before + 1
    # Nothing half-built is left behind.
    assert leftovers(settings) == []
