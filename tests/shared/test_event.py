"""The column helpers every rule shares, and the one definition of P1→P2 latency."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mercurystream.shared.event import group_positions, latency_ms, pick


@given(
    st.lists(st.sampled_from(["A", "B", "C", "D", None]), max_size=30)
    | st.lists(st.sampled_from([str(i) for i in range(12)]), max_size=40)
)
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
