"""The column helpers every rule shares, and the one definition of P1→P2 latency."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.event import (
    group_positions,
    latency_ms,
    pick,
    recv_suffix,
    stamped_lines,
    stamped_lines_reference,
)


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


# --- recorded lines: the C splice beside its reference ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=6).map(lambda b: b.replace(b"\x00", b"}")), max_size=5),
    st.integers(0, 2**62),
)
def test_stamped_lines_are_the_references_whichever_way_they_are_made(payloads: list[bytes], recv_us: int) -> None:
    """Held equal: the kernel's lines and the reference's, or ``None`` from both (a payload not ending in ``}``)."""
    suffix = recv_suffix(recv_us)
    expected = stamped_lines_reference(payloads, suffix)
    assert stamped_lines(payloads, suffix) == expected
    assert stamped_lines(tuple(payloads), suffix) == expected
    if expected is not None:
        assert expected == [p[:-1] + suffix for p in payloads]


def test_stamped_lines_splice_before_the_closing_brace_and_leave_the_rest_to_the_caller() -> None:
    suffix = recv_suffix(1_764_940_000_123_456)
    assert stamped_lines([b'{"a":1}'], suffix) == [b'{"a":1,"recv_ts_ms":1764940000123,"recv_ts_us":1764940000123456}']
    for odd in ([b'{"a":1} '], [b'{"a":1}', b""], [b'{"a":1}', b"x"]):
        assert stamped_lines(odd, suffix) is None, odd
    assert stamped_lines([], suffix) == []
