"""The Grafana dashboard (deploy/grafana/rolloutadmin.json): well formed, importable anywhere, and asking only
for metrics that GET /metrics really serves (rolloutadmin/metrics.py, rolloutadmin/metrics_endpoint.py)."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "rolloutadmin.json"
DATASOURCE = "${DS_PROMETHEUS}"
ROWS = ["Evaluation", "Configuration snapshot", "Database", "Ingestion", "Guardrails and plans"]
METRIC = re.compile(r"\brolloutadmin_[A-Za-z0-9_]*")
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)

# Every family the brief asks the dashboard to show.
REQUIRED = {
    "rolloutadmin_evaluations_total", "rolloutadmin_evaluation_seconds_bucket",
    "rolloutadmin_snapshot_confirmed_timestamp_seconds", "rolloutadmin_snapshot_stale",
    "rolloutadmin_snapshot_reloads_total", "rolloutadmin_snapshot_config_version",
    "rolloutadmin_database_up", "rolloutadmin_db_requests_shed_total", "rolloutadmin_db_queries_cut_total",
    "rolloutadmin_ingested_records_total", "rolloutadmin_alert_checks_total",
    "rolloutadmin_alert_check_seconds_bucket", "rolloutadmin_alert_check_last_success_timestamp_seconds",
    "rolloutadmin_alerts_open", "rolloutadmin_notifications_failed", "rolloutadmin_notifications_pending",
    "rolloutadmin_plan_transitions_total",
}


# --- helpers ------------------------------------------------------------------------------------------------


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Top-level panels, plus those inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def graph_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p.get("title", "?"), t["expr"]) for p in graph_panels(dashboard) for t in p.get("targets", [])
            if t.get("expr")]


def exposed_series(text: str) -> dict[str, str]:
    """Sample names a scrape may carry, from the `# TYPE` lines (printed for every registered family, with
    samples or not), each mapped to its family's type."""
    series: dict[str, str] = {}
    for name, kind in TYPE_LINE.findall(text):
        if kind == "counter":
            family = name.removesuffix("_total")
            names = [f"{family}_total", f"{family}_created"]
        elif kind == "histogram":
            names = [name] + [f"{name}_{s}" for s in ("bucket", "sum", "count", "created")]
        elif kind == "summary":
            names = [name] + [f"{name}_{s}" for s in ("sum", "count", "created")]
        else:
            names = [name]
        for n in names:
            series.setdefault(n, kind)
    return series


def unexposed(dashboard: dict, series: dict[str, str]) -> dict[str, list[str]]:
    """Metric names the dashboard asks for that the app does not serve, with the panels that ask."""
    missing: dict[str, list[str]] = {}
    for title, expr in exprs(dashboard):
        for name in METRIC.findall(expr):
            if name not in series:
                missing.setdefault(name, []).append(title)
    return missing


def call_arguments(expr: str, function: str) -> list[str]:
    """The argument text of every call of `function` in a PromQL expression (parentheses balanced)."""
    out = []
    for match in re.finditer(rf"\b{function}\s*\(", expr):
        depth, start = 1, match.end()
        for i in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            if depth == 0:
                out.append(expr[start:i])
                break
        else:
            out.append(expr[start:])  # unbalanced: hand back the rest so the checks below fail on it
    return out


def balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    for char in expr:
        if char in "([{":
            depth[char] += 1
        elif char in ")]}":
            opening = {")": "(", "]": "[", "}": "{"}[char]
            depth[opening] -= 1
            if depth[opening] < 0:
                return False
    return not any(depth.values())


def quantile_problems(expr: str) -> list[str]:
    problems = [] if balanced(expr) else [f"unbalanced brackets: {expr!r}"]
    for args in call_arguments(expr, "histogram_quantile"):
        names = METRIC.findall(args)
        if not names or not all(n.endswith("_bucket") for n in names):
            problems.append(f"histogram_quantile over {names or 'no rolloutadmin series'}, not _bucket series")
        groupings = [{label.strip() for label in g.split(",")} for g in re.findall(r"\bby\s*\(([^)]*)\)", args)]
        if not groupings or not all("le" in g for g in groupings):
            problems.append(f"histogram_quantile does not aggregate by le: {args!r}")
    return problems


