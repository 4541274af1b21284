"""A gap the simulator's fault makes, found by P1, backfilled from the simulator's REST history, recovered in P2."""

from __future__ import annotations

import json
import urllib.request

from tests.e2e.conftest import Cluster, settle

TOKEN = "gap-backfill-test-token-0123456789"


def _inject(c: Cluster, kind: str, count: int) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{c.exchange_port}/faults?kind={kind}&count={count}",
        method="POST",
        headers={"X-Faults-Token": TOKEN},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def test_a_dropped_trade_is_announced_backfilled_and_marked_recovered_in_the_bundle(cluster: Cluster) -> None:
    c = cluster
    c.exchange("--rate", "40", "--products", "BTC-USD", "--allow-faults", "--faults-token", TOKEN, "--seed", "3")
    c.p2(FLIGHT_POST_EVENTS=150, FLIGHT_PRE_EVENTS=500, GAP_REORDER_WINDOW=5000)
    c.p1(SYMBOLS="BTC-USD")
    c.wait("trades in P2", lambda: c.p2_metrics().value("mercurystream_events_total") > 50)
    _inject(c, "gap", 3)

    def recovered() -> bool:
        return c.p2_metrics().value("mercurystream_backfill_ids_total", outcome="recovered") >= 3

    c.wait("the backfill's result in P2", recovered, timeout=30)
    p1 = c.p1_metrics()
    assert (
        p1.value("mercurystream_p1_gaps_total", source="trade_id")
        + p1.value("mercurystream_p1_gaps_total", source="heartbeat")
        >= 1
    )
    assert p1.value("mercurystream_p1_backfill_ids_total", outcome="recovered") == 3
    assert p1.value("mercurystream_p1_backfill_ids_total", outcome="unrecoverable") == 0
    p2 = c.p2_metrics()
    assert p2.value("mercurystream_backfilled_total") == 3
    assert p2.value("mercurystream_anomalies_total", type="sequence_gap") == 3
    assert p2.value("mercurystream_anomalies_total", type="duplicate") == 0
    assert p2.value("mercurystream_anomalies_total", type="out_of_order") == 0
    assert p2.value("mercurystream_anomalies_total", type="schema_drift") == 0

    recorded = c.recorded()
    # Usually one announcement. A heartbeat that falls between the dropped trades (about one run in
    # twenty at this rate) announces those before it, and the next trade the rest: then two, which
    # together name each missing id once.
    gaps = sorted((e["first_missing"], e["last_missing"]) for e in recorded if e.get("type") == "gap")
    missing = [i for first, last in gaps for i in range(first, last + 1)]
    assert 1 <= len(gaps) <= 2 and len(missing) == 3 and missing == list(range(missing[0], missing[0] + 3)), gaps
    backfilled = sorted(e["trade_id"] for e in recorded if e.get("backfilled") is True)
    assert backfilled == missing
    ids = sorted(e["trade_id"] for e in recorded if e.get("type") == "match")
    assert ids == list(range(ids[0], ids[-1] + 1)), "with the backfill, every trade id is there once"

    def bundle_meta() -> dict | None:
        for meta in c.incidents.glob("*/meta.json"):
            return json.loads(meta.read_text())
        return None

    c.wait("the incident bundle", lambda: bundle_meta() is not None, timeout=30)
    meta = bundle_meta()
    assert meta is not None and meta["type"] == "sequence_gap"
    entries = sorted(meta["gaps"], key=lambda e: e["first_missing"])
    assert [e["first_missing"] for e in entries] == [first for first, _ in gaps]
    assert all(e["status"] == "recovered" and e["unrecoverable"] == 0 for e in entries)
    assert sum(e["recovered"] for e in entries) == 3 and sum(e["backfilled"] for e in entries) == 3
    report = (c.incidents / meta["incident_id"] / "report.md").read_text()
    assert "## Gaps and Backfill" in report and "| recovered |" in report


def test_trades_lost_with_no_later_trade_are_found_by_heartbeats_and_recovered(cluster: Cluster) -> None:
    """Every match is dropped on the way and trading then stops: only the heartbeats tell P1 what it missed."""
    c = cluster
    c.exchange("--rate", "10", "--max-trades", "60", "--products", "BTC-USD", "--gap-rate", "1.0", "--seed", "4")
    c.p2(FLIGHT_POST_EVENTS=5)
    c.p1(SYMBOLS="BTC-USD")

    c.wait("the end of trading", lambda: c.exchange_stats()["max_trades_reached"], timeout=30)
    lost = settle(lambda: c.p1_metrics().total("mercurystream_p1_gap_ids_total"), quiet_s=3.0)
    recovered = lambda: c.p2_metrics().value("mercurystream_backfill_ids_total", outcome="recovered")  # noqa: E731
    c.wait("every lost trade recovered", lambda: lost > 0 and recovered() == lost, timeout=30)
    p1, p2 = c.p1_metrics(), c.p2_metrics()
    lost = p1.value("mercurystream_p1_gap_ids_total", source="heartbeat")
    assert lost > 0 and p1.value("mercurystream_p1_gap_ids_total", source="trade_id") == 0
    assert p2.value("mercurystream_anomalies_total", type="sequence_gap") == lost
    assert p2.value("mercurystream_backfilled_total") == lost
    assert p2.value("mercurystream_gap_notices_total", source="heartbeat") >= 1
    recorded = c.recorded()
    assert all(e.get("backfilled") is True for e in recorded if e.get("type") == "match")
    ids = sorted(e["trade_id"] for e in recorded if e.get("type") == "match")
    assert len(ids) == lost and ids == list(range(ids[0], ids[-1] + 1))
    assert ids[-1] == c.exchange_stats()["products"]["BTC-USD"]["last_trade_id"]
