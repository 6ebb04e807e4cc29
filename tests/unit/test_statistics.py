"""The statistics fold and the read model: counts as the original counted them, snapshots, replays."""

from __future__ import annotations

from pathlib import Path

from packager.adapters.readside import identity_for
from packager.core.settings import load_settings
from packager.domain.events import Envelope, PackageFailed, PackageRequested, envelope
from projections import statistics as stats_fold
from projections.readmodel import ReadModel, write_atomically
from tests.unit.samples import completed as completed_payload

PLAIN = identity_for(load_settings({}))


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


def folded(identity=PLAIN) -> stats_fold.Statistics:  # type: ignore[no-untyped-def]
    stats = stats_fold.Statistics()
    for event in EVENTS:
        stats_fold.apply(stats, event, identity)
    return stats


def test_totals_count_requests_errors_and_unique_requesters() -> None:
    totals = stats_fold.totals(folded())
    assert totals["*"] == {"requests": 4, "errors": 1, "emails": 2}
    assert totals["r1"] == {"requests": 2, "errors": 0, "emails": 1}
    assert totals["r2"] == {"requests": 2, "errors": 1, "emails": 2}
    assert stats_fold.totals(folded(), "r9") == {"r9": {"requests": 0, "errors": 0, "emails": 0}}


def test_replayed_events_count_once() -> None:
    stats = folded()
    for event in EVENTS:
        stats_fold.apply(stats, event, PLAIN)
    assert stats_fold.totals(stats)["*"] == {"requests": 4, "errors": 1, "emails": 2}


def test_listings_are_newest_first_filtered_and_paged() -> None:
    stats = folded()
    listed = stats_fold.newest_first(stats.requests)
    assert [r["timestamp"] for r in listed] == sorted((r["timestamp"] for r in listed), reverse=True)
    assert [r["resource_id"] for r in stats_fold.newest_first(stats.requests, resource_id="r1")] == [
        "r1",
        "r1",
    ]
    assert len(stats_fold.newest_first(stats.requests, email="bob@example.net")) == 1
    assert stats_fold.newest_first(stats.requests, offset=1, limit=2) == listed[1:3]
    assert stats_fold.newest_first(stats.errors)[0]["message"] == "boom"


def test_anonymised_statistics_keep_a_keyed_hash_and_the_domain() -> None:
    settings = load_settings({}, secret="unit-test-secret-0123456789", anonymize_emails=True)
    stats = folded(identity_for(settings))
    assert all("@" not in r["email"] for r in stats.requests)
    assert {r["domain"] for r in stats.requests} == {"example.org", "example.net"}
    assert stats_fold.totals(stats)["*"]["emails"] == 2  # still unique per person
    other = folded(identity_for(load_settings({}, secret="another-secret-0123456789", anonymize_emails=True)))
    assert other.requests[0]["email"] != stats.requests[0]["email"]  # keyed: not a plain hash


def test_the_read_model_survives_a_snapshot_and_skips_records_it_already_has(tmp_path: Path) -> None:
    model = ReadModel(identity=PLAIN)
    for offset, event in enumerate([*EVENTS, completed("j1")]):
        model.apply("t.events", 0, offset, event)
    path = tmp_path / "model.json"
    write_atomically(path, model.snapshot())
    restored = ReadModel.load(path, PLAIN)
    assert restored.state() == model.state()
    assert restored.positions == {"t.events:0": 6}
    restored.apply("t.events", 0, 3, EVENTS[3])  # an old record read again changes nothing
    assert restored.state() == model.state()
    assert (restored.accepted, restored.finished, restored.queue_length) == (4, 2, 2)
    assert ReadModel.load(tmp_path / "missing.json", PLAIN).jobs == {}
