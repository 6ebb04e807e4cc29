"""`StatisticsReset` on both views databases: SQLite and PostgreSQL recount the same, in any fold order."""

from __future__ import annotations

from typing import Any

import pytest

from packager.adapters.viewdb import ViewDatabase
from packager.domain.requesters import pseudonym
from projections import view_schema as schema
from tests.unit.test_reset import history

pytestmark = pytest.mark.features

ORDERS = (
    [["a", "a failed", "reset requests", "reset errors", "b", "b failed"]],
    [["b", "b failed"], ["reset requests", "reset errors"], ["a", "a failed"]],
)


def fold(db: ViewDatabase, conn: Any, batches: list[list[str]]) -> None:
    events = history()
    offsets: dict[str, int] = {}
    for batch in batches:
        records = []
        for name in batch:
            topic = "t.requests" if name in ("a", "b") else "t.events"
            partition = 0 if name.startswith("a") else 1
            where = f"{topic}/{partition}"
            records.append((topic, partition, offsets.get(where, 0), events[name]))
            offsets[where] = offsets.get(where, 0) + 1
        db.apply(conn, records, lambda email: pseudonym("views-test-secret-0123456789", email))


def test_both_databases_count_only_what_follows_the_reset_whatever_the_order(views_url: str) -> None:
    db = ViewDatabase(views_url)
    seen = []
    for order in ORDERS:
        conn = db.connect(create=True)
        try:
            fold(db, conn, order)
            totals = db.totals(conn)
            listed = db.listing(conn, "errors")
            seen.append({table.name: list(db.rows(conn, table)) for table in schema.COMPARED})
            for statement in schema.drop(db.dialect):
                conn.execute(statement)
        finally:
            conn.close()
        assert totals["*"] == {"requests": 1, "errors": 1, "emails": 2}
        assert len(listed) == 1
    assert seen[0] == seen[1]
