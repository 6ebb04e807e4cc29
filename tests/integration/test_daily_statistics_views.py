"""Statistics per UTC day from the views, on SQLite and on PostgreSQL: both group a day the same way."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from packager.adapters.readside import identity_for
from packager.adapters.view_queries import daily
from packager.adapters.viewdb import ViewDatabase
from packager.core.settings import load_settings
from tests.unit.samples import SECRET
from tests.unit.test_statistics_page import history

pytestmark = pytest.mark.features

DAY = 86_400


def test_each_dialect_counts_requests_failures_and_people_per_day(views_url: str) -> None:
    db = ViewDatabase(views_url)
    conn = db.connect(create=True)
    try:
        db.apply(conn, history(), identity_for(load_settings({}, secret=SECRET)))
        today = int(datetime.now(UTC).timestamp()) // DAY
        everything = daily(db, conn, since=float((today - 30) * DAY))
        assert everything == {today: (4, 1, 3), today - 2: (2, 0, 1)}
        assert daily(db, conn, since=float((today - 30) * DAY), resource_id="birds") == {today: (1, 0, 1)}
        assert sum(r for r, _, _ in daily(db, conn, since=0.0).values()) == 7
    finally:
        conn.close()
