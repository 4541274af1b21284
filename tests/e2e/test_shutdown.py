"""SIGTERM in the middle of an incident capture: P2 writes the bundle with what it has, says so, exits 0."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_incident_replay import replay, write_stream

pytestmark = pytest.mark.e2e


def test_sigterm_during_a_capture_finalizes_the_bundle(cluster, tmp_path):
    p2 = cluster.p2(FLIGHT_PRE_EVENTS=200, FLIGHT_POST_EVENTS=1_000_000)
    replay(cluster.p2_port, write_stream(tmp_path / "stream.jsonl", 1200), "--duplicate-rate", "0.02", "--seed", "9")
    cluster.wait(
        "the capture to start",
        lambda: cluster.p2_metrics().value("mercurystream_anomalies_total", type="duplicate") > 0,
    )
    assert not cluster.incidents.exists() or not [d for d in cluster.incidents.iterdir() if not d.name.startswith(".")]
    assert p2.stop(timeout=30) == 0
    (bundle,) = [d for d in cluster.incidents.iterdir() if not d.name.startswith(".")]
    meta = json.loads((bundle / "meta.json").read_text())
    assert meta["type"] == "duplicate"
    assert meta["complete"] is False
    lines = (bundle / "events.jsonl").read_bytes().splitlines()
    assert meta["pre_events"] + meta["post_events"] == len(lines) > meta["pre_events"] > 0
    assert "incomplete" in (bundle / "report.md").read_text()
