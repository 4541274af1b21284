"""Exchange → P1 → P2 over loopback: every trade the exchange sent is delivered or counted as dropped."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

from tests.e2e.conftest import settle

pytestmark = pytest.mark.e2e


def matches_sent(cluster) -> int:
    return cluster.exchange_stats()["messages_sent"]["match"]


def p1_dropped(cluster) -> float:
    return cluster.p1_metrics().total("mercurystream_p1_dropped_total")


def trades_recorded(cluster) -> list[dict]:
    """P2's recording without P1's gap control events (``gap``, ``backfill``), which are no trades."""
    return [e for e in cluster.recorded() if e.get("type") not in ("gap", "backfill")]


def wait_exhausted(cluster, timeout=90):
    cluster.wait("the exchange to reach --max-trades", lambda: cluster.exchange_stats()["max_trades_reached"], timeout)


def wait_delivered(cluster, timeout=60):
    """Until every match the exchange sent is either in P2's recording or counted as dropped by P1."""

    def done() -> bool:
        return len(trades_recorded(cluster)) + p1_dropped(cluster) >= matches_sent(cluster)

    cluster.wait("every sent trade to be recorded by P2 or counted as dropped", done, timeout)


def test_every_trade_arrives_once_and_vwap_matches_a_hand_computation(cluster):
    # P2 first: the exchange trades from its start, and only P1's start-up should fall inside its
    # two seconds (with P2's too, a slow start on a busy machine left fewer than 1,000 trades to send).
    cluster.p2()
    cluster.exchange("--rate", 2000, "--max-trades", 4000, "--seed", 11)
    cluster.p1()
    wait_exhausted(cluster)
    wait_delivered(cluster)
    m = cluster.p2_metrics()
    sent = matches_sent(cluster)
    assert sent > 1000  # trades made before P1 subscribed were never sent to it
    assert m.value("mercurystream_events_total") == sent
    assert p1_dropped(cluster) == 0
    for consumer in ("vwap", "volatility", "volume", "health", "forensics", "recorder"):
        cluster.wait(
            f"{consumer} to process everything",
            lambda c=consumer: cluster.p2_metrics().value("mercurystream_consumer_events_total", consumer=c) == sent,
        )
    m = cluster.p2_metrics()
    assert m.total("mercurystream_drops_total") == 0
    assert m.total("mercurystream_anomalies_total") == 0, m.by_label("mercurystream_anomalies_total", "type")

    events = cluster.recorded()
    assert len({(e["product_id"], e["trade_id"]) for e in events}) == sent
    notional: dict[str, float] = defaultdict(float)
    volume: dict[str, float] = defaultdict(float)
    for e in events:  # the whole run is far inside VWAP_WINDOW_S = 300 s of exchange time
        notional[e["product_id"]] += e["price"] * e["last_size"]
        volume[e["product_id"]] += e["last_size"]
    assert len(notional) == 3
    for pid in notional:
        expected = notional[pid] / volume[pid]
        got = m.value("mercurystream_vwap", product_id=pid)
        assert math.isclose(got, expected, rel_tol=1e-9), (pid, got, expected)


def test_p2_restart_mid_stream_delivers_every_event_once(cluster):
    cluster.exchange("--rate", 1500, "--max-trades", 6000, "--seed", 12)
    p2 = cluster.p2()
    cluster.p1()
    cluster.wait("P2 to receive a first part", lambda: cluster.p2_metrics().value("mercurystream_events_total") >= 1000)
    assert p2.stop(timeout=15) == 0
    p2_gone = lambda: cluster.p1_metrics().value("mercurystream_p1_connected", target="p2") == 0  # noqa: E731
    cluster.wait("P1 to notice P2 is gone", p2_gone)
    cluster.p2()
    wait_exhausted(cluster)
    wait_delivered(cluster)

    events = cluster.recorded()
    ids = [(e["product_id"], e["trade_id"]) for e in events]
    assert len(ids) == len(set(ids)), "a restart must not deliver an event twice"
    assert len(ids) + p1_dropped(cluster) == matches_sent(cluster) > 2000
    assert p1_dropped(cluster) == 0, "a graceful P2 restart loses nothing: P1 resends what P2 never read"
    assert cluster.p1_metrics().value("mercurystream_p1_reconnects_total", target="p2") >= 1


