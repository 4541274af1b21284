from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mercurystream.p1.pipeline import IngestPipeline, fast_event
from mercurystream.shared.models import normalize_trade
from mercurystream.shared.timeparse import IsoTimeParser

from .conftest import match


def test_valid_trades_are_normalized_and_stamped_once_per_batch():
    pipe = IngestPipeline()
    out, invalid = pipe.process([match(1), match(2, product_id="ETH-USD")], now_us=1_714_566_896_789_012)
    assert invalid == 0
    first, second = (orjson.loads(p) for p in out)
    assert first == {
        "type": "match",
        "product_id": "BTC-USD",
        "price": 64388.01,
        "last_size": 0.00512,
        "time": "2024-05-01T12:34:56.789012Z",
        "trade_id": 1,
        "sequence": 1001,
        "side": "buy",  # the taker's: the match's maker side was "sell"
        "venue": "coinbase",
        "feed": "exchange",
        "ingest_ts_ms": 1_714_566_896_789,
        "ingest_ts_us": 1_714_566_896_789_012,
    }
    assert second["product_id"] == "ETH-USD"
    assert second["ingest_ts_us"] == first["ingest_ts_us"]
    assert (pipe.valid, pipe.invalid) == (2, 0)


def test_invalid_trade_is_forwarded_as_received_and_counted():
    pipe = IngestPipeline()
    bad = match(3, price="not-a-price", venue_extra={"kept": True})
    out, invalid = pipe.process([match(1), bad, match(4, time="yesterday")], now_us=2_000_000)
    assert invalid == 2
    assert (pipe.valid, pipe.invalid) == (1, 2)
    forwarded = orjson.loads(out[1])
    assert forwarded == {**bad, "ingest_ts_ms": 2000, "ingest_ts_us": 2_000_000}
    assert list(forwarded)[: len(bad)] == list(bad), "field order as received"
    assert orjson.loads(out[2])["time"] == "yesterday"


def test_empty_batch():
    assert IngestPipeline().process([], now_us=1) == ([], 0)


# --- the fast path builds exactly what the model builds ------------------------------------

TICKER = {
    "type": "ticker",
    "sequence": 37475248783,
    "product_id": "ETH-USD",
    "price": "1285.22",
    "open_24h": "1310.79",
    "best_bid": "1285.04",
    "best_bid_size": "0.46688654",
    "best_ask": "1285.27",
    "side": "buy",
    "time": "2022-10-19T23:28:22.061769Z",
    "trade_id": 370843401,
    "last_size": "11.4396987",
}

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1.5",
            ".5",
            "5.",
            "1_000",
            " 2.5 ",
            "+3",
            "1e3",
            "inf",
            "-inf",
            "NaN",
            "nan",
            "1e400",
            "\u0663",
            "\uff11",
            "abc",
            "match",
            "ticker",
            "buy",
            "sell",
            "BUY",
            "BTC-USD",
            "2024-05-01T12:34:56.789012Z",
            "2024-05-01T12:34:56Z",
            "2024-05-01T12:34:56.7+00:00",
            "2024-05-01T12:34:56+02:00",
            "2024-05-01T12:34",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:34:5_6Z",
        ]
    ),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)
FIELDS = [
    "type",
    "product_id",
    "price",
    "size",
    "last_size",
    "time",
    "trade_id",
    "sequence",
    "side",
    "best_bid",
    "best_ask",
]


@settings(max_examples=3000, deadline=None)
@given(
    base=st.sampled_from([match(1), TICKER]),
    changes=st.dictionaries(st.sampled_from(FIELDS), ODD_VALUES, max_size=3),
    removed=st.sets(st.sampled_from(FIELDS), max_size=2),
)
def test_fast_path_agrees_with_the_model(base, changes, removed):
    msg = {k: v for k, v in {**base, **changes}.items() if k not in removed}
    fast = fast_event(dict(msg), IsoTimeParser().parse)
    model_event, reason = normalize_trade(dict(msg))
    if fast is not None:
        assert reason is None, f"fast path accepted what the model rejects: {reason}"
        assert orjson.dumps(fast) == orjson.dumps(model_event)


@pytest.mark.parametrize("msg", [match(1), match(2, side=None, sequence=None), TICKER])
def test_fast_path_takes_coinbase_shapes(msg):
    fast = fast_event(msg, IsoTimeParser().parse)
    assert fast is not None
    assert orjson.dumps(fast) == orjson.dumps(normalize_trade(msg)[0])


def test_payloads_held_in_the_buffer_cost_their_size_not_orjsons_work_buffer():
    import tracemalloc

    from mercurystream.p1.pipeline import IngestPipeline

    msg = {"type": "match", "trade_id": 1, "sequence": 5, "time": "2024-05-01T12:00:00.000001Z",
           "product_id": "BTC-USD", "size": "0.01000000", "price": "60000.01000000", "side": "buy"}  # fmt: skip
    pipeline = IngestPipeline()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [pipeline.process([dict(msg, trade_id=i)], 1_700_000_000_000_000)[0][0] for i in range(2000)]
        per_payload = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert per_payload < 1024, f"{per_payload:.0f} bytes held per ~250-byte payload"


