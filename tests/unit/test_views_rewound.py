"""A projector whose views went back under it (dropped, rebuilt by another) stops rather than leave a gap."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.adapters.view_apply import Decoded, ViewsRewound
from packager.adapters.viewdb import ViewDatabase
from packager.domain.events import PackageQueued, PackageRequested, envelope
from packager.domain.requesters import pseudonym

TOPIC = "p.events"


def identity(email: str) -> str:
    return pseudonym("k" * 32, email)


def records(first: int, count: int) -> list[Decoded]:
    """`count` events of partition 0 from offset `first`: a request, then its job's queued events."""
    out: list[Decoded] = []
    for offset in range(first, first + count):
        job = f"job-{offset}"
        payload = (
            PackageRequested("datastore", "ck", "r1", "a@example.org", "h", {"resource_id": "r1"})
            if offset % 2 == 0
            else PackageQueued(cache_key="ck", lane="fast", attempt=1)
        )
        out.append((TOPIC, 0, offset, envelope(job, payload, occurred_at="2026-12-02T10:00:00Z")))
    return out


@pytest.fixture
def db(tmp_path: Path) -> ViewDatabase:
    return ViewDatabase(f"sqlite:///{tmp_path / 'views.sqlite3'}")


def test_views_dropped_under_a_projector_stop_its_next_batch_and_nothing_is_written(db: ViewDatabase) -> None:
    conn = db.connect(create=True)
    expected: dict[tuple[str, int], int] = {}
    assert db.apply(conn, records(0, 10), identity, expected=expected) == 10
    assert expected == {(TOPIC, 0): 10}
    conn.close()

    db.reset()  # another projector dropped the views to rebuild them from the log's start
    conn = db.connect(create=True)
    with pytest.raises(ViewsRewound, match=r"went back .* 0 < 10"):
        db.apply(conn, records(10, 10), identity, expected=expected)
    # Folding offsets 10.. into empty views would have lost 0..9 for good: nothing was written.
    assert db.positions(conn) == {}
    assert db.counters(conn) == (0, 0)


def test_views_ahead_of_a_projector_skip_what_another_applied(db: ViewDatabase) -> None:
    conn = db.connect(create=True)
    db.apply(conn, records(0, 20), identity)  # another projector got further
    mine: dict[tuple[str, int], int] = {(TOPIC, 0): 10}
    assert db.apply(conn, records(10, 20), identity, expected=mine) == 10
    assert db.positions(conn) == {(TOPIC, 0): 30}
    assert mine == {(TOPIC, 0): 30}
    assert db.counters(conn) == (15, 0)
