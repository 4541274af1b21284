"""EventColumns: the required fields as columns, typed exactly as the per-event checks type them."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mercurystream.shared.event import (
    INGEST_US,
    REQUIRED_FIELDS,
    EventColumns,
    LazyEvents,
    decode_columns,
    group_positions,
    latency_ms,
    pick,
)

T0 = "2024-05-01T12:00:00.000001Z"


def event(tid: int = 1, product: str = "BTC-USD", **changes: object) -> dict:
    ev = {
        "type": "match",
        "product_id": product,
        "price": 100.5,
        "last_size": 0.25,
        "time": T0,
        "trade_id": tid,
        "ingest_ts_ms": 1_700_000_000_000,
        "ingest_ts_us": 1_700_000_000_000_123,
    }
    ev.update(changes)
    return ev


def columns(events: list) -> EventColumns:
    return EventColumns.of(SimpleNamespace(events=events))


def test_well_typed_events_become_columns_in_order() -> None:
    cols = columns([event(1), event(2, "ETH-USD", price=7, last_size=0)])
    assert cols.typed and cols.fixed_times
    assert len(cols) == 2
    assert cols.product_ids == ("BTC-USD", "ETH-USD")
    assert cols.trade_ids == (1, 2)
    assert cols.prices == (100.5, 7)
    assert cols.sizes == (0.25, 0)
    assert cols.times == (T0, T0)
    assert cols.types == ("match", "match")
    assert cols.ingest_ms == (1_700_000_000_000,) * 2


@pytest.mark.parametrize(
    "change",
    [
        {"price": True},
        {"price": "1.5"},
        {"last_size": None},
        {"trade_id": 1.0},
        {"trade_id": False},
        {"product_id": 7},
        {"time": 5},
        {"type": None},
        {"ingest_ts_ms": 1.5},
    ],
)
def test_one_mistyped_field_makes_the_batch_untyped(change: dict) -> None:
    cols = columns([event(1), event(2, **change)])
    assert not cols.typed and not cols.fixed_times
    assert len(cols) == 0


@pytest.mark.parametrize("key", REQUIRED_FIELDS)
def test_a_missing_field_makes_the_batch_untyped(key: str) -> None:
    bad = event(2)
    del bad[key]
    assert not columns([event(1), bad]).typed


def test_non_dict_events_make_the_batch_untyped() -> None:
    assert not columns([event(1), "not a dict"]).typed
    assert not columns([event(1), None]).typed


def test_an_empty_batch_is_typed_and_empty() -> None:
    cols = columns([])
    assert cols.typed and len(cols) == 0 and cols.groups() == {}


def test_fixed_times_needs_every_time_in_the_fixed_form() -> None:
    assert not columns([event(1), event(2, time="2024-05-01T12:00:00Z")]).fixed_times
    assert columns([event(1), event(2, time="2024-05-01T12:00:00Z")]).typed


def test_groups_and_ids_by_product_keep_arrival_order() -> None:
    cols = columns([event(5), event(9, "ETH-USD"), event(6), event(8, "ETH-USD"), event(4)])
    assert cols.groups() == {"BTC-USD": [0, 2, 4], "ETH-USD": [1, 3]}
    assert list(cols.groups()) == ["BTC-USD", "ETH-USD"]
    assert cols.ids_by_product() == {"BTC-USD": ((5, 6, 4), False), "ETH-USD": ((9, 8), False)}
    assert columns([event(1), event(3)]).ids_by_product() == {"BTC-USD": ((1, 3), True)}
    assert columns([event(1), event(1)]).ids_by_product()["BTC-USD"][1] is False


def test_tail_is_the_columns_of_the_tail() -> None:
    events = [event(1, time="soon"), event(2, "ETH-USD"), event(3)]
    full = columns(events)
    assert full.typed and not full.fixed_times
    tail = full.tail(1)
    assert tail.typed and tail.fixed_times
    assert tail.product_ids == ("ETH-USD", "BTC-USD") and tail.groups() == {"ETH-USD": [0], "BTC-USD": [1]}
    # Untyped stays untyped (the per-event paths are always exact).
    assert not columns([event(1, time=5), event(2)]).tail(1).typed


@given(st.lists(st.sampled_from(["A", "B", "C", "D"]), max_size=30))
def test_group_positions_and_pick_partition_the_column(keys: list[str]) -> None:
    groups = group_positions(keys)
    assert list(groups) == list(dict.fromkeys(keys))
    for key, idx in groups.items():
        assert list(pick(keys, idx)) == [key] * len(idx)
        assert idx == sorted(idx)
    assert sorted(i for idx in groups.values() for i in idx) == list(range(len(keys)))


def test_pick_returns_the_column_itself_when_it_is_all_of_it() -> None:
    col = (1, 2, 3)
    assert pick(col, [0, 1, 2]) is col
    assert pick(col, [1]) == (2,)
    assert pick(col, [0, 2]) == (1, 3)


def test_latency_prefers_microseconds() -> None:
    assert latency_ms({"recv_ts_us": 2_500, "ingest_ts_us": 1_000, "recv_ts_ms": 9, "ingest_ts_ms": 1}) == 1.5
    assert latency_ms({"recv_ts_ms": 9, "ingest_ts_ms": 1}) == 8.0
    assert latency_ms({"recv_ts_ms": 9}) is None


# ---------------------------------------------------------------- typed decoding at the socket

COLUMN_NAMES = ("types", "product_ids", "prices", "sizes", "times", "trade_ids", "ingest_ms")


def column_tuples(cols: EventColumns) -> tuple:
    return tuple(tuple(getattr(cols, name)) for name in COLUMN_NAMES)


def test_p1_events_decode_to_the_columns_the_dicts_give() -> None:
    events = [
        event(1, sequence=5, side="buy"),
        event(2, "ETH-USD", type="ticker", price=7, last_size=0, best_bid=6.5, best_ask=7),
        event(3, sequence=None, side=None),
    ]
    cols, ingest = decode_columns([orjson.dumps(e) for e in events])
    assert cols.typed and cols.fixed_times
    assert column_tuples(cols) == column_tuples(columns(events))
    assert list(ingest) == [e[INGEST_US] for e in events]
    assert type(cols.prices[1]) is int  # as orjson parses it


@pytest.mark.parametrize(
    "payload",
    [
        orjson.dumps(event(1, extra=1)),  # a key P1 never writes: drift, or a replay's stamps
        orjson.dumps(event(1, recv_ts_ms=1, recv_ts_us=1000)),
        orjson.dumps({k: v for k, v in event(1).items() if k != "time"}),
        orjson.dumps(event(1, trade_id=True)),
        orjson.dumps(event(1, trade_id=1.0)),
        orjson.dumps(event(1, price="1.5")),
        orjson.dumps(event(1, side=1)),
        orjson.dumps(event(1, sequence=2**63)),  # orjson's int, msgspec's int64 bound: the generic path decides
        b'{"type":"match","trade_id":123456789012345678901234567890}',
        b"[1]",
        b"{}",
        b"",
        b"{",
    ],
)
def test_anything_but_p1_s_exact_shape_is_left_to_the_generic_path(payload: bytes) -> None:
    good = orjson.dumps(event(2))
    assert decode_columns([good, payload]) is None


def test_a_repeated_key_takes_its_last_value_as_orjson_does() -> None:
    payload = orjson.dumps(event(1))[:-1] + b',"trade_id":2}'
    cols, _ = decode_columns([payload])
    assert cols.trade_ids == (orjson.loads(payload)["trade_id"],) == (2,)


def test_no_payloads_decode_to_nothing() -> None:
    assert decode_columns([]) is None


_TEXT_CHARS = 'aZ09-:.T "\\\x00\x7f\u00e9\u20ac\U0001f600'
"""ASCII, JSON escapes, a control character and 2-, 3- and 4-byte UTF-8: an explicit alphabet, so
drawing a string never waits for Hypothesis to build its Unicode tables on first use."""


_json_value = (
    st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.sampled_from(_TEXT_CHARS), max_size=4)
    | st.booleans()
    | st.none()
)


@given(
    changes=st.dictionaries(
        st.sampled_from([*REQUIRED_FIELDS, INGEST_US, "sequence", "side", "best_bid", "best_ask", "extra"]),
        _json_value,
        max_size=3,
    ),
    drop=st.sets(st.sampled_from([*REQUIRED_FIELDS, INGEST_US]), max_size=1),
)
def test_typed_decoding_agrees_with_the_dict_columns_whenever_it_decodes(changes: dict, drop: set) -> None:
    ev = {k: v for k, v in event(7, **changes).items() if k not in drop}
    payload = orjson.dumps(ev)
    decoded = decode_columns([payload])
    if decoded is None:
        return
    cols, ingest = decoded
    expected = columns([orjson.loads(payload)])
    assert expected.typed
    assert column_tuples(cols) == column_tuples(expected)
    assert [type(v) for col in column_tuples(cols) for v in col] == [
        type(v) for col in column_tuples(expected) for v in col
    ]
    assert list(ingest) == [ev[INGEST_US]]


def test_lazy_events_parse_once_on_first_use_and_slice_without_parsing() -> None:
    payloads = [orjson.dumps(event(i)) for i in range(4)]
    lazy = LazyEvents(payloads)
    assert len(lazy) == 4
    tail = lazy[1:]
    assert isinstance(tail, LazyEvents) and lazy._events is None
    assert list(tail) == [event(i) for i in range(1, 4)]
    assert lazy._events is None
    assert lazy[0] == event(0) and lazy[0] is lazy[0]
    assert lazy[2:] == [event(2), event(3)]
