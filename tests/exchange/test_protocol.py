import orjson
import pytest

from mercurystream.exchange.market import ERROR, HEARTBEAT, MATCH, N_CHANNELS, SUBSCRIPTIONS, TICKER
from mercurystream.exchange.protocol import Session

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")


def req(**kw) -> bytes:
    return orjson.dumps(kw)


def channels(reply) -> dict[str, list[str]]:
    body = orjson.loads(reply.text)
    assert body["type"] == "subscriptions"
    return {c["name"]: c["product_ids"] for c in body["channels"]}


def key(product: str, channel: int) -> int:
    return PRODUCTS.index(product) * N_CHANNELS + channel


def test_subscribe_with_channel_names_and_top_level_products():
    s = Session(PRODUCTS)
    assert not s.subscribed and not s.active
    r = s.handle(req(type="subscribe", product_ids=["BTC-USD", "ETH-USD"], channels=["matches", "heartbeat"]))
    assert r.kind == SUBSCRIPTIONS and r.error is None
    assert channels(r) == {"matches": ["BTC-USD", "ETH-USD"], "heartbeat": ["BTC-USD", "ETH-USD"]}
    assert r.new_matches == (0, 1)
    assert s.subscribed and s.active and not s.wants_ticker and not s.everything
    assert s.mask[key("ETH-USD", HEARTBEAT)] and not s.mask[key("SOL-USD", MATCH)]


def test_channel_objects_and_later_subscribes_add():
    s = Session(PRODUCTS)
    s.handle(req(type="subscribe", product_ids=["BTC-USD"], channels=["matches"]))
    r = s.handle(
        req(
            type="subscribe",
            product_ids=["BTC-USD"],
            channels=["matches", {"name": "ticker", "product_ids": ["SOL-USD"]}, {"name": "heartbeat"}],
        )
    )
    assert channels(r) == {"matches": ["BTC-USD"], "ticker": ["SOL-USD"], "heartbeat": ["BTC-USD"]}
    assert r.new_matches == ()
    assert s.wants_ticker and s.mask[key("SOL-USD", TICKER)]


def test_unsubscribe_products_or_a_whole_channel():
    s = Session(PRODUCTS)
    s.handle(req(type="subscribe", product_ids=list(PRODUCTS), channels=["matches", "ticker", "heartbeat"]))
    assert s.everything
    r = s.handle(req(type="unsubscribe", product_ids=["ETH-USD"], channels=["matches"]))
    assert channels(r)["matches"] == ["BTC-USD", "SOL-USD"]
    r = s.handle(req(type="unsubscribe", channels=["ticker", "heartbeat"]))
    assert channels(r) == {"matches": ["BTC-USD", "SOL-USD"]}
    r = s.handle(req(type="unsubscribe", channels=["matches"]))
    assert channels(r) == {}
    assert s.subscribed and not s.active


@pytest.mark.parametrize(
    ("raw", "message", "reason", "error"),
    [
        (b"not json", "Malformed JSON", None, "malformed_json"),
        (b"[1, 2]", "Malformed JSON", "expected a JSON object", "malformed_json"),
        (req(product_ids=["BTC-USD"], channels=["matches"]), "Failed to subscribe", None, "bad_type"),
        (req(type="hello"), "Failed to subscribe", None, "bad_type"),
        (req(type="subscribe", product_ids=["BTC-USD"]), "Failed to subscribe", "No channels provided", "no_channels"),
        (
            req(type="subscribe", product_ids=["BTC-USD"], channels=["matches", "level2"]),
            "Failed to subscribe",
            "level2 is not a valid channel",
            "unknown_channel",
        ),
        (
            req(type="subscribe", product_ids=["BTC-USD", "DOGE-EUR"], channels=["matches"]),
            "Failed to subscribe",
            "DOGE-EUR is not a valid product",
            "unknown_product",
        ),
        (
            req(type="subscribe", channels=["heartbeat"]),
            "Failed to subscribe",
            "You need to specify at least one product ID for channel heartbeat",
            "no_products",
        ),
        (
            req(type="subscribe", product_ids="BTC-USD", channels=["matches"]),
            "Failed to subscribe",
            None,
            "bad_products",
        ),
        (req(type="subscribe", product_ids=["BTC-USD"], channels=[42]), "Failed to subscribe", None, "bad_channels"),
        (req(type="unsubscribe", channels=["nope"]), "Failed to unsubscribe", "nope is not a valid channel", None),
    ],
)
def test_bad_requests_get_an_error_and_change_nothing(raw, message, reason, error):
    s = Session(PRODUCTS)
    s.handle(req(type="subscribe", product_ids=["SOL-USD"], channels=["matches"]))
    before = bytes(s.mask)
    r = s.handle(raw)
    body = orjson.loads(r.text)
    assert r.kind == ERROR
    assert body["type"] == "error" and body["message"] == message
    assert isinstance(body["reason"], str) and body["reason"]
    if reason is not None:
        assert body["reason"] == reason
    if error is not None:
        assert r.error == error
    assert bytes(s.mask) == before


def test_a_failed_subscribe_does_not_count_as_subscribed():
    s = Session(PRODUCTS)
    s.handle(req(type="subscribe", product_ids=["XXX-USD"], channels=["matches"]))
    assert not s.subscribed


def test_echoed_names_are_truncated():
    s = Session(PRODUCTS)
    r = s.handle(req(type="subscribe", product_ids=["A" * 10_000], channels=["matches"]))
    assert len(r.text) < 200
