"""Adapter: resets of the `requests` / `errors` statistics (`StatisticsReset`, `ckanpackager reset`).

Nothing is deleted: a reset records a cut in time (table `stat_resets`) and recounts that column of the
totals from the entries after it; listings start after the cut too (`ViewDatabase.listing`).
"""

from __future__ import annotations

from typing import Any, Protocol

from projections.statistics import ALL


class ViewDatabase(Protocol):
    """What is needed of `packager.adapters.viewdb.ViewDatabase` (which imports this module)."""

    def sql(self, text: str) -> str:
        """`text` with the database's parameter marks."""
        ...


def record(db: ViewDatabase, conn: Any, which: str, cut: float) -> None:
    """Record a reset of the `requests` or `errors` statistics and recount that column of the totals
    from the entries after its cut (run after the batch's own entries and deltas are written)."""
    table, column = {"requests": ("stat_requests", "requests"), "errors": ("stat_errors", "errors")}[which]
    conn.execute(
        db.sql("INSERT INTO stat_resets VALUES (?, ?) ON CONFLICT (which) DO UPDATE SET cut = excluded.cut"),
        (which, cut),
    )
    count = f"SELECT COUNT(*) FROM {table} x WHERE x.ts > ?"
    conn.execute(
        db.sql(
            f"UPDATE stat_totals SET {column} = ({count} AND x.resource_id = stat_totals.resource_id) "
            "WHERE resource_id <> ?"
        ),
        (cut, ALL),
    )
    conn.execute(db.sql(f"UPDATE stat_totals SET {column} = ({count}) WHERE resource_id = ?"), (cut, ALL))


def cuts(conn: Any) -> dict[str, float]:
    """`requests` / `errors` -> the unix time of their latest reset (none: never reset)."""
    return {str(w): float(c) for w, c in conn.execute("SELECT which, cut FROM stat_resets").fetchall()}
