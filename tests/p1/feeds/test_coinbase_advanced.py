"""The Advanced Trade adapter, sans I/O: recorded messages in, Exchange-dialect trades and counts out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from mercurystream.p1.feeds import FEED_APIS, make_adapter
from mercurystream.p1.feeds.coinbase_advanced import AdvancedTradeProtocol, JwtSigner, trade_id_int
from mercurystream.p1.pipeline import IngestPipeline

FIXTURES = Path(__file__).parents[2] / "fixtures" / "coinbase_advanced"


def recorded(name: str) -> list[bytes]:
    return [line for line in (FIXTURES / name).read_bytes().splitlines() if line.strip()]


def envelope(channel: str, seq: int, events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {
            "channel": channel,
            "client_id": "",
            "timestamp": "2026-09-30T01:41:27.834Z",
            "sequence_num": seq,
            "events": events,
        }
    )


def trade(tid: str, pid: str = "ETH-USD", side: str = "BUY") -> dict[str, str]:
    return {
        "product_id": pid,
        "trade_id": tid,
        "price": "2668.35",
        "size": "0.5",
        "time": "2026-09-30T01:41:25Z",
        "side": side,
    }


def test_make_adapter_knows_both_apis():
    assert FEED_APIS == ("exchange", "advanced-trade")
    assert isinstance(make_adapter("advanced-trade", ["BTC-USD"]), AdvancedTradeProtocol)
    with pytest.raises(ValueError, match="unknown feed API"):
        make_adapter("kraken", ["BTC-USD"])


def test_recorded_update_becomes_exchange_matches_with_the_taker_side_kept():
    proto = AdvancedTradeProtocol(["ETH-USD"])
    trades, counts = proto.handle(recorded("market_trades_eth_usd_2026-09-30.jsonl"))
    assert counts == {"market_trades": 1}
    assert trades == [
        {
            "type": "match",
            "product_id": "ETH-USD",
            "price": "2668.35",
            "size": "0.03710506",
            "time": "2026-09-30T01:41:25.375232Z",
            "trade_id": 846149798,
            "side": "buy",
        },
        {
            "type": "match",
            "product_id": "ETH-USD",
            "price": "2668.36",
            "size": "1",
            "time": "2026-09-30T01:41:25.375232Z",
            "trade_id": 846149799,
            "side": "sell",
        },
    ]
    events, invalid = IngestPipeline(feed="advanced-trade").process(trades, 1_000_000)
    assert invalid == 0
    got = [orjson.loads(e) for e in events]
    # Advanced Trade's side is the taker's: SELL at the bid (2668.35), BUY at the ask a tick above.
    assert [(e["trade_id"], e["side"], e["price"], e["last_size"]) for e in got] == [
        (846149798, "sell", 2668.35, 0.03710506),
        (846149799, "buy", 2668.36, 1.0),
    ]
    assert {(e["venue"], e["feed"], e["type"]) for e in got} == {("coinbase", "advanced-trade", "match")}
    assert "sequence" not in got[0], "sequence_num numbers the connection's messages, not the product's trades"


def test_snapshot_trades_are_counted_until_they_are_newer_than_what_was_forwarded():
    proto = AdvancedTradeProtocol(["BTC-USD", "ETH-USD"])
    trades, counts = proto.handle(recorded("market_trades_btc_usd_2025-10-27.jsonl"))
    assert trades == [] and counts == {"market_trades": 1, "snapshot_trade": 1}
    assert proto.last_trade_id == {"BTC-USD": 892262231}
    # A reconnect: the snapshot (newest first) repeats 892262231 and brings two trades made meanwhile.
    proto.on_connect()
    snap = envelope(
        "market_trades",
        0,
        [
            {
                "type": "snapshot",
                "trades": [trade("892262233", "BTC-USD"), trade("892262232", "BTC-USD"), trade("892262231", "BTC-USD")],
            }
        ],
    )
    trades, counts = proto.handle([snap])
    assert [t["trade_id"] for t in trades] == [892262232, 892262233], "only what is new, in trade-id order"
    assert counts == {"market_trades": 1, "snapshot_trade": 1}


def test_a_first_snapshot_is_history_however_many_trades_it_holds():
    proto = AdvancedTradeProtocol(["BTC-USD"])
    ids = [str(i) for i in range(892262250, 892262200, -1)]
    snap = envelope("market_trades", 0, [{"type": "snapshot", "trades": [trade(i, "BTC-USD") for i in ids]}])
    trades, counts = proto.handle([snap])
    assert trades == [] and counts == {"market_trades": 1, "snapshot_trade": 50}
    assert proto.last_trade_id == {"BTC-USD": 892262250}


def test_an_update_listed_newest_first_goes_out_in_trade_id_order():
    proto = AdvancedTradeProtocol(["ETH-USD"])
    trades, _ = proto.handle(
        [envelope("market_trades", 0, [{"type": "update", "trades": [trade("12"), trade("11"), trade("10")]}])]
    )
    assert [t["trade_id"] for t in trades] == [10, 11, 12]


def test_a_non_numeric_trade_id_is_counted_and_forwarded_for_the_pipeline_to_flag():
    proto = AdvancedTradeProtocol(["ETH-USD"])
    trades, counts = proto.handle(
        [envelope("market_trades", 0, [{"type": "update", "trades": [trade("abc"), trade("7")]}])]
    )
    assert counts == {"market_trades": 1, "non_numeric_trade_id": 1}
    assert [t["trade_id"] for t in trades] == [7, "abc"]
    events, invalid = IngestPipeline(feed="advanced-trade").process(trades, 1_000_000)
    assert invalid == 1 and orjson.loads(events[1])["trade_id"] == "abc"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("846149798", 846149798), ("000000000", 0), ("9223372036854775807", (1 << 63) - 1)],
)
def test_trade_id_int_maps_digit_strings(raw, expected):
    assert trade_id_int(raw) == expected


@pytest.mark.parametrize("raw", ["", "-1", "1.5", "9223372036854775808", "99999999999999999999", "١٢", 12, None])
def test_trade_id_int_refuses_anything_else(raw):
    assert trade_id_int(raw) is None


def test_recorded_heartbeat_subscriptions_and_error_are_counted():
    proto = AdvancedTradeProtocol(["ETH-USD"])
    raws = recorded("session_2026-09-30.jsonl") + recorded("docs_examples.jsonl")
    trades, counts = proto.handle(raws)
    assert trades == []
    assert counts == {"subscriptions": 1, "heartbeats": 1, "market_trades": 1, "snapshot_trade": 1, "error": 1}
    assert not proto.subscribed, "a subscriptions message without market_trades confirms nothing here"
    assert proto.sequence_gaps == 1, "sequence_num 1 then 3: one message missing"


def test_malformed_and_unknown_messages_are_counted_with_bounded_labels():
    proto = AdvancedTradeProtocol(["ETH-USD"], max_type_labels=1)
    raws = [
        b"{nope",
        b"[1]",
        b'{"type":"x"}',
        envelope("l2_data", 0, []),
        envelope("candles", 1, []),
        envelope("ticker", 2, []),
    ]
    trades, counts = proto.handle(raws)
    assert trades == []
    assert counts == {"malformed": 3, "l2_data": 1, "other": 2}
    bad_events = [envelope("market_trades", 3, "x"), envelope("market_trades", 4, [{"type": "update"}, 5])]  # type: ignore[arg-type]
    trades, counts = proto.handle(bad_events)
    assert trades == [] and counts == {"market_trades": 2}


def test_sequence_num_skips_are_counted_per_connection():
    proto = AdvancedTradeProtocol(["ETH-USD"])
    proto.handle([envelope("heartbeats", s, []) for s in (0, 1, 4, 5, 3)])
    assert proto.sequence_gaps == 2
    proto.on_connect()
    proto.handle([envelope("heartbeats", s, []) for s in (0, 1)])
    assert proto.sequence_gaps == 2, "a new connection starts its own count at 0"


def subscriptions(products: list[str]) -> bytes:
    return envelope("subscriptions", 0, [{"subscriptions": {"market_trades": products, "heartbeats": ["heartbeats"]}}])


ERROR = b'{"type":"error","message":"failure to subscribe"}'


def test_subscribe_requests_heartbeats_then_market_trades_unauthenticated():
    proto = AdvancedTradeProtocol(["BTC-USD", "ETH-USD"])
    requests = [orjson.loads(r) for r in proto.subscribe_requests()]
    assert requests == [
        {"type": "subscribe", "channel": "heartbeats"},
        {"type": "subscribe", "channel": "market_trades", "product_ids": ["BTC-USD", "ETH-USD"]},
    ]
    proto.handle([subscriptions(["BTC-USD", "ETH-USD"])])
    assert proto.subscribed and proto.subscribed_products == {"BTC-USD", "ETH-USD"}


def test_a_rejected_subscribe_is_retried_per_product_and_the_unconfirmed_ones_are_invalid():
    proto = AdvancedTradeProtocol(["BTC-USD", "XYZ-USD", "ETH-USD"])
    proto.subscribe_requests()
    proto.handle([subscriptions([]), ERROR])
    assert [orjson.loads(r)["product_ids"] for r in proto.outbox] == [["BTC-USD"], ["XYZ-USD"], ["ETH-USD"]]
    proto.outbox.clear()
    proto.handle([subscriptions(["BTC-USD"]), ERROR])
    assert proto.invalid == {}, "undecided until every reply is in"
    proto.handle([subscriptions(["BTC-USD", "ETH-USD"])])
    assert list(proto.invalid) == ["XYZ-USD"]
    assert proto.subscribed_products == {"BTC-USD", "ETH-USD"} and proto.fatal is None
    requests = [orjson.loads(r).get("product_ids") for r in proto.subscribe_requests()]
    assert requests == [None, ["BTC-USD", "ETH-USD"]], "the next connection subscribes the valid ones only"


def test_no_valid_product_left_is_fatal():
    proto = AdvancedTradeProtocol(["XYZ-USD"])
    proto.subscribe_requests()
    proto.handle([subscriptions([]), ERROR])
    assert proto.invalid.keys() == {"XYZ-USD"} and proto.fatal.startswith("no valid product to subscribe: XYZ-USD")


def test_an_error_with_nothing_pending_is_only_logged():
    proto = AdvancedTradeProtocol(["BTC-USD"])
    proto.subscribe_requests()
    proto.handle([subscriptions(["BTC-USD"]), subscriptions(["BTC-USD"]), ERROR])
    assert proto.invalid == {} and proto.fatal is None and proto.outbox == []


def pem_key() -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode(), key


def test_jwt_signer_follows_coinbases_websocket_jwt():
    pem, key = pem_key()
    signer = JwtSigner("organizations/o/apiKeys/k", SecretStr(pem.replace("\n", "\\n")))
    token = signer.token(now_s=1_800_000_000)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == "organizations/o/apiKeys/k" and len(header["nonce"]) == 32
    claims = jwt.decode(
        token, key.public_key(), algorithms=["ES256"], options={"verify_nbf": False, "verify_exp": False}
    )
    assert claims == {"iss": "cdp", "sub": "organizations/o/apiKeys/k", "nbf": 1_800_000_000, "exp": 1_800_000_120}
    assert signer.token() != signer.token(), "a fresh nonce each time"
    assert pem not in repr(signer)


def test_each_subscribe_carries_its_own_jwt():
    pem, key = pem_key()
    proto = AdvancedTradeProtocol(["BTC-USD"], signer=JwtSigner("k", SecretStr(pem)))
    tokens = [orjson.loads(r)["jwt"] for r in proto.subscribe_requests()]
    assert len(set(tokens)) == 2
    for t in tokens:
        jwt.decode(t, key.public_key(), algorithms=["ES256"])


@pytest.mark.parametrize("pem", ["not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"])
def test_a_bad_private_key_is_refused_without_quoting_it(pem):
    with pytest.raises(ValueError) as info:
        JwtSigner("k", SecretStr(pem))
    assert pem not in str(info.value)


def test_a_key_on_another_curve_is_refused():
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="P-256"):
        JwtSigner("k", SecretStr(pem.decode()))
