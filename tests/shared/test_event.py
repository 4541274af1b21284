"""EventColumns: the required fields as columns, typed exactly as the per-event checks type them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mercurystream.shared.event import REQUIRED_FIELDS, EventColumns, group_positions, latency_ms, pick

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
