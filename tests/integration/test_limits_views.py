"""What the fair limits read from the views, on SQLite and on PostgreSQL: one statement's counts, the
newest request times only when asked, and the positions from the same snapshot."""

from __future__ import annotations

import pytest

from packager.adapters.readside import identity_for
from packager.adapters.view_queries import UsageAsked, usage
from packager.adapters.viewdb import ViewDatabase
from packager.core.settings import load_settings
from tests.unit.samples import SECRET
from tests.unit.test_statistics_page import history

pytestmark = pytest.mark.features


def test_each_dialect_counts_what_the_limits_need(views_url: str) -> None:
    db = ViewDatabase(views_url)
    conn = db.connect(create=True)
    identity = identity_for(load_settings({}, secret=SECRET))
    ann = identity("ann@example.org")
    try:
        db.apply(conn, history(), identity)

        def asked(active: int, hourly: int, resource: int, unseen: int = 0) -> UsageAsked:
            return UsageAsked(ann, "specimens", 0.0, active, hourly, resource, unseen_at_most=unseen)

        # ann: two requests, one failed (no longer in progress); specimens: 6, ann's failed one ended.
        found = usage(db, conn, asked(5, 5, 9))
        assert (found.active, found.resource_active, found.requests) == (1, 5, 2)
        assert found.recent == []  # 2 of 5, and nothing unseen: the hour's times are not needed
        assert found.positions == {("t.requests", 0): 7, ("t.events", 0): 2}
        # A count no limit needs is not made.
        assert (usage(db, conn, asked(0, 0, 0)).active, usage(db, conn, asked(0, 0, 9)).active) == (0, 0)
        assert usage(db, conn, asked(0, 0, 9)).resource_active == 5
        # At the hourly limit (or within what the ingress holds of it): the newest as many as the limit.
        at_limit = usage(db, conn, asked(0, 2, 0))
        assert at_limit.requests == 2 and len(at_limit.recent) == 2
        assert at_limit.recent == sorted(at_limit.recent)
        near = usage(db, conn, asked(0, 1, 0, unseen=3))
        assert near.requests == 2 and len(near.recent) == 1 and near.recent[0] == at_limit.recent[-1]
    finally:
        conn.close()
