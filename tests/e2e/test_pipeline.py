"""Exchange → P1 → P2 over loopback: every trade the exchange sent is delivered or counted as dropped."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

pytestmark = pytest.mark.e2e


def matches_sent(cluster) -> int:
    return cluster.exchange_stats()["messages_sent"]["match"]


def p1_dropped(cluster) -> float:
    return cluster.p1_metrics().total("mercurystream_p1_dropped_total")


def wait_exhausted(cluster, timeout=90):
    cluster.wait("the exchange to reach --max-trades", lambda: cluster.exchange_stats()["max_trades_reached"], timeout)


def wait_delivered(cluster, timeout=60):
    """Until every match the exchange sent is either in P2's recording or counted as dropped by P1."""

    def done() -> bool:
        return len(cluster.recorded()) + p1_dropped(cluster) >= matches_sent(cluster)

    cluster.wait("every sent trade to be recorded by P2 or counted as dropped", done, timeout)


def test_every_trade_arrives_once_and_vwap_matches_a_hand_computation(cluster):
    cluster.exchange("--rate", 2000, "--max-trades", 4000, "--seed", 11)
    cluster.p2()
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
    cluster.p1(BACKOFF_MAX="0.5")
    wait_exhausted(cluster)
    wait_delivered(cluster)
    p1 = cluster.p1_metrics()
    assert p1.value("mercurystream_p1_reconnects_total", target="websocket") >= 2
    sent = matches_sent(cluster)
    events = cluster.recorded()
    assert len(events) + p1_dropped(cluster) == sent
    assert len({(e["product_id"], e["trade_id"]) for e in events}) == len(events)
    # Trades made while P1 was reconnecting never reached it: the exchange did not send them, and
    # P2's gap detector reports them, as it would for the real feed.
    assert sent < 5000
    gaps = cluster.p2_metrics().value("mercurystream_anomalies_total", type="sequence_gap")
    assert gaps > 0


def test_services_exit_zero_on_sigterm(cluster):
    cluster.exchange("--rate", 500, "--seed", 14)
    cluster.p2()
    cluster.p1()
    cluster.wait("a few events", lambda: cluster.p2_metrics().value("mercurystream_events_total") >= 200)
    codes = cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes
