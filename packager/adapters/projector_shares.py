"""Adapter: projectors that share the log, each folding some of its partitions into one views database.

One projector is one Python thread of decoding and folding (docs/benchmarks.md): `packager projector
--share I/K` runs share I of K, which reads the partitions whose number is I - 1 modulo K, of both topics.
The partitioner puts every event of a cache key, so of a job, in the same partition number of the requests
and events topics, so a share holds all of its jobs' events. A share decodes and folds its batches beside
the other shares, outside the database's write lock, and writes each under the lock in one transaction with
its positions, after checking that nothing the fold read has changed (`view_apply.apply_beside`: if
anything did, the batch is folded again under the lock). So any mix of shares, whole projectors and
restarts gives the same views: a record is folded once, by whichever applies it first.

Each share writes what went wrong in it to its own `meta` row (`projector_status 1/2`, ...), so one share
that is well does not clear another's report; readiness reports them all (`statuses`). Shares that find the
views built from another log at the same moment drop them once (`ViewDatabase.reset`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from projections.view_schema import PROJECTOR_STATUS

_SHARE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True, slots=True)
class Share:
    """Which partitions a projector reads: those whose number is `index` modulo `count`."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Share:
        """`I/K` (share I of K, counted from 1) as a Share; ValueError with the reason when it is not one."""
        found = _SHARE.fullmatch(text)
        if found is None:
            raise ValueError(f"{text!r} is not a share: write I/K, e.g. 1/2 for the first of two projectors")
        number, count = int(found[1]), int(found[2])
        if count < 1 or not 1 <= number <= count:
            raise ValueError(f"{text!r} is not a share: I/K needs 1 <= I <= K")
        return cls(number - 1, count)

    def owns(self, partition: int) -> bool:
        """True when this share reads the partition of that number (in each topic)."""
        return partition % self.count == self.index

    @property
    def status_row(self) -> str:
        """The `meta` row this share's status is written to."""
        return PROJECTOR_STATUS if self.count == 1 else f"{PROJECTOR_STATUS} {self}"

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


WHOLE = Share()


def clear_other_statuses(db: Any, conn: Any, share: Share) -> None:
    """Delete the status rows of shares of another count than `share`'s (left by an earlier way of running
    the projectors), in their own transaction: they describe projectors no longer running."""
    keep = {Share(i, share.count).status_row for i in range(share.count)}
    with db.transaction(conn, write=True):
        for name in statuses(db, conn):
            if name not in keep:
                conn.execute(db.sql("DELETE FROM meta WHERE name = ?"), (name,))


def statuses(db: Any, conn: Any) -> dict[str, str]:
    """Every projector status row: name -> what went wrong ("" when nothing did)."""
    sql = "SELECT name, value FROM meta WHERE name = ? OR name LIKE ? ORDER BY name"
    rows = conn.execute(db.sql(sql), (PROJECTOR_STATUS, f"{PROJECTOR_STATUS} %")).fetchall()
    return {str(name): str(value or "") for name, value in rows}


def problems(found: dict[str, str]) -> str:
    """What readiness reports of the status rows: "" when every projector is well, else each reason, with
    the share it is from when there are shares."""
    told = []
    for name, value in found.items():
        if value:
            share = name.removeprefix(PROJECTOR_STATUS).strip()
            told.append(f"share {share}: {value}" if share else value)
    return "; ".join(told)
