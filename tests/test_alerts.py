"""alerts.yml: valid for promtool, unit-tested firing and not firing, written against the metrics and
labels P1 and P2 really export, loaded by both Prometheus configs, and documented in SYSTEM.md.

The live test (tests/e2e/test_prometheus_live.py) checks a real Prometheus loads and evaluates it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from mercurystream.p1.metrics import TARGETS, P1Metrics
from mercurystream.p2.detectors import ANOMALY_TYPES
from mercurystream.p2.metrics import BatchHistogram, P2Metrics, ProductGauge, ScrapedCounter
from tests.test_dashboard import PROMETHEUS_SERIES, exported_metric_names, metric_names_in
from tests.test_prometheus_config import COMPOSE_CONFIG, LOCAL_CONFIG, promtool

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "alerts.yml"
UNIT_TESTS = REPO / "tests" / "alerts" / "alerts_test.yml"
SYSTEM = REPO / "SYSTEM.md"
RUNBOOK_HEADING = "## Alerts and runbook"
RUNBOOK_ANCHOR = "SYSTEM.md#alerts-and-runbook"
SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}

_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def alerting_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alerting_rules()]


def require_promtool() -> str:
    """promtool's path; a skip without it, or a failure when MERCURY_REQUIRE_PROMETHEUS=1 (as .ci/run sets)."""
    tool = promtool()
    if tool is None:
        reason = "promtool not installed (Debian package `prometheus`; .ci/run installs it)"
        if os.environ.get("MERCURY_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"MERCURY_REQUIRE_PROMETHEUS=1 but {reason}")
        pytest.skip(reason)
    return tool


def metric_labels() -> dict[str, set[str]]:
    """``{exposed name: label names}`` for every metric P1 and P2 export, including labelled families that
    have no child yet (a scrape would not show their labels)."""
    out: dict[str, set[str]] = {}
    for metrics in (P1Metrics(), P2Metrics()):
        for collector in vars(metrics).values():
            if isinstance(collector, MetricWrapperBase):
                name, labels = collector._name, set(collector._labelnames)
            elif isinstance(collector, ScrapedCounter):
                name, labels = collector.name, {collector.label} if collector.label else set()
            elif isinstance(collector, ProductGauge):
                name, labels = collector.name, {"product_id"}
            elif isinstance(collector, BatchHistogram):
                name, labels = collector.name, set()
                out[name + "_bucket"] = {"le"}
            else:
                continue
            for suffix in ("", "_total", "_count", "_sum"):
                out[name + suffix] = labels
    return out


# Label values a selector may name, from the code that sets them.
LABEL_VALUES: dict[tuple[str, str], set[str]] = {
    ("mercurystream_p1_connected", "target"): set(TARGETS),
    ("mercurystream_anomalies_total", "type"): set(ANOMALY_TYPES),
}


def job_names() -> set[str]:
    jobs = set()
    for path in (COMPOSE_CONFIG, LOCAL_CONFIG):
        jobs |= {job["job_name"] for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    return jobs


def check_selectors(where: str, text: str, labels: dict[str, set[str]]) -> None:
    """Every ``metric{label="value"}`` in ``text`` names a label the metric has, and a value it can take."""
    values = {**LABEL_VALUES, ("up", "job"): job_names()}
    for metric, matchers in _SELECTOR.findall(text):
        known = labels.get(metric, set()) | TARGET_LABELS
        for label, value in _MATCHER.findall(matchers):
            assert label in known, f"{where}: {metric} has no label {label!r} (it has {sorted(known)})"
            allowed = values.get((metric, label))
            assert allowed is None or value in allowed, f"{where}: {metric}{{{label}={value!r}}}: not in {allowed}"


# --- promtool ---------------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    tool = require_promtool()
    done = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alerting_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    tool = require_promtool()
    done = subprocess.run([tool, "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the unit tests cover every alert ---------------------------------------------------------------------


def test_unit_tests_load_this_rules_file() -> None:
    spec = yaml.safe_load(UNIT_TESTS.read_text())
    assert [(UNIT_TESTS.parent / f).resolve() for f in spec["rule_files"]] == [RULES.resolve()]


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_is_unit_tested_firing_and_not_firing(alert: str) -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert
    ]
    assert any(case.get("exp_alerts") for case in cases), f"{alert}: no case where it fires"
    assert any(not case.get("exp_alerts") for case in cases), f"{alert}: no case where it does not fire"


def test_unit_test_series_use_real_labels() -> None:
    """Input series written with a label the service does not export would test a rule that cannot fire."""
    names, _ = exported_metric_names()
    labels = metric_labels()
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            used = metric_names_in(series["series"])
            assert used <= names | PROMETHEUS_SERIES, f"{test['name']}: {series['series']}"
            check_selectors(test["name"], series["series"], labels)


# --- the rules use real metrics and labels ----------------------------------------------------------------


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: r["alert"])
def test_rules_use_only_exported_metrics_and_labels(rule: dict) -> None:
    names, missing = exported_metric_names()
    assert not missing
    labels = metric_labels()
    expr = rule["expr"]
    used = metric_names_in(expr)

    assert used, f"{rule['alert']}: no metric in {expr!r}"
    assert not used - names - PROMETHEUS_SERIES, f"{rule['alert']}: not exported: {sorted(used - names)}"
    check_selectors(rule["alert"], expr, labels)
    available = set().union(*(labels.get(m, set()) for m in used)) | TARGET_LABELS | {"le"}
    for clause in _BY.findall(expr):
        for label in filter(None, (x.strip() for x in clause.split(","))):
            assert label in available, f"{rule['alert']}: by ({label}) is not a label of {sorted(used)}"


def test_label_extraction_sees_labelled_families_without_children() -> None:
    labels = metric_labels()
    assert labels["mercurystream_drops_total"] == {"consumer"}
    assert labels["mercurystream_p1_connected"] == {"target"}
    assert labels["mercurystream_consumer_events_total"] == {"consumer"}
    assert labels["mercurystream_latency_ms_bucket"] == {"le"}


# --- annotations, labels and the runbook ------------------------------------------------------------------


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: r["alert"])
def test_every_alert_is_annotated_and_has_a_severity(rule: dict) -> None:
    annotations = rule.get("annotations", {})
    assert rule["alert"].startswith("Mercury")
    assert rule["labels"]["severity"] in SEVERITIES
    assert annotations.get("summary", "").strip(), rule["alert"]
    assert annotations.get("description", "").strip(), rule["alert"]
    assert annotations.get("runbook") == RUNBOOK_ANCHOR, rule["alert"]


def test_alert_names_are_unique() -> None:
    names = alert_names()
    assert len(names) == len(set(names))


def runbook_section() -> str:
    text = SYSTEM.read_text()
    assert RUNBOOK_HEADING in text.splitlines(), "the runbook annotation's anchor needs this heading"
    section = text.split(RUNBOOK_HEADING + "\n", 1)[1]
    return section.split("\n## ", 1)[0]


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_has_a_runbook_row(alert: str) -> None:
    rows = [line for line in runbook_section().splitlines() if line.startswith(f"| `{alert}` |")]
    assert len(rows) == 1, f"SYSTEM.md's runbook has {len(rows)} rows for {alert}"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) >= 3 and all(cells), f"{alert}: alert, what it means, what to do first"


def test_runbook_names_no_alert_that_does_not_exist() -> None:
    named = set(re.findall(r"^\| `(\w+)` \|", runbook_section(), re.M))
    assert named == set(alert_names())


# --- loaded by both Prometheus configs, mounted in compose -------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE_CONFIG, LOCAL_CONFIG], ids=lambda p: p.name)
def test_both_configs_load_the_rules(path: Path) -> None:
    rule_files = yaml.safe_load(path.read_text())["rule_files"]
    assert [(path.parent / f).resolve() for f in rule_files] == [RULES.resolve()]


def test_compose_mounts_the_rules_where_the_config_looks() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose["volumes"]}
    config_in_container = Path(mounts["./prometheus.yml"])
    rule_files = yaml.safe_load(COMPOSE_CONFIG.read_text())["rule_files"]

    assert [str(config_in_container.parent / f) for f in rule_files] == [mounts["./alerts.yml"]]
    assert all(v.endswith(":ro") for v in compose["volumes"] if v.startswith("./"))
