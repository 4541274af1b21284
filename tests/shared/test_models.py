"""The trade model against the message shapes Coinbase actually sends."""

from __future__ import annotations

import orjson
import pytest

from mercurystream.shared.models import CONTROL_TYPES, TRADE_TYPES, Trade, normalize_trade

# Verbatim shapes from Coinbase Exchange's WebSocket feed documentation (matches and ticker channels).
MATCH = {
    "type": "match",
    "trade_id": 10,
    "sequence": 50,
    "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
    "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
    "time": "2014-11-07T08:19:27.028459Z",
    "product_id": "BTC-USD",
    "size": "5.23512",
    "price": "400.23",
    "side": "sell",
}
TICKER = {
    "type": "ticker",
    "sequence": 37475248783,
    "product_id": "ETH-USD",
    "price": "1285.22",
    "open_24h": "1310.79",
    "volume_24h": "245532.79269678",
    "low_24h": "1280.52",
    "high_24h": "1313.8",
    "volume_30d": "9788783.60117027",
    "best_bid": "1285.04",
    "best_bid_size": "0.46688654",
    "best_ask": "1285.27",
    "best_ask_size": "1.56637040",
    "side": "buy",
    "time": "2022-10-19T23:28:22.061769Z",
    "trade_id": 370843401,
    "last_size": "11.4396987",
}


def test_match_decimal_strings_become_floats_and_size_maps_to_last_size():
    event, reason = normalize_trade(MATCH)
    assert reason is None
    assert event == {
        "type": "match",
        "product_id": "BTC-USD",
        "price": 400.23,
        "last_size": 5.23512,
        "time": "2014-11-07T08:19:27.028459Z",
        "trade_id": 10,
        "sequence": 50,
        "side": "buy",  # the taker's: a match's "side" is the maker order's
    }
    assert list(event) == ["type", "product_id", "price", "last_size", "time", "trade_id", "sequence", "side"]


def test_ticker_keeps_best_bid_and_ask():
    event, reason = normalize_trade(TICKER)
    assert reason is None
    assert event == {
        "type": "ticker",
        "product_id": "ETH-USD",
        "price": 1285.22,
        "last_size": 11.4396987,
        "time": "2022-10-19T23:28:22.061769Z",
        "trade_id": 370843401,
        "sequence": 37475248783,
        "side": "buy",
        "best_bid": 1285.04,
        "best_ask": 1285.27,
    }


def test_unknown_fields_are_ignored_and_the_input_is_not_mutated():
    msg = {**MATCH, "brand_new_field": {"nested": [1, 2]}, "another": "x"}
    before = dict(msg)
    event, reason = normalize_trade(msg)
    assert reason is None
    assert "brand_new_field" not in event and "another" not in event and "maker_order_id" not in event
    assert msg == before


def test_optional_fields_may_be_absent():
    msg = {k: v for k, v in MATCH.items() if k not in ("sequence", "side")}
    event, reason = normalize_trade(msg)
    assert reason is None
    assert "sequence" not in event and "side" not in event


def test_numbers_already_numeric_are_accepted():
    event, reason = normalize_trade({**MATCH, "price": 400.23, "size": 1})
    assert reason is None and event["price"] == 400.23 and event["last_size"] == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price", True),
        ("size", False),
        ("trade_id", True),
        ("sequence", False),
    ],
)
def test_booleans_are_not_numbers(field, value):
    msg = {**MATCH, field: value}
    out, reason = normalize_trade(msg)
    assert out is msg
    assert reason is not None and "boolean" in reason


@pytest.mark.parametrize(
    "time",
    ["yesterday", "2024-13-01T00:00:00Z", "2024-05-01T25:00:00.000000Z", "2024-05-01T12:34:99.000000Z", "", 1714566896],
)
def test_bad_time_is_rejected(time):
    _, reason = normalize_trade({**MATCH, "time": time})
    assert reason is not None and reason.startswith("time")


@pytest.mark.parametrize("time", ["2024-05-01T12:34:56Z", "2024-05-01T12:34:56.789012+00:00", "2024-05-01T12:34:56.7Z"])
def test_iso_utc_variants_are_accepted_as_sent(time):
    event, reason = normalize_trade({**MATCH, "time": time})
    assert reason is None and event["time"] == time


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price", "abc"),
        ("price", "0"),
        ("price", "-1.5"),
        ("price", "NaN"),
        ("price", "1e400"),
        ("size", "-0.1"),
        ("size", "inf"),
        ("trade_id", "12.5"),
        ("trade_id", 2**70),
        ("trade_id", 1.2345678901234568e29),
        ("sequence", -(2**64)),
        ("side", "BUY"),
        ("product_id", ""),
        ("type", "last_match"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(field, value):
    msg = {**MATCH, field: value}
    out, reason = normalize_trade(msg)
    assert out is msg
    assert reason is not None and reason.startswith(field if field != "size" else "last_size")


@pytest.mark.parametrize("missing", ["price", "size", "trade_id", "time", "product_id", "type"])
def test_required_fields(missing):
    _, reason = normalize_trade({k: v for k, v in MATCH.items() if k != missing})
    assert reason is not None


def test_not_a_dict_is_a_failure_not_a_crash():
    out, reason = normalize_trade(["match"])  # type: ignore[arg-type]
    assert out == ["match"] and reason is not None


def test_every_valid_event_serializes():
    """Integers are bounded to the schema's int64, which orjson writes and P2 decodes typed."""
    big = {**MATCH, "trade_id": 2**63 - 1, "sequence": -(2**63)}
    event, reason = normalize_trade(big)
    assert reason is None
    assert orjson.loads(orjson.dumps(event))["trade_id"] == 2**63 - 1
    assert normalize_trade({**MATCH, "trade_id": 2**63})[1] is not None


def test_trade_is_frozen():
    trade = Trade.model_validate(MATCH)
    with pytest.raises(Exception):  # noqa: B017
        trade.price = 1.0  # type: ignore[misc]


def test_type_sets():
    assert set(TRADE_TYPES) == {"match", "ticker"}
    assert {"subscriptions", "heartbeat", "error"} <= CONTROL_TYPES
    assert "last_match" not in TRADE_TYPES
