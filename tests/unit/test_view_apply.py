"""Folding beside other projectors (`view_apply.apply_beside`) gives the views one projector gives, whatever
another projector writes between a share's snapshot and its write: requesters and pairs the other share
counted first, records the other applied, a statistics reset, or a job of the other's partitions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from packager.adapters import view_apply
from packager.adapters.view_apply import Decoded
from packager.adapters.viewdb import ViewDatabase
from packager.cli.replay import compare
from packager.domain.events import (
    Envelope,
    PackageFailed,
    PackageQueued,
    PackageRequested,
    StatisticsReset,
    envelope,
)
from packager.domain.requesters import pseudonym

REQUESTS, EVENTS = "p.requests", "p.events"


def identity(email: str) -> str:
    return pseudonym("k" * 32, email)


def job(partition: int, n: int, who: str, resource: str, at: str = "2026-12-02T10:00:00Z") -> list[Envelope]:
    """A request of job `p<partition>-<n>` and its queued and failed events."""
    job_id = f"p{partition}-{n}"
    return [
        envelope(job_id, PackageRequested("datastore", "ck", resource, who, "h", {}), occurred_at=at),
        envelope(job_id, PackageQueued(cache_key="ck", lane="fast", attempt=1), occurred_at=at),
        envelope(job_id, PackageFailed("ck", resource, who, "h", "no", "CkanError"), occurred_at=at),
    ]


def records(partition: int, events: list[Envelope], first: int = 0) -> list[Decoded]:
    """The events as records of `partition`: requests in the requests topic, the rest in the events topic."""
    out: list[Decoded] = []
    offsets = {REQUESTS: first, EVENTS: first}
    for event in events:
        topic = REQUESTS if event.type == "PackageRequested" else EVENTS
        out.append((topic, partition, offsets[topic], event))
        offsets[topic] += 1
    return out


def share(partition: int) -> list[Decoded]:
    """Jobs of one partition: the requesters and resources are the same in every partition."""
    events = [e for n in range(6) for e in job(partition, n, f"user{n % 3}@example.org", f"res-{n % 2}")]
    return records(partition, events)


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[Callable[[str], tuple[ViewDatabase, Any]]]:
    opened: list[Any] = []

    def open_one(name: str) -> tuple[ViewDatabase, Any]:
        db = ViewDatabase(f"sqlite:///{tmp_path / name}.sqlite3")
        conn = db.connect(create=True)
        opened.append(conn)
        return db, conn

    yield open_one
    for conn in opened:
        conn.close()


def between(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]) -> None:
    """Run `meanwhile` once, after the next snapshot of `apply_beside` and before its write."""
    real_fold = view_apply.fold
    pending = [meanwhile]

    def fold(*args: Any, **kwargs: Any) -> Any:
        if pending:
            pending.pop()()
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(view_apply, "fold", fold)


def same_views(a: tuple[ViewDatabase, Any], b: tuple[ViewDatabase, Any]) -> None:
    assert list(compare(a[0], a[1], b[0], b[1])) == []
    assert a[0].positions(a[1]) == b[0].positions(b[1])


def test_a_share_writing_after_another_counted_the_same_requesters_counts_each_once(
    databases: Callable[[str], tuple[ViewDatabase, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, other = databases("live"), databases("live")  # two connections to one database
    between(monkeypatch, lambda: other[0].apply(other[1], share(1), identity, beside=True))
    assert live[0].apply(live[1], share(0), identity, beside=True) == 18

    serial = databases("serial")
    serial[0].apply(serial[1], share(1), identity)
    serial[0].apply(serial[1], share(0), identity)
    same_views(live, serial)
    totals = live[0].totals(live[1])
    assert totals["*"] == {"requests": 12, "errors": 12, "emails": 3}  # three requesters in both shares
    assert totals["res-0"]["emails"] == totals["res-1"]["emails"] == 3


@pytest.mark.parametrize(
    "meanwhile",
    [
        "the same records applied by another projector",
        "a statistics reset folded by another share",
        "a job of this share's partition changed by another (partitions added)",
    ],
)
def test_a_snapshot_another_projector_changed_is_folded_again_under_the_lock(
    meanwhile: str, databases: Callable[[str], tuple[ViewDatabase, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, other, serial = databases("live"), databases("live"), databases("serial")
    mine = share(0)
    if meanwhile.startswith("the same records"):
        theirs = mine[:7]
    elif meanwhile.startswith("a statistics reset"):
        reset = envelope(
            "op", StatisticsReset(cache_key="*", which="errors"), occurred_at="2026-12-02T10:00:01Z"
        )
        theirs = records(1, [reset])
    else:
        theirs = records(1, job(0, 1, "late@example.org", "res-9", at="2026-12-02T10:00:02Z"))
    between(monkeypatch, lambda: other[0].apply(other[1], theirs, identity, beside=True))
    live[0].apply(live[1], mine, identity, beside=True)

    serial[0].apply(serial[1], theirs, identity)
    serial[0].apply(serial[1], mine, identity)
    same_views(live, serial)
