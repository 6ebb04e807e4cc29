"""The statistics and job views on SQLite: counts as the original counted them, replays, batching."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from packager.adapters.readside import identity_for
from packager.adapters.viewdb import ViewDatabase
from packager.core.settings import load_settings
from packager.domain.events import Envelope, PackageFailed, PackageRequested, envelope
from projections import statistics as stats_fold
from projections import view_schema
from projections.view_fold import Identity
from tests.unit.samples import completed as completed_payload

PLAIN = identity_for(load_settings({}, secret="unit-test-secret-0123456789"))


def requested(job: str, resource: str, email: str, at: str) -> Envelope:
    payload = PackageRequested(
        kind="url", cache_key="ck", resource_id=resource, email=email, ckan_host="h", request={}
    )
    return envelope(job, payload, occurred_at=at)


def failed(job: str, resource: str, email: str, at: str) -> Envelope:
    payload = PackageFailed(
        cache_key="ck", resource_id=resource, email=email, ckan_host="h", error="boom", error_type="E"
    )
    return envelope(job, payload, occurred_at=at)


def completed(job: str) -> Envelope:
    payload = completed_payload(resource_id="r", ckan_host="h", zip_file_name=f"{job}.zip", size=1)
    return envelope(job, payload)


EVENTS = [
    requested("j1", "r1", "Ann@Example.org", "2026-01-01T00:00:01.000Z"),
    requested("j2", "r1", "ann@example.org", "2026-01-01T00:00:02.000Z"),
    requested("j3", "r2", "ann@example.org", "2026-01-01T00:00:03.000Z"),
    requested("j4", "r2", "bob@example.net", "2026-01-01T00:00:04.000Z"),
    failed("j4", "r2", "bob@example.net", "2026-01-01T00:00:05.000Z"),
]


def views(
    tmp_path: Path, events: list[Envelope], identity: Identity = PLAIN, batch: int = 0
) -> tuple[ViewDatabase, Any]:
    """A SQLite views database with `events` folded in (in batches of `batch`, default all at once)."""
    db = ViewDatabase(f"sqlite:///{tmp_path / f'views-{uuid.uuid4().hex[:6]}.sqlite3'}")
    conn = db.connect(create=True)
    records = [("t.events", 0, offset, event) for offset, event in enumerate(events)]
    size = batch or len(records) or 1
    for start in range(0, len(records), size):
        db.apply(conn, records[start : start + size], identity)
    return db, conn


def test_totals_count_requests_errors_and_unique_requesters(tmp_path: Path) -> None:
    db, conn = views(tmp_path, EVENTS)
    totals = db.totals(conn)
    assert totals["*"] == {"requests": 4, "errors": 1, "emails": 2}
    assert totals["r1"] == {"requests": 2, "errors": 0, "emails": 1}
    assert totals["r2"] == {"requests": 2, "errors": 1, "emails": 2}
    assert db.totals(conn, "r9") == {"r9": {"requests": 0, "errors": 0, "emails": 0}}
    assert db.totals(conn, "r1") == {"r1": totals["r1"]}


def test_replayed_events_count_once_and_records_already_folded_are_skipped(tmp_path: Path) -> None:
    db, conn = views(tmp_path, [*EVENTS, *EVENTS])  # the same events again, at later offsets
    assert db.totals(conn)["*"] == {"requests": 4, "errors": 1, "emails": 2}
    before = dump(db, conn)
    # Offsets the views already hold (a projector restarted after a crash reads them again): no change.
    assert db.apply(conn, [("t.events", 0, 3, EVENTS[3])], PLAIN) == 0
    assert dump(db, conn) == before
    assert db.counters(conn) == (4, 1)


def test_listings_are_newest_first_filtered_and_paged(tmp_path: Path) -> None:
    db, conn = views(tmp_path, EVENTS)
    listed = db.listing(conn, "requests")
    assert [r["timestamp"] for r in listed] == sorted((r["timestamp"] for r in listed), reverse=True)
    assert listed[0] == {
        "count": 1,
        "domain": "example.net",
        "email": PLAIN("bob@example.net"),  # the pseudonym: the views never hold an address
        "resource_id": "r2",
        "timestamp": stats_fold.unix_time("2026-01-01T00:00:04.000Z"),
    }
    assert [r["resource_id"] for r in db.listing(conn, "requests", resource_id="r1")] == ["r1", "r1"]
    assert len(db.listing(conn, "requests", email=PLAIN("bob@example.net"))) == 1
    assert db.listing(conn, "requests", offset=1, limit=2) == listed[1:3]
    assert db.listing(conn, "errors")[0]["message"] == "boom"


def test_anonymised_statistics_keep_a_keyed_hash_and_the_domain(tmp_path: Path) -> None:
    settings = load_settings({}, secret="unit-test-secret-0123456789", anonymize_emails=True)
    db, conn = views(tmp_path, EVENTS, identity_for(settings))
    requests = db.listing(conn, "requests")
    assert all("@" not in r["email"] for r in requests)
    assert {r["domain"] for r in requests} == {"example.org", "example.net"}
    assert db.totals(conn)["*"]["emails"] == 2  # still unique per person
    other_settings = load_settings({}, secret="another-secret-0123456789", anonymize_emails=True)
    other_db, other_conn = views(tmp_path, EVENTS, identity_for(other_settings))
    assert other_db.listing(other_conn, "requests")[0]["email"] != requests[0]["email"]  # keyed


def test_the_views_do_not_depend_on_how_records_were_batched(tmp_path: Path) -> None:
    history = [*EVENTS, completed("j1"), completed("j2"), *EVENTS[:2]]
    whole = dump(*views(tmp_path, history))
    for size in (1, 2, 3):
        assert dump(*views(tmp_path, history, batch=size)) == whole


def test_jobs_counters_and_built_zips(tmp_path: Path) -> None:
    db, conn = views(tmp_path, [*EVENTS, completed("j1")])
    job = db.job(conn, "j1")
    assert job is not None and (job.state, job.zip_file_name, job.resource_id) == (
        "completed",
        "j1.zip",
        "r1",
    )
    assert db.job(conn, "nope") is None
    assert db.counters(conn) == (4, 2)  # accepted, finished: queue length 2
    assert db.zip_was_built(conn, "j1.zip") and not db.zip_was_built(conn, "j2.zip")


def dump(db: ViewDatabase, conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {table.name: list(db.rows(conn, table)) for table in view_schema.TABLES}


def test_whole_tables_read_a_page_at_a_time_give_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packager.adapters import viewdb

    db, conn = views(tmp_path, [*EVENTS, completed("j1"), completed("j2")])
    whole = dump(db, conn)
    monkeypatch.setattr(viewdb, "_PAGE", 2)
    assert dump(db, conn) == whole
    assert len(whole["jobs"]) == 4 and len(whole["requester_resources"]) == 3
