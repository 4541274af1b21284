"""The schema: one declaration from which P1's model, P2's decoder, the drift rule and the docs come."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.models import Trade
from mercurystream.shared.schema import (
    BY_NAME,
    FIELDS,
    KNOWN_KEYS,
    REQUIRED,
    WireTrade,
    conforms,
    drift_of,
    invalid_reason,
    markdown_table,
    wire_decoder,
)

ROOT = Path(__file__).resolve().parents[2]
EVENT = {
    "type": "match",
    "product_id": "BTC-USD",
    "price": 100.5,
    "last_size": 0.25,
    "time": "2024-05-01T12:00:00.000001Z",
    "trade_id": 7,
    "ingest_ts_ms": 1_700_000_000_000,
}


def test_system_md_event_table_is_the_schema() -> None:
    assert markdown_table() in (ROOT / "SYSTEM.md").read_text()


def test_p1_model_p2_decoder_and_drift_keys_all_come_from_the_fields() -> None:
    venue = [f.name for f in FIELDS if f.origin == "venue"]
    assert list(Trade.model_fields) == venue
    assert list(WireTrade.__struct_fields__) == [f.name for f in FIELDS]
    assert set(REQUIRED) == {f.name for f in FIELDS if f.required} and set(BY_NAME) == KNOWN_KEYS
    assert {n for n, info in Trade.model_fields.items() if info.is_required()} == set(REQUIRED) & set(venue)


_value = (
    st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=3)
    | st.sampled_from(["match", "ticker", "sell", "", "x" * 65, "2024-13-01T00:00:00Z"])
    | st.booleans()
    | st.none()
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in FIELDS]), _value, max_size=3))
def test_the_typed_decoder_takes_exactly_what_every_rule_but_the_time_accepts(changes: dict) -> None:
    event = {**EVENT, **changes}
    payload = json.dumps(event).encode()
    try:
        decoded = wire_decoder().decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError):
        decoded = None
    ok = all(
        conforms(f, event[f.name])
        if f.name in event and (f.required or not f.nullable or event[f.name] is not None)
        else not f.required
        for f in FIELDS
        if not f.time
    ) and isinstance(event.get("time"), str)
    assert (decoded is not None) == ok
    if decoded is not None:
        assert drift_of(event) is None
        assert invalid_reason(event) in (None, "invalid_time")


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"price": 0}, "invalid_price"), ({"product_id": ""}, "missing_product"), ({"time": "soon"}, "invalid_time")],
)
def test_a_value_no_trade_has_is_invalid_not_drift(change: dict, reason: str) -> None:
    event = {**EVENT, **change}
    assert drift_of(event) is None and invalid_reason(event) == reason


def test_an_unexpected_key_with_a_lone_surrogate_is_listed_escaped_so_the_drift_sample_can_be_written() -> None:
    """A JSON ``\\ud800`` escape in a key: the drift detail listed it raw, and writing the drift sample raised."""
    event = json.loads(b'{"type":"match","\\ud800key":1,"k\\udcff":2,"fine":3}')
    detail = drift_of(event)
    assert detail["unexpected"] == ["\\ud800key", "fine", "k\\udcff"]
    orjson.dumps(detail)
