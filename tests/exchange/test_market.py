import itertools
import math
import re
from collections import defaultdict

import orjson
import pytest

from mercurystream.exchange.market import (
    CATALOG,
    HEARTBEAT,
    MATCH,
    N_CHANNELS,
    TICKER,
    YEAR_US,
    Market,
    ProductSpec,
    spec_for,
)
from mercurystream.shared.models import normalize_trade
from mercurystream.shared.timeparse import IsoTimeParser

START_US = 1_714_567_890_000_000  # 2024-05-01T12:51:30Z
DECIMAL = re.compile(r"^\d+\.\d{8}$")
TRIMMED = re.compile(r"^(0|[1-9]\d*)(\.\d*[1-9])?$")
"""A trade price or size as the live feed formats it: no trailing zeros (``"22386.3"``, ``"0.0006"``)."""
TRIMMED_FIELDS = ("price", "open_24h", "low_24h", "high_24h", "best_bid", "best_ask", "last_size")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MATCH_FIELDS = ["type", "trade_id", "maker_order_id", "taker_order_id", "side", "size", "price", "product_id"]
MATCH_FIELDS += ["sequence", "time"]
TICKER_FIELDS = ["type", "sequence", "product_id", "price", "open_24h", "volume_24h", "low_24h", "high_24h"]
TICKER_FIELDS += ["volume_30d", "best_bid", "best_bid_size", "best_ask", "best_ask_size", "side", "time"]
TICKER_FIELDS += ["trade_id", "last_size"]


def market(**kw) -> Market:
    kw.setdefault("seed", 7)
    kw.setdefault("start_us", START_US)
    kw.setdefault("rate", 200.0)
    return Market(**kw)


def parsed(msgs):
    return [orjson.loads(m[2]) for m in msgs]


@pytest.fixture(scope="module")
def stream():
    """60 simulated seconds at 200 trades/s: about 12k matches."""
    m = market()
    msgs = m.advance(60_000_000)
    return m, msgs, parsed(msgs)


def test_same_seed_same_stream_however_time_is_sliced():
    whole = market().advance(5_000_000)
    m = market()
    sliced = []
    for t in range(0, 5_000_001, 37_123):
        sliced += m.advance(t)
    sliced += m.advance(5_000_000)
    limited = market()
    capped = []
    while len(capped) < len(whole):
        got = limited.advance(5_000_000, limit=7)
        assert got
        capped += got
    assert [m[2] for m in sliced] == [m[2] for m in whole]
    assert [m[2] for m in capped] == [m[2] for m in whole]


def test_different_seed_different_stream():
    assert market(seed=1).advance(1_000_000) != market(seed=2).advance(1_000_000)


def test_messages_have_coinbase_shapes(stream):
    _, msgs, objs = stream
    for (key, kind, _), o in zip(msgs, objs, strict=True):
        if kind == MATCH:
            assert list(o) == MATCH_FIELDS
            assert TRIMMED.match(o["price"]) and TRIMMED.match(o["size"]), (o["price"], o["size"])
            assert UUID.match(o["maker_order_id"]) and UUID.match(o["taker_order_id"])
            assert o["side"] in ("buy", "sell")
        else:
            assert kind == TICKER
            assert list(o) == TICKER_FIELDS
            for f in TICKER_FIELDS:
                if f in TRIMMED_FIELDS:
                    assert TRIMMED.match(o[f]), (f, o[f])
                elif f not in ("type", "sequence", "product_id", "side", "time", "trade_id"):
                    assert DECIMAL.match(o[f]), (f, o[f])
            assert float(o["best_bid"]) < float(o["best_ask"])
            assert float(o["low_24h"]) <= float(o["price"]) <= float(o["high_24h"])
        assert ISO.match(o["time"])
        assert key == m_key(o["product_id"], kind)
        assert type(o["trade_id"]) is int and type(o["sequence"]) is int


def m_key(product_id: str, channel: int) -> int:
    return list(CATALOG).index(product_id) * N_CHANNELS + channel


def test_every_trade_message_validates(stream):
    _, _, objs = stream
    for o in objs:
        event, reason = normalize_trade(o)
        assert reason is None, (reason, o)
        assert event["price"] == float(o["price"])
        if o["type"] == "match":
            assert event["last_size"] == float(o["size"])


