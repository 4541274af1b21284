"""A real Prometheus scrapes live P1 and P2 while the exchange and a replay with anomalies feed them;
it must load and evaluate every alert rule of alerts.yml, and every dashboard panel's query must return data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from mercurystream.processes import BIN, free_port
from tests.test_alerts import alert_names
from tests.test_dashboard import dashboard_exprs
from tests.test_prometheus_config import render_local_config

pytestmark = pytest.mark.e2e

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and os.environ.get("MERCURY_REQUIRE_PROMETHEUS") != "1":
    pytestmark = [
        pytest.mark.e2e,
        pytest.mark.skip(reason="the prometheus binary is not installed (apt-get install prometheus)"),
    ]


def query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


# What the cluster below provokes: the replay's drift and the duplicates' incident bundles.
EXPECTED_FIRING = {"MercurySchemaDrift", "MercuryIncidentWritten"}
# What a healthy cluster must not raise, even pending, once P1 has connected. (Latency and consumer drops
# are left out: a loaded machine may briefly make them pending, which is what they are for.)
EXPECTED_INACTIVE = {
    "MercuryTargetDown",
    "MercuryFeedSilent",
    "MercuryP1VenueDisconnected",
    "MercuryP1P2Disconnected",
    "MercuryP1Drops",
    "MercuryFrameErrors",
}


def alerting_rules(port: int) -> dict[str, dict]:
    """``{alert name: rule}`` as Prometheus's /api/v1/rules reports them (health, state, lastError)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return {
        rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"] if rule["type"] == "alerting"
    }


def test_alert_rules_load_and_every_dashboard_panel_returns_data(cluster, tmp_path):
    assert PROMETHEUS is not None, "CI must have Debian's prometheus installed (.ci/run does it)"
    cluster.exchange("--rate", 300, "--seed", 21, "--duplicate-rate", 0.01, "--malformed-rate", 0.01)
    cluster.p2(FLIGHT_COOLDOWN_S=1, FLIGHT_PRE_EVENTS=200, FLIGHT_POST_EVENTS=50)
    cluster.p1()
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        render_local_config(
            p2=f"127.0.0.1:{cluster.p2_metrics_port}",
            p1=f"127.0.0.1:{cluster.p1_metrics_port}",
            prometheus=f"127.0.0.1:{prom_port}",
        )
    )
    cluster._spawn(
        "prometheus",
        [PROMETHEUS, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{prom_port}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--log.level=warn"],
        {},
    )  # fmt: skip
    cluster.wait("Prometheus to be ready", lambda: cluster._http_ok(f"http://127.0.0.1:{prom_port}/-/ready"))
    cluster.wait("a few hundred events", lambda: cluster.p2_metrics().value("mercurystream_events_total") >= 600)

    replay = subprocess.run(
        [str(BIN / "mercury-replay"), "--file", str(cluster.record_file), "--port", str(cluster.p2_port),
         "--limit", "500", "--rate", "2000", "--drift-rate", "0.05", "--duplicate-rate", "0.05",
         "--shuffle-window", "5", "--seed", "3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr

    up = 'up{job=~"p1|p2"}'
    cluster.wait("both targets up", lambda: sum(float(r["value"][1]) for r in query(prom_port, up)) == 2)

    # The rules file the config names is loaded, every rule evaluates without error, and the rules see the
    # series P1 and P2 really export: the anomalies this test injects make their alerts fire.
    names = set(alert_names())
    assert names >= EXPECTED_FIRING | EXPECTED_INACTIVE
    deadline = time.monotonic() + 60
    rules: dict[str, dict] = {}
    while time.monotonic() < deadline:
        rules = alerting_rules(prom_port)
        firing = {n for n, r in rules.items() if r["state"] == "firing"}
        if set(rules) == names and all(r["health"] == "ok" for r in rules.values()) and firing >= EXPECTED_FIRING:
            break
        time.sleep(1)
    assert set(rules) == names, f"loaded {sorted(rules)}, alerts.yml has {sorted(names)}"
    unhealthy = {n: (r["health"], r.get("lastError")) for n, r in rules.items() if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    states = {n: r["state"] for n, r in rules.items()}
    wrong = {n: states[n] for n in EXPECTED_FIRING if states[n] != "firing"}
    wrong |= {n: states[n] for n in EXPECTED_INACTIVE if states[n] != "inactive"}
    assert not wrong, f"expected {sorted(EXPECTED_FIRING)} firing and {sorted(EXPECTED_INACTIVE)} inactive: {wrong}"
    # The "Alerts firing" panel (ALERTS{alertstate="firing"}) has rows because EXPECTED_FIRING fire.
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    deadline = time.monotonic() + 60
    empty = exprs
    while time.monotonic() < deadline:
        empty = [(title, expr) for title, expr in exprs if not query(prom_port, expr)]
        if not empty:
            break
        time.sleep(2)
    assert not empty, "panels without data:\n" + "\n".join(f"  {t}: {e}" for t, e in empty)
