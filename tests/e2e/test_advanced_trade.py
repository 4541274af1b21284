"""mercury-exchange --api advanced-trade → mercury-p1 FEED_API=advanced-trade → mercury-p2, as real processes."""

from __future__ import annotations

import orjson
import pytest

from mercurystream.exchange.market import MATCH, Market

from .conftest import settle

pytestmark = pytest.mark.e2e

SEED, RATE, TRADES = 21, 400, 1500
PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")


def test_trades_arrive_with_feed_advanced_trade_and_the_exact_values(cluster):
    # P1 first, retrying fast, so it subscribes as soon as the exchange listens, however loaded the machine.
    cluster.p2()
    cluster.p1(FEED_API="advanced-trade", BACKOFF_MAX=0.2)
    cluster.exchange("--api", "advanced-trade", "--rate", RATE, "--max-trades", TRADES, "--seed", SEED)
    cluster.wait("the exchange to reach --max-trades", lambda: cluster.exchange_stats()["max_trades_reached"], 90)
    # The last trades leave with the next 250 ms batch: wait for the count to settle.
    sent = int(settle(lambda: cluster.exchange_stats()["market_trades_sent"]))
    cluster.wait("P2 to record every trade sent", lambda: len(cluster.recorded()) >= sent, 30)
    events = cluster.recorded()
    assert len(events) == sent > TRADES // 2
    assert {(e["venue"], e["feed"], e["type"]) for e in events} == {("coinbase", "advanced-trade", "match")}

    # The same seed gives the same trades whatever the start time: rebuild them, then compare by id.
    market = Market(PRODUCTS, rate=RATE, seed=SEED, max_trades=TRADES, start_us=0)
    expected = {}
    for _, kind, text in market.advance(1 << 62):
        if kind == MATCH:
            m = orjson.loads(text)
            taker = {"buy": "sell", "sell": "buy"}[m["side"]]
            expected[(m["product_id"], m["trade_id"])] = (float(m["price"]), float(m["size"]), taker)
    for e in events:
        key = (e["product_id"], e["trade_id"])
        assert (e["price"], e["last_size"], e["side"]) == expected[key], key

    p1 = cluster.p1_metrics()
    assert p1.value("mercurystream_p1_validation_failures_total") == 0
    assert p1.value("mercurystream_p1_sequence_gaps_total") == 0
    assert p1.value("mercurystream_p1_messages_total", type="snapshot_trade") >= 3, "the subscribe snapshot"
    assert p1.value("mercurystream_p1_connected", target="websocket") == 1
    m = cluster.p2_metrics()
    assert m.value("mercurystream_events_total") == sent
    assert m.total("mercurystream_anomalies_total") == 0, m.by_label("mercurystream_anomalies_total", "type")
