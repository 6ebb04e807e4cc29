"""Adapter: which records of a batch a transaction folds, and folding a batch beside other projectors.

`ViewDatabase.apply` folds a batch inside its write transaction: the rows it depends on are read, folded
and written under the database's write lock, so projectors sharing a database take turns for all of it.
Projectors in shares (`projector_shares`) fold disjoint partitions, so `apply_beside` folds outside the
lock and only writes under it:

1. in a read transaction (a consistent snapshot), the stored positions and the rows the batch depends on;
2. the fold, with no transaction open, while the other shares write;
3. in the write transaction: the positions and those rows read again. When any differs from the snapshot
   (another projector applied these partitions, a statistics reset was folded, a job's events were in two
   shares' partitions after partitions were added), nothing is written and the batch is applied the
   locked way, from what the views hold now. Otherwise the fold's changes are written, less what another
   share counted in between: requesters and (requester, resource) pairs are shared by the shares, so one
   the views hold now is not counted again as new (`_counted_elsewhere`).

Either way a record is folded once and the views are those of one projector applying the batches in turn
(`tests/unit/test_view_apply.py`, `test_views.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from packager.domain.events import Envelope
from projections.statistics import ALL
from projections.view_fold import Changes, Identity, Known, fold, needs, requester_of

# (topic, partition, offset, event or None when the record could not be decoded)
Decoded = tuple[str, int, int, Envelope | None]
Positions = dict[tuple[str, int], int]


class ViewsRewound(Exception):
    """The views hold an older position than a projector last saw (dropped and being rebuilt by another)."""


def pick(
    records: Sequence[Decoded], stored: Positions, until: str
) -> tuple[Positions, list[Envelope], list[int]]:
    """The positions the records advance to, and the events to fold with the partition each was read from:
    records before a partition's stored position were applied already; undecodable ones (None) and, with
    `until`, events that occurred after it only advance the position."""
    advanced: Positions = {}
    events: list[Envelope] = []
    parts: list[int] = []
    for topic, partition, offset, event in records:
        where = (topic, partition)
        if offset < advanced.get(where, stored.get(where, 0)):
            continue
        advanced[where] = offset + 1
        if event is not None and not (until and event.occurred_at > until):
            events.append(event)
            parts.append(partition)
    return advanced, events, parts


def check_not_rewound(advanced: Positions, stored: Positions, expected: Positions | None) -> None:
    """Raise ViewsRewound when a partition's stored position is below the one the caller last saw: folding
    on from the caller's place would leave a gap."""
    for where, saw in (expected or {}).items():
        if where in advanced and stored.get(where, 0) < saw:
            raise ViewsRewound(f"the views went back on {where}: {stored.get(where, 0)} < {saw}")


def apply_beside(
    db: Any,
    conn: Any,
    records: Sequence[Decoded],
    identity: Identity,
    *,
    until: str,
    expected: Positions | None,
) -> int:
    """`ViewDatabase.apply`, folding outside the write lock (see the module's docstring)."""
    with db.transaction(conn, write=False):
        stored = db.positions(conn)
        advanced, events, parts = pick(records, stored, until)
        if not advanced:
            return 0
        requesters = [requester_of(e, identity) for e in events]
        wanted = needs(events, requesters, parts)
        known = db.known(conn, wanted)
    seen = _depended_on(known)  # before the fold, which changes `known` in place
    changes = fold(events, requesters, known, parts, db.params)
    with db.transaction(conn, write=True):
        now = db.positions(conn)
        check_not_rewound(advanced, now, expected)
        current = db.known(conn, wanted)
        unchanged = all(now.get(w, 0) == stored.get(w, 0) for w in advanced) and _depended_on(current) == seen
        if unchanged:
            _counted_elsewhere(changes, current)
            db.write(conn, changes, advanced)
    if not unchanged:  # nothing was written: the batch again, the locked way
        return int(db.apply(conn, records, identity, until=until, expected=expected))
    if expected is not None:
        expected.update(advanced)
    return changes.folded


def _depended_on(known: Known) -> tuple[Any, ...]:
    """The rows read for a batch that its fold depends on, but for the requesters and pairs (those are
    `_counted_elsewhere`)."""
    worker = known.worker
    return (
        dict(known.jobs),
        set(known.failed_job_ids),
        dict(known.cuts),
        dict(worker.cache),
        dict(worker.inflight),
    )


def _counted_elsewhere(changes: Changes, current: Known) -> None:
    """Take out of `changes` the requesters and pairs the fold found new that the views hold by now (another
    share wrote them after the snapshot), with the unique counts they added."""
    for who in [w for w in changes.requesters if w in current.requesters]:
        changes.requesters.remove(who)
        changes.totals[ALL][2] -= 1
    for pair in [p for p in changes.pairs if p in current.pairs]:
        changes.pairs.remove(pair)
        changes.totals[pair[1]][2] -= 1