def test_trade_ids_contiguous_sequences_increasing_times_ordered(stream):
    m, _msgs, objs = stream
    parser = IsoTimeParser()
    last_t = START_US / 1e6
    matches = [o for o in objs if o["type"] == "match"]
    assert len(matches) == m.trades
    first = {}
    for o in matches:
        first.setdefault(o["product_id"], o)
    last_id = {pid: o["trade_id"] - 1 for pid, o in first.items()}
    last_seq = {pid: o["sequence"] - 1 for pid, o in first.items()}
    for o in matches:
        pid = o["product_id"]
        assert o["trade_id"] == last_id[pid] + 1
        assert o["sequence"] > last_seq[pid]
        last_id[pid], last_seq[pid] = o["trade_id"], o["sequence"]
        t = parser.parse(o["time"])
        assert t >= last_t
        last_t = t
    assert set(first) == set(CATALOG)
    assert last_t <= START_US / 1e6 + 60.0


def m_last(m: Market, pid: str) -> bytes:
    return m.last_match(m.product_ids.index(pid))


def test_last_match_precedes_the_stream():
    m = market()
    before = {pid: orjson.loads(m_last(m, pid)) for pid in m.product_ids}
    objs = parsed(m.advance(10_000_000))
    for pid, lm in before.items():
        assert lm["type"] == "last_match"
        assert list(lm)[1:] == MATCH_FIELDS[1:]
        first = next(o for o in objs if o["product_id"] == pid and o["type"] == "match")
        assert first["trade_id"] == lm["trade_id"] + 1
        assert first["sequence"] > lm["sequence"]
    after = orjson.loads(m_last(m, "BTC-USD"))
    last = [o for o in objs if o["type"] == "match" and o["product_id"] == "BTC-USD"][-1]
    assert after == {**last, "type": "last_match"}


def test_one_ticker_per_fill_so_a_cascade_gives_contiguous_trade_ids(stream):
    _, _, objs = stream
    by_taker = defaultdict(list)
    tickers = []
    for o in objs:
        if o["type"] == "match":
            by_taker[o["taker_order_id"]].append(o)
        else:
            tickers.append(o)
    cascades = [fills for fills in by_taker.values() if len(fills) > 1]
    assert cascades, "some taker orders must sweep several makers"
    for fills in cascades:
        assert len({f["time"] for f in fills}) == 1
        assert len({f["side"] for f in fills}) == 1
    matches = {o["trade_id"]: o for o in objs if o["type"] == "match"}
    assert len(tickers) == len(matches)
    for t in tickers:
        fill = matches[t["trade_id"]]
        assert t["price"] == fill["price"] and t["last_size"] == fill["size"]
        assert t["sequence"] == fill["sequence"] and t["time"] == fill["time"]
        # The match side is the maker's; the ticker's is the taker's.
        assert t["side"] != fill["side"]
    for product in ("BTC-USD", "ETH-USD", "SOL-USD"):
        ids = [t["trade_id"] for t in tickers if t["product_id"] == product]
        assert all(b - a == 1 for a, b in itertools.pairwise(ids))