# --- the batch path builds exactly what the model builds, message by message ----------------

BATCH_VALUES = st.one_of(
    ODD_VALUES,
    st.sampled_from(["0.5", "1e3", " 2.5 ", "+3", "64388.01000000", "0.00000001", "1e-7", "123456789012.5"]),
    st.sampled_from(["2024-05-01T12:34:59.999999Z", "2024-05-01T12:35:00.000000Z", "2024-02-30T00:00:00.000000Z",
                     "2024-05-01T24:00:00.000000Z", "2024-05-01T12:34:60.000000Z", "2024-05-01T12:34:56.78901Z"]),
    st.sampled_from(['BTC-"USD', "ETH-USD", "\u00e9\u00e9", "a},{b", "x\ny"]),
    # orjson.loads turns integers outside [-2**63, 2**64) into floats, so no others reach the pipeline.
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([2**63, 2**64 - 1, 1.5, 2.0**64]),
)  # fmt: skip


def wire(msg: dict) -> dict:
    """The message as the feed would deliver it: through JSON text and ``orjson.loads``."""
    try:
        return orjson.loads(json.dumps(msg))
    except orjson.JSONDecodeError:  # NaN and infinities are not JSON
        assume(False)
        raise


def per_event(batch: list[dict], now_us: int) -> tuple[list[bytes], int]:
    """What the model alone makes of each message: the reference for any fast path."""
    out, invalid = [], 0
    for msg in batch:
        event, reason = normalize_trade(dict(msg))
        invalid += reason is not None
        origin = {"venue": "coinbase", "feed": "exchange"} if reason is None else {}
        out.append(orjson.dumps({**event, **origin, "ingest_ts_ms": now_us // 1000, "ingest_ts_us": now_us}))
    return out, invalid


@settings(max_examples=1500, deadline=None)
@given(
    changes=st.lists(
        st.dictionaries(st.sampled_from([*FIELDS, "maker_order_id"]), BATCH_VALUES, max_size=2), min_size=1, max_size=6
    ),
    removed=st.lists(st.sets(st.sampled_from(FIELDS), max_size=1), min_size=6, max_size=6),
)
def test_batch_path_agrees_with_the_model(changes, removed):
    batch = [
        wire({k: v for k, v in {**match(i), **change}.items() if k not in removed[i]})
        for i, change in enumerate(changes)
    ]
    expected = per_event(batch, 1_714_566_896_789_012)
    assert IngestPipeline().process([dict(m) for m in batch], 1_714_566_896_789_012) == expected


def test_a_batch_of_coinbase_matches_takes_the_batch_path():
    batch = [match(i, product_id=p) for i, p in enumerate(["BTC-USD", "ETH-USD", "SOL-USD"] * 100)]
    batch[5]["time"] = "2024-05-01T12:35:00.000001Z"
    pipe = IngestPipeline()
    out = pipe._match_batch(batch, 1_714_566_896_789, 1_714_566_896_789_012)
    assert out is not None
    assert out == per_event(batch, 1_714_566_896_789_012)[0]
    assert pipe.process(batch, 1_714_566_896_789_012) == (out, 0)
    assert (pipe.valid, pipe.invalid) == (300, 0)


@pytest.mark.parametrize(
    "odd",
    [
        {"type": "ticker"},
        {"last_size": "1.0"},
        {"best_bid": "1.0"},
        {"sequence": None},
        {"side": None},
        {"price": "0"},
        {"price": "nan"},
        {"size": "-1"},
        {"time": "2024-05-01T12:34:56Z"},
        {"trade_id": 2.0**64},
        {"product_id": ""},
    ],
)
def test_one_unusual_message_sends_the_batch_down_the_per_event_path(odd):
    batch = [match(1), {**match(2), **odd}, match(3)]
    assert IngestPipeline()._match_batch(batch, 0, 0) is None
    assert IngestPipeline().process([dict(m) for m in batch], 5_000) == per_event(batch, 5_000)


@pytest.mark.parametrize("n", [1, 40])
def test_a_product_id_past_the_schema_bound_is_invalid_on_every_path(n):
    """A 900 KB product id used to pass P1's fast paths as valid; the model's bound now holds on all of them."""
    long_id = "X" * 900_000
    messages = [match(i) for i in range(n)]
    messages[-1] = {**messages[-1], "product_id": long_id}
    pipeline = IngestPipeline()
    payloads, invalid = pipeline.process(messages, 1_700_000_000_000_000)
    assert invalid == 1 and pipeline.invalid == 1 and pipeline.valid == n - 1
    assert orjson.loads(payloads[-1])["product_id"] == long_id  # forwarded as received, for P2's drift rule
    assert fast_event({**match(1), "product_id": "Y" * 65}, IsoTimeParser().parse) is None
    assert fast_event({**match(1), "product_id": "Y" * 64}, IsoTimeParser().parse) is not None