def overlaps(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def panel(dashboard: dict, title: str) -> dict:
    found = [p for p in graph_panels(dashboard) if p.get("title") == title]
    assert len(found) == 1, f"expected one panel titled {title!r}, found {len(found)}"
    return found[0]


def steps(p: dict) -> list[tuple[str, float | None]]:
    return [(s["color"], s["value"]) for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]


# --- the dashboard's frame ----------------------------------------------------------------------------------


def test_dashboard_is_an_importable_model_with_a_prometheus_input():
    d = load()
    assert d["schemaVersion"] == 39
    assert d["uid"] == "rolloutadmin"
    assert d["refresh"] == "30s"
    assert d["time"] == {"from": "now-6h", "to": "now"}
    assert d.get("id") is None  # an id from another Grafana would clash on import
    inputs = {i["name"]: i for i in d["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    required_types = {(r["type"], r["id"]) for r in d["__requires"]}
    assert ("datasource", "prometheus") in required_types
    for p in graph_panels(d):
        assert ("panel", p["type"]) in required_types, f"panel type {p['type']} missing from __requires"


def test_rows_group_the_panels_in_order_and_none_is_empty():
    d = load()
    rows = [(i, p) for i, p in enumerate(d["panels"]) if p.get("type") == "row"]
    assert [p["title"] for _, p in rows] == ROWS
    assert rows[0][0] == 0, "the first panel must be a row"
    bounds = [i for i, _ in rows] + [len(d["panels"])]
    for (i, row), end in zip(rows, bounds[1:], strict=True):
        inside = (row.get("panels") or []) if row.get("collapsed") else d["panels"][i + 1:end]
        assert inside, f"row {row['title']!r} holds no panel"


def test_every_panel_has_a_title_description_unit_prometheus_datasource_and_a_query():
    d = load()
    problems = []
    for p in graph_panels(d):
        name = p.get("title") or f"panel id {p.get('id')}"
        if not (p.get("title") or "").strip():
            problems.append(f"{name}: no title")
        if not (p.get("description") or "").strip():
            problems.append(f"{name}: no description")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{name}: no unit")
        if (p.get("datasource") or {}).get("uid") != DATASOURCE:
            problems.append(f"{name}: datasource is {p.get('datasource')!r}, not {DATASOURCE}")
        targets = p.get("targets") or []
        if not any((t.get("expr") or "").strip() for t in targets):
            problems.append(f"{name}: no target with an expr")
        for t in targets:
            if (t.get("datasource") or {}).get("uid", DATASOURCE) != DATASOURCE:
                problems.append(f"{name}: target {t.get('refId')} has datasource {t['datasource']!r}")
        ref_ids = [t.get("refId") for t in targets]
        if len(ref_ids) != len(set(ref_ids)) or None in ref_ids:
            problems.append(f"{name}: refIds {ref_ids} missing or repeated")
    assert not problems, "\n".join(problems)


def test_panel_ids_are_unique():
    ids = [p.get("id") for p in all_panels(load())]
    assert None not in ids
    assert len(ids) == len(set(ids)), f"repeated panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"


def test_every_panel_has_a_grid_position_inside_24_columns_and_none_overlap():
    d = load()
    placed = []
    for p in d["panels"]:  # collapsed rows' children are laid out when the row opens: check the top level
        grid = p.get("gridPos")
        assert grid, f"{p.get('title')!r} has no gridPos"
        assert all(isinstance(grid.get(k), int) for k in "xywh"), f"{p.get('title')!r}: gridPos {grid}"
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, f"{p.get('title')!r} is wider than the grid: {grid}"
        placed.append((p.get("title"), grid))
    clashes = [f"{a} / {b}" for (a, ga), (b, gb) in combinations(placed, 2) if overlaps(ga, gb)]
    assert not clashes, "overlapping panels: " + "; ".join(clashes)


# --- the queries --------------------------------------------------------------------------------------------


def test_every_expression_has_balanced_brackets():
    unbalanced = [f"{title}: {expr}" for title, expr in exprs(load()) if not balanced(expr)]
    assert not unbalanced, "\n".join(unbalanced)


def test_every_histogram_quantile_reads_bucket_series_grouped_by_le():
    d = load()
    problems = [f"{title}: {problem}" for title, expr in exprs(d) for problem in quantile_problems(expr)]
    assert not problems, "\n".join(problems)
    assert sum("histogram_quantile" in expr for _, expr in exprs(d)) >= 4  # p50/p95/p99 + alert check p95


def test_the_quantile_check_catches_a_missing_le_and_a_non_bucket_series():
    assert quantile_problems("histogram_quantile(0.9, sum by (api, le) (rate(rolloutadmin_x_bucket[5m])))") == []
    assert quantile_problems("histogram_quantile(0.9, sum by (api) (rate(rolloutadmin_x_bucket[5m])))")
    assert quantile_problems("histogram_quantile(0.9, sum(rate(rolloutadmin_x_bucket[5m])))")
    assert quantile_problems("histogram_quantile(0.9, sum by (le) (rate(rolloutadmin_x_sum[5m])))")
    assert quantile_problems("histogram_quantile(0.9, sum by (le) (rate(rolloutadmin_x_bucket[5m]))")


def test_the_dashboard_shows_every_metric_the_brief_names():
    used = {name for _, expr in exprs(load()) for name in METRIC.findall(expr)}
    assert not REQUIRED - used, f"not on the dashboard: {sorted(REQUIRED - used)}"


@pytest.fixture
def scrape(db) -> str:
    from rolloutadmin import metrics_endpoint

    return metrics_endpoint.render().decode()


def test_every_metric_the_dashboard_asks_for_is_served_by_get_metrics(scrape):
    series = exposed_series(scrape)
    # The scrape-time families come only when the database answered: without them the check below is void.
    assert series.get("rolloutadmin_database_up") == "gauge", "the scrape could not read the database"
    missing = unexposed(load(), series)
    assert not missing, "the dashboard asks for metrics GET /metrics does not serve: " + "; ".join(
        f"{name} (in {', '.join(sorted(set(titles)))})" for name, titles in sorted(missing.items()))


def test_series_are_used_with_the_type_they_have(scrape):
    """rate()/increase() only over counters or histogram parts; time() minus a gauge timestamp."""
    series = exposed_series(scrape)
    problems = []
    for title, expr in exprs(load()):
        for inner in call_arguments(expr, "rate") + call_arguments(expr, "increase"):
            for name in METRIC.findall(inner):
                if series.get(name) not in ("counter", "histogram"):
                    problems.append(f"{title}: rate/increase over {name} ({series.get(name, 'not served')})")
    assert not problems, "\n".join(problems)


def test_the_exposure_check_names_a_metric_the_app_does_not_serve(scrape):
    series = exposed_series(scrape)
    bogus = {"panels": [{"type": "timeseries", "title": "Bogus", "targets": [
        {"expr": "rate(rolloutadmin_evaluations_total[5m]) + rolloutadmin_no_such_metric"
                 " + rolloutadmin_snapshot_stale_total + rolloutadmin_evaluations_bucket"}]}]}
    assert unexposed(bogus, series) == {
        "rolloutadmin_no_such_metric": ["Bogus"],
        "rolloutadmin_snapshot_stale_total": ["Bogus"],  # a gauge has no _total
        "rolloutadmin_evaluations_bucket": ["Bogus"],  # a counter has no buckets
    }


def test_exposed_series_maps_suffixes_to_families():
    text = ("# TYPE a_total counter\n# TYPE b histogram\n# TYPE c gauge\n# HELP d help\n# TYPE d counter\n")
    series = exposed_series(text)
    assert {"a_total", "b_bucket", "b_sum", "b_count", "c", "d_total"} <= series.keys()
    assert "a" not in series and "b_total" not in series and "c_total" not in series


# --- thresholds that mean something -------------------------------------------------------------------------


def test_snapshot_age_is_yellow_after_5_and_red_after_30_seconds():
    p = panel(load(), "Snapshot age")
    assert "time() - rolloutadmin_snapshot_confirmed_timestamp_seconds" in p["targets"][0]["expr"]
    assert p["fieldConfig"]["defaults"]["unit"] == "s"
    assert steps(p) == [("green", None), ("yellow", 5), ("red", 30)]


def test_database_down_is_red():
    p = panel(load(), "Database up")
    assert p["type"] == "stat"
    assert steps(p) == [("red", None), ("green", 1)]


def test_a_stale_alert_check_is_red_after_180_seconds():
    p = panel(load(), "Time since last successful alert check")
    assert "time() - " in p["targets"][0]["expr"]
    assert "rolloutadmin_alert_check_last_success_timestamp_seconds" in p["targets"][0]["expr"]
    assert p["fieldConfig"]["defaults"]["unit"] == "s"
    assert steps(p)[-1] == ("red", 180)