def test_websocket_drops_mid_stream_recover_with_every_sent_trade_delivered(cluster):
    cluster.exchange("--rate", 800, "--max-trades", 5000, "--seed", 13, "--disconnect-every", 1.0)
    cluster.p2()
    cluster.p1(BACKOFF_MAX="0.5", BACKFILL="false")
    wait_exhausted(cluster)
    wait_delivered(cluster)
    p1 = cluster.p1_metrics()
    assert p1.value("mercurystream_p1_reconnects_total", target="websocket") >= 2
    sent = matches_sent(cluster)
    events = trades_recorded(cluster)
    assert len(events) + p1_dropped(cluster) == sent
    assert len({(e["product_id"], e["trade_id"]) for e in events}) == len(events)
    # Trades made while P1 was reconnecting never reached it: the exchange did not send them, and
    # P2's gap detector reports them, as it would for the real feed.
    assert sent < 5000
    gaps = cluster.p2_metrics().value("mercurystream_anomalies_total", type="sequence_gap")
    assert gaps > 0


def test_trades_made_while_p1_reconnected_are_backfilled_so_every_trade_id_arrives_once(cluster):
    """The same reconnects with backfill on: what the venue made while P1 was away comes from its REST history."""
    cluster.exchange("--rate", 800, "--max-trades", 5000, "--seed", 13, "--disconnect-every", 1.0)
    cluster.p2()
    cluster.p1(BACKOFF_MAX="0.5")
    wait_exhausted(cluster)
    last = {pid: p["last_trade_id"] for pid, p in cluster.exchange_stats()["products"].items()}

    def complete() -> bool:
        highest: dict[str, int] = {}
        for e in trades_recorded(cluster):
            highest[e["product_id"]] = max(highest.get(e["product_id"], 0), e["trade_id"])
        return highest == last

    cluster.wait("every product's last trade in P2", complete, timeout=60)
    settle(lambda: cluster.p1_metrics().total("mercurystream_p1_gap_ids_total"), quiet_s=3.0)

    def backfilled_all() -> bool:
        m = cluster.p1_metrics()
        done = sum(m.value("mercurystream_p1_backfill_ids_total", outcome=o) for o in ("recovered", "unrecoverable"))
        recovered = m.value("mercurystream_p1_backfill_ids_total", outcome="recovered")
        in_p2 = sum(e.get("backfilled") is True for e in trades_recorded(cluster))
        return done == m.value("mercurystream_p1_backfill_ids_total", outcome="requested") and in_p2 == recovered

    cluster.wait("every gap's backfill done and recorded", backfilled_all, timeout=60)
    assert cluster.p1_metrics().value("mercurystream_p1_reconnects_total", target="websocket") >= 2
    assert p1_dropped(cluster) == 0
    events = trades_recorded(cluster)
    live = [e for e in events if e.get("backfilled") is not True]
    assert len(live) == matches_sent(cluster)
    for pid in last:
        ids = sorted(e["trade_id"] for e in events if e["product_id"] == pid)
        assert ids == list(range(ids[0], last[pid] + 1)), f"{pid}: every id from the first on, once"
    p2 = cluster.p2_metrics()
    backfilled = len(events) - len(live)
    assert backfilled > 0 and p2.value("mercurystream_backfilled_total") == backfilled
    assert p2.value("mercurystream_anomalies_total", type="duplicate") == 0
    assert p2.value("mercurystream_backfill_ids_total", outcome="unrecoverable") == 0


def test_services_exit_zero_on_sigterm(cluster):
    cluster.exchange("--rate", 500, "--seed", 14)
    cluster.p2()
    cluster.p1()
    cluster.wait("a few events", lambda: cluster.p2_metrics().value("mercurystream_events_total") >= 200)
    codes = cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes
