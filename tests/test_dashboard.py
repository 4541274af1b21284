"""The Grafana dashboard and its provisioning, checked without Grafana.

The helpers at the top (:func:`dashboard_exprs`, :func:`annotation_exprs`, :func:`exported_metric_names`)
are also what the live Prometheus test uses to evaluate every panel's query against real P1 and P2.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "grafana" / "dashboards" / "mercurystream.json"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = REPO / "grafana" / "provisioning" / "dashboards" / "mercurystream.yml"
COMPOSE = REPO / "docker-compose.yml"
METRICS_MODULES = ("mercurystream.p2.metrics", "mercurystream.p1.metrics")
# Series Prometheus writes itself rather than scrapes: ALERTS has one series per pending or firing alert of
# alerts.yml, and up one per target.
PROMETHEUS_SERIES = {"ALERTS", "up"}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_CLAUSES = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")
_RANGE_SELECTOR = re.compile(r"\[(\d+)([smh])\]")
# What a metric family of each type is exposed as; labelled families with no child yet have no samples to list.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every query of every panel, in dashboard order."""
    out = []
    for panel in iter_panels(load_dashboard(path)["panels"]):
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if expr:
                out.append((panel.get("title", f"panel {panel.get('id')}"), expr))
    return out


def annotation_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """``(annotation name, PromQL)``: these legitimately return nothing until an incident happens."""
    annotations = load_dashboard(path).get("annotations", {}).get("list", [])
    return [(a["name"], a["expr"]) for a in annotations if a.get("expr")]


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations removed)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _CLAUSES.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name not in _KEYWORDS}


def exported_metric_names() -> tuple[set[str], list[str]]:
    """Names (``_total``, ``_bucket``...) every ``*Metrics`` class exports, and the modules not found."""
    names: set[str] = set()
    missing = []
    for module_name in METRICS_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            missing.append(module_name)
            continue
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module_name and cls_name.endswith("Metrics"):
                for family in cls().registry.collect():
                    names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names, missing


def provisioned_datasource() -> dict:
    return yaml.safe_load(DATASOURCES.read_text())["datasources"][0]


def _query_panels() -> list[dict]:
    return [p for p in iter_panels(load_dashboard()["panels"]) if p.get("type") != "row"]


def test_dashboard_is_valid_json_with_unique_ids() -> None:
    dashboard = load_dashboard()

    assert dashboard["uid"] == "mercurystream"
    assert dashboard["title"]
    ids = [p["id"] for p in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    assert dashboard.get("templating", {}).get("list", []) == [], "variables would make exprs unevaluable as-is"


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in iter_panels(load_dashboard()["panels"]):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken.get((x, y))}"
                taken[(x, y)] = panel["title"]


def test_every_panel_queries_the_provisioned_datasource() -> None:
    uid = provisioned_datasource()["uid"]
    panels = _query_panels()
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for name, _ in annotation_exprs():
        annotation = next(a for a in load_dashboard()["annotations"]["list"] if a["name"] == name)
        assert annotation["datasource"]["uid"] == uid


@pytest.mark.parametrize(("title", "expr"), dashboard_exprs() + annotation_exprs())
def test_exprs_use_only_exported_metrics(title: str, expr: str) -> None:
    names, missing = exported_metric_names()
    used = metric_names_in(expr)
    assert used, f"{title}: no metric in {expr!r}"
    unknown = used - names - PROMETHEUS_SERIES
    if unknown and missing and all(n.startswith("mercurystream_p1_") for n in unknown):
        pytest.skip(f"{', '.join(missing)} not written yet: cannot check {sorted(unknown)}")
    assert not unknown, f"{title}: {expr!r} uses metrics no service exports: {sorted(unknown)}"


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="p2", x=~"y|z"}[1m]))) '
        "or on() vector(0) + ignoring(le) b_total offset 5m / max without (instance) (c:rec)"
    )
    assert metric_names_in(expr) == {"a_bucket", "b_total", "c:rec"}


def test_the_issue_s_panels_are_all_there() -> None:
    exprs = " ".join(e for _, e in dashboard_exprs())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(mercurystream_latency_ms_bucket[" in exprs
    for needle in (
        "rate(mercurystream_events_total[",
        "sum by (consumer) (rate(mercurystream_drops_total[",
        "mercurystream_queue_depth",
        "sum by (type) (increase(mercurystream_anomalies_total[",
        "mercurystream_incidents_total",
        "mercurystream_vwap",
        "mercurystream_volatility_annualized",
        "mercurystream_volume_quote_1m",
        "mercurystream_p1_reconnects_total",
        "mercurystream_p1_buffered",
        "mercurystream_p1_dropped_total",
        "mercurystream_p1_validation_failures_total",
        'ALERTS{alertstate="firing"}',
    ):
        assert needle in exprs, needle


def test_rate_windows_return_data_soon_after_start() -> None:
    """At a 5 s scrape, a window needs >= 2 samples to have a rate and should not hide a minute-old change."""
    seconds = {"s": 1, "m": 60, "h": 3600}
    for title, expr in dashboard_exprs() + annotation_exprs():
        for n, unit in _RANGE_SELECTOR.findall(expr):
            window = int(n) * seconds[unit]
            assert 20 <= window <= 300, f"{title}: window [{n}{unit}]"
        assert "$" not in expr, f"{title}: template variables are not evaluable through the HTTP API"


def test_exprs_parse_with_promtool(tmp_path: Path) -> None:
    """``promtool check rules`` parses each query with Prometheus's own PromQL parser."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_exprs())]
    rules += [{"record": f"dashboard:annotation_{i}", "expr": e} for i, (_, e) in enumerate(annotation_exprs())]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr


def test_datasource_provisioning_points_at_compose_prometheus() -> None:
    ds = provisioned_datasource()
    compose = yaml.safe_load(COMPOSE.read_text())

    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    assert (
        ds["jsonData"]["timeInterval"]
        == yaml.safe_load((REPO / "prometheus.yml").read_text())["global"]["scrape_interval"]
    )


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])

    assert provider["type"] == "file"
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).parent == Path(
        provider["options"]["path"]
    )