def test_sequence_skips_follow_the_recorded_distribution(stream):
    """Skips between orders: median 99, p10 18, p90 430 in the recording (tests/fixtures/SOURCES.md)."""
    _, _, objs = stream
    between, within = [], []
    last: dict[str, dict] = {}
    for o in objs:
        if o["type"] != "match":
            continue
        prev = last.get(o["product_id"])
        if prev is not None:
            same = prev["taker_order_id"] == o["taker_order_id"]
            (within if same else between).append(o["sequence"] - prev["sequence"])
        last[o["product_id"]] = o
    assert set(within) <= {2, 3} and within.count(2) > 0.9 * len(within)
    between.sort()
    assert min(between) >= 3
    assert 70 <= between[len(between) // 2] <= 130
    assert 10 <= between[len(between) // 10] <= 30
    assert 300 <= between[9 * len(between) // 10] <= 600


def test_subscribe_ticker_repeats_the_latest_fill():
    m = market()
    msgs = m.advance(2_000_000)
    last = [orjson.loads(t) for _, kind, t in msgs if kind == TICKER and b'"BTC-USD"' in t][-1]
    again = orjson.loads(m.subscribe_ticker(0))
    assert {k: again[k] for k in ("trade_id", "price", "last_size", "side", "time", "sequence")} == {
        k: last[k] for k in ("trade_id", "price", "last_size", "side", "time", "sequence")
    }


def test_tickers_off_leaves_the_match_stream_unchanged():
    on = market().advance(3_000_000)
    off_market = market()
    off_market.tickers = False
    off = off_market.advance(3_000_000)
    assert [m for m in on if m[1] == MATCH] == off


def test_rate_and_product_mix():
    m = market(rate=100.0)
    objs = parsed(m.advance(200_000_000))
    n = m.trades
    assert abs(n - 20_000) < 20_000 * 0.06
    share = defaultdict(int)
    for o in objs:
        if o["type"] == "match":
            share[o["product_id"]] += 1
    assert share["BTC-USD"] > share["ETH-USD"] > share["SOL-USD"] > 0


def test_prices_follow_gbm_with_the_configured_volatility():
    spec = CATALOG["BTC-USD"]
    m = Market([spec], rate=20.0, seed=11, start_us=START_US)
    m.tickers = False
    step_us = 10_000_000
    prices = []
    for i in range(1, 721):  # two simulated hours, one price per 10 s
        m.advance(i * step_us)
        prices.append(float(orjson.loads(m.last_match(0))["price"]))
    rets = [math.log(b / a) for a, b in itertools.pairwise(prices)]
    mean = sum(rets) / len(rets)
    var = sum((r - mean) ** 2 for r in rets) / (len(rets) - 1)
    annual = math.sqrt(var * YEAR_US / step_us)
    assert annual == pytest.approx(spec.annual_vol, rel=0.2)
    assert 0.9 * spec.price < prices[-1] < 1.1 * spec.price


def test_max_trades_stops_exactly():
    m = market(max_trades=101)
    msgs = m.advance(10**12)
    assert sum(1 for x in msgs if x[1] == MATCH) == 101 == m.trades
    assert m.exhausted and m.next_us is None
    assert m.advance(10**13) == []
    assert market(max_trades=0).advance(10**9) == []


def test_heartbeats_report_latest_sequence_and_trade_id():
    m = market()
    objs = parsed(m.advance(2_000_000))
    hbs = m.heartbeats(2_000_000)
    assert [h[1] for h in hbs] == [HEARTBEAT] * 3
    for key, _, text in hbs:
        hb = orjson.loads(text)
        assert list(hb) == ["type", "sequence", "last_trade_id", "product_id", "time"]
        assert key == m_key(hb["product_id"], HEARTBEAT)
        last = [o for o in objs if o["type"] == "match" and o["product_id"] == hb["product_id"]][-1]
        assert hb["last_trade_id"] == last["trade_id"] and hb["sequence"] == last["sequence"]
        assert hb["time"] == "2024-05-01T12:51:32.000000Z"


def test_unknown_products_get_a_generic_spec_and_bad_ids_are_rejected():
    assert spec_for("DOGE-USD").product_id == "DOGE-USD"
    objs = parsed(Market(["DOGE-USD"], rate=100, seed=1, start_us=START_US).advance(1_000_000))
    assert objs and all(normalize_trade(o)[1] is None for o in objs)
    for bad in ("btc", "BTC_USD", "", "A-B"):
        with pytest.raises(ValueError):
            spec_for(bad)


@pytest.mark.parametrize(
    "kw",
    [{"rate": 0}, {"rate": float("nan")}, {"products": []}, {"products": ["BTC-USD", "BTC-USD"]}, {"max_trades": -1}],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        market(**kw)


def test_custom_spec_is_used():
    spec = ProductSpec("ABC-USD", 10.0, 0.1, 1.0, 1.0, 1000.0, 5, 100)
    m = Market([spec], rate=100, seed=1, start_us=START_US)
    first = next(o for o in parsed(m.advance(1_000_000)) if o["type"] == "match")
    assert abs(float(first["price"]) - 10.0) < 0.1
    assert first["trade_id"] > 5


def test_clock_is_the_latest_trade_time():
    m = market(rate=1_000.0)
    assert m.clock_us == 0
    first = m.advance(1 << 62, 50)
    assert m.clock_us == parse_offset(first[-1][2])
    later = m.advance(1 << 62, 50)
    assert m.clock_us == parse_offset(later[-1][2]) > parse_offset(first[-1][2])


def parse_offset(text: bytes) -> int:
    """A message's time as an offset from ``START_US``, in microseconds."""
    return round(IsoTimeParser().parse(orjson.loads(text)["time"]) * 1e6) - START_US
