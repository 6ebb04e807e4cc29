"""`reset (requests|errors)`: a cut in time the statistics start after, the same whatever the fold order."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters import stat_resets
from packager.adapters.kafka_log import InMemoryEventLog, Topics
from packager.adapters.resolver import system_resolver
from packager.adapters.viewdb import ViewDatabase
from packager.cli import operator as cli
from packager.cli import operator_jobs
from packager.core.settings import Settings, load_settings
from packager.domain.events import (
    Envelope,
    PackageFailed,
    PackageRequested,
    StatisticsReset,
    envelope,
)
from packager.http.ingress import create_app
from projections.statistics import unix_time
from projections.view_schema import COMPARED
from tests.unit.samples import SECRET, attach_views, fill_views

pytestmark = pytest.mark.features

A, B = "0b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d70", "1c6c4daf-2f1f-4d2b-8e7f-3b8f2d4f6e81"


def at(second: int) -> str:
    return f"2026-12-01T10:00:{second:02d}.000Z"


def history() -> dict[str, Envelope]:
    """Two failed requests of one resource, and a reset of both statistics between them."""

    def asked(job: str, email: str) -> PackageRequested:
        return PackageRequested(
            kind="url", cache_key=job, resource_id="r1", email=email, ckan_host="h", request={}
        )

    def failed(job: str, email: str) -> PackageFailed:
        return PackageFailed(job, "r1", email, "h", "The portal said no", "CkanError")

    return {
        "a": envelope(A, asked(A, "a@example.org"), occurred_at=at(1)),
        "a failed": envelope(A, failed(A, "a@example.org"), occurred_at=at(2)),
        "reset requests": envelope("op1", StatisticsReset("*", "requests"), occurred_at=at(5)),
        "reset errors": envelope("op2", StatisticsReset("*", "errors"), occurred_at=at(5)),
        "b": envelope(B, asked(B, "b@example.org"), occurred_at=at(8)),
        "b failed": envelope(B, failed(B, "b@example.org"), occurred_at=at(9)),
    }


def settings_in(folder: Path) -> Settings:
    folder.mkdir(exist_ok=True)
    return load_settings({}, secret=SECRET, store_directory=str(folder))


def fold_in_batches(settings: Settings, batches: list[list[str]]) -> ViewDatabase:
    events = history()
    offsets: dict[str, int] = {}
    db: ViewDatabase | None = None
    for batch in batches:
        records = []
        for name in batch:
            topic = "t.requests" if name in ("a", "b") else "t.events"
            partition = 0 if name.startswith("a") else 1  # A's and B's partitions, read in either order
            where = f"{topic}/{partition}"
            records.append((topic, partition, offsets.get(where, 0), events[name]))
            offsets[where] = offsets.get(where, 0) + 1
        db = fill_views(settings, records)
    assert db is not None
    return db


def test_a_reset_gives_the_same_views_whatever_order_the_partitions_are_folded_in(tmp_path: Path) -> None:
    in_order = settings_in(tmp_path / "in-order")
    later_first = settings_in(tmp_path / "later-first")
    first = fold_in_batches(in_order, [["a", "a failed", "reset requests", "reset errors", "b", "b failed"]])
    second = fold_in_batches(
        later_first, [["b", "b failed"], ["reset requests", "reset errors"], ["a", "a failed"]]
    )
    views = []
    for db in (first, second):
        conn = db.connect()
        try:
            totals = db.totals(conn)
            listed = [e["resource_id"] for e in db.listing(conn, "requests")]
            errors = [e["email"] for e in db.listing(conn, "errors")]
            rows = {table.name: list(db.rows(conn, table)) for table in COMPARED}
        finally:
            conn.close()
        views.append(rows)
        # Only B is after the cut; unique requesters keep counting both (they are about people).
        assert totals["*"] == {"requests": 1, "errors": 1, "emails": 2}
        assert totals["r1"] == {"requests": 1, "errors": 1, "emails": 2}
        assert len(listed) == 1 and len(errors) == 1
    assert views[0] == views[1]
    assert views[0]["stat_requests"] and len(views[0]["stat_requests"]) == 2  # nothing was deleted


def test_an_older_reset_read_late_changes_nothing(tmp_path: Path) -> None:
    settings = settings_in(tmp_path / "v")
    events = history()
    newer = envelope("op3", StatisticsReset("*", "requests"), occurred_at=at(9))
    db = fill_views(
        settings,
        [
            ("t.requests", 0, 0, events["a"]),
            ("t.requests", 1, 0, events["b"]),
            ("t.events", 0, 0, newer),
            ("t.events", 1, 0, events["reset requests"]),
        ],
    )
    conn = db.connect()
    try:
        assert db.totals(conn)["*"]["requests"] == 0  # both requests are before the newer cut
        assert stat_resets.cuts(conn) == {"requests": unix_time(at(9))}  # the newer cut stands
    finally:
        conn.close()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, InMemoryEventLog, Settings]]:
    settings = settings_in(tmp_path / "s")
    log = InMemoryEventLog()
    app = create_app(settings, event_log=log, resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c, log, settings


async def test_the_reset_route_appends_one_reset_and_refuses_anything_else(
    client: tuple[TestClient, InMemoryEventLog, Settings],
) -> None:
    http, log, settings = client
    assert (await http.post("/statistics/reset", data={"which": "errors"})).status == 401
    assert (await http.post("/statistics/reset", data={"secret": SECRET, "which": "emails"})).status == 400
    assert log.records == {}
    resp = await http.post("/statistics/reset", data={"secret": SECRET, "which": "errors"})
    body = await resp.json()
    [(key, event)] = log.records[Topics(settings.topic_prefix).events]
    assert (key, event.payload) == ("*", StatisticsReset(cache_key="*", which="errors"))
    assert (resp.status, body["which"], body["since"]) == (200, "errors", event.occurred_at)


class Recorder:
    """Stands for the service: records what the command posts."""

    posted: list[tuple[str, dict[str, str]]] = []

    def __init__(self, host: str) -> None:
        self.host = host

    def post(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        Recorder.posted.append((path, dict(params)))
        if path == "/statistics/reset":
            return {"success": True, "which": params["which"], "since": at(5)}
        return {"success": True, "state": "cancelled", "job_id": A}


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[Recorder]:
    monkeypatch.setattr(cli, "DEFAULT_DEFAULTS_FILE", tmp_path / "none.json")
    monkeypatch.setattr(operator_jobs, "Service", Recorder)
    Recorder.posted = []
    return Recorder


def test_reset_asks_for_confirmation_and_refuses_without_a_terminal(
    recorder: type[Recorder], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal
    with pytest.raises(SystemExit) as stopped:
        cli.main(["-s", "s3cret", "reset", "errors"], environ={})
    assert stopped.value.code == 2 and "--yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    monkeypatch.setattr(operator_jobs, "ask", lambda prompt: "no")
    assert cli.main(["-s", "s3cret", "reset", "errors"], environ={}) == 1
    assert recorder.posted == []
    assert cli.main(["-s", "s3cret", "reset", "requests", "--yes"], environ={}) == 0
    assert recorder.posted == [("/statistics/reset", {"which": "requests", "secret": "s3cret"})]


def test_cancel_sends_the_token_or_the_secret(recorder: type[Recorder]) -> None:
    assert cli.main(["-s", "s3cret", "cancel", f"http://h/jobs/{A}"], environ={}) == 0
    assert cli.main(["cancel", A, "--token", "t0k"], environ={}) == 0
    assert recorder.posted == [
        (f"/jobs/{A}/cancel", {"secret": "s3cret"}),
        (f"/jobs/{A}/cancel", {"token": "t0k"}),
    ]
