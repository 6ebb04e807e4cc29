"""The Grafana dashboard in docs/grafana: every PromQL expression names only series the service exports,
and every series of the service's own is on it, so neither side can drift from the other."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import packager.adapters.metrics  # noqa: F401  (registers the service's series)

pytestmark = pytest.mark.features

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "ckanpackager.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> set[str]:
    """Every sample name the process's registry exposes (counters' `_total`, histograms' parts)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def series_in(expr: str) -> set[str]:
    """The series an expression reads: names of the service's families, `packager_*` and `process_*`."""
    without_labels = re.sub(r"\{[^}]*\}", "{}", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels))
    return {w for w in words if w.startswith(("packager_", "process_"))}


def test_the_dashboard_is_grafana_json_with_a_prometheus_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["panels"]
    assert [v["type"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_expression_reads_series_the_service_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = exported_series()
    for expr in expressions(dashboard):
        used = series_in(expr)
        assert used, f"no series of the service in {expr!r}"
        assert used <= exported, f"{expr!r} reads series nobody exports: {sorted(used - exported)}"


def test_every_series_of_the_service_is_on_the_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = set().union(*(series_in(expr) for expr in expressions(dashboard)))
    families = {f.name: f.type for f in REGISTRY.collect() if f.name.startswith("packager_")}
    shown = {name for name, kind in families.items() if used & {name + s for s in _SUFFIXES[kind]}}
    assert set(families) - shown == set(), "series the service exports but the dashboard does not show"
