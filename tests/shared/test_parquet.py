"""Lines to typed Parquet rows and back: the exact path and the fast path agree, nothing is lost silently."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.parquet import (
    COLUMNS,
    DICTIONARY_COLUMNS,
    EXTRA,
    REQUIRED,
    SCHEMA,
    TIME_TS,
    ParquetSink,
    RowEncoder,
    events_of,
    is_parquet,
)
from mercurystream.shared.schema import REQUIRED as REQUIRED_FIELDS


def event(i: int, **changes: object) -> dict:
    e = {
        "type": "match",
        "product_id": ("BTC-USD", "ETH-USD")[i % 2],
        "price": 60000.5 + i,
        "last_size": 0.25,
        "time": f"2026-12-05T13:14:{i % 60:02d}.{i:06d}Z",
        "trade_id": 1000 + i,
        "sequence": 9000 + i,
        "side": "buy",
        "ingest_ts_ms": 1_764_940_000_000 + i,
        "ingest_ts_us": 1_764_940_000_000_000 + i * 1000,
        "recv_ts_ms": 1_764_940_000_001 + i,
        "recv_ts_us": 1_764_940_000_001_000 + i * 1000,
    }
    e.update(changes)
    return {k: v for k, v in e.items() if v is not ...}


def lines_of(events: list[dict]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def test_the_required_columns_are_the_events_required_fields() -> None:
    assert set(REQUIRED_FIELDS) == REQUIRED
    assert all(not SCHEMA.field(n).nullable for n in REQUIRED)
    assert [f.name for f in SCHEMA] == [n for n, _ in COLUMNS] + [TIME_TS, EXTRA]


def test_common_lines_take_the_fast_path_and_round_trip() -> None:
    events = [event(i) for i in range(100)]
    encoder = RowEncoder()
    batch, bad = encoder.encode(lines_of(events))
    assert bad == [] and batch.num_rows == 100 and encoder.rows == 100
    assert batch.column(EXTRA).null_count == 100
    assert events_of(batch) == events
    assert batch.column(TIME_TS)[3].as_py().isoformat() == "2026-12-05T13:14:03.000003+00:00"


def test_extra_keys_nulls_and_misfits_are_kept_in_extra_and_restored() -> None:
    events = [
        event(0, maker_order_id="abc", nested={"a": [1, 2]}),
        event(1, sequence=None),
        event(2, side=7, best_bid="oops"),
        event(3, ticker_only=True, best_bid=1.5, best_ask=2),
        event(4, ingest_ts_us=..., recv_ts_ms=..., recv_ts_us=...),
    ]
    batch, bad = RowEncoder().encode(lines_of(events))
    assert bad == []
    restored = events_of(batch)
    assert restored == events
    assert orjson.loads(batch.column(EXTRA)[1].as_py()) == {"sequence": None}
    assert batch.column("sequence")[1].as_py() is None
    assert batch.column("best_ask")[3].as_py() == 2.0  # one kind of number: an int is stored as a float


def test_an_integer_a_float_column_cannot_hold_exactly_goes_to_extra() -> None:
    big = (1 << 53) + 1
    batch, bad = RowEncoder().encode(lines_of([event(0, best_bid=big), event(1, price=big)]))
    assert bad == [(1, "wrong_type")]
    assert events_of(batch) == [event(0, best_bid=big)]


def test_bad_lines_are_rejected_by_reason_with_their_index() -> None:
    lines = [
        *lines_of([event(0)]),
        b"{not json",
        b"[1, 2]",
        b"",
        orjson.dumps(event(1, price=...)),
        orjson.dumps(event(2, price="1.0")),
        orjson.dumps(event(3, trade_id=True)),
        orjson.dumps(event(4, trade_id=1 << 63)),
        orjson.dumps(event(5)),
    ]
    encoder = RowEncoder()
    batch, bad = encoder.encode(lines)
    assert bad == [
        (1, "invalid_json"),
        (2, "not_object"),
        (4, "missing_field"),
        (5, "wrong_type"),
        (6, "wrong_type"),
        (7, "wrong_type"),
    ]
    assert [e["trade_id"] for e in events_of(batch)] == [1000, 1005]
    assert encoder.rejected == {"invalid_json": 1, "not_object": 1, "missing_field": 1, "wrong_type": 3, "too_deep": 0}
    assert encoder.rejected_total == 6


@pytest.mark.parametrize("depth", [254, 300, 900])
def test_extra_keys_nested_deeper_than_orjson_writes_lose_their_line_only(depth: int) -> None:
    """orjson reads 1,024 levels but writes 254: one such line made the whole batch fail to encode."""
    deep = orjson.dumps(event(1))[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    encoder = RowEncoder()
    batch, bad = encoder.encode([orjson.dumps(event(0)), deep, orjson.dumps(event(2))])
    too_deep = depth + 1 > 254
    assert bad == ([(1, "too_deep")] if too_deep else [])
    assert [e["trade_id"] for e in events_of(batch)] == ([1000, 1002] if too_deep else [1000, 1001, 1002])
    assert encoder.rejected["too_deep"] == too_deep


def test_an_unparsable_time_is_a_null_timestamp_not_a_lost_row() -> None:
    batch, bad = RowEncoder().encode(lines_of([event(0), event(1, time="yesterday")]))
    assert bad == []
    assert batch.column(TIME_TS).to_pylist()[1] is None
    assert batch.column("time").to_pylist()[1] == "yesterday"


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from([n for n, _ in COLUMNS] + ["x", "null"]), _values), max_size=6))
def test_the_fast_path_and_the_exact_path_build_the_same_rows(changes: list[dict]) -> None:
    lines = lines_of([event(i, **c) for i, c in enumerate(changes)])
    fast = RowEncoder._fast(lines)
    exact, extra, bad = RowEncoder._exact(lines)
    if fast is not None:
        assert bad == [] and extra == [None] * len(lines)
        assert pa.Table.from_arrays(fast, names=[n for n, _ in COLUMNS]).equals(
            pa.Table.from_arrays(exact, names=[n for n, _ in COLUMNS])
        )
    batch, bad = RowEncoder().encode(lines)
    kept = [orjson.loads(line) for i, line in enumerate(lines) if i not in {j for j, _ in bad}]
    assert events_of(batch) == kept
    joined = RowEncoder().encode_joined(b"".join(lines), len(lines))
    assert (joined is not None) == (fast is not None)
    if joined is not None:
        assert joined.equals(batch)


@pytest.mark.parametrize(
    ("lines", "n"),
    [
        ([b'{"a":1}'], 1),
        (lines_of([event(0), event(1)]), 3),
        (lines_of([event(0), event(1, side=None)]), 2),
        (lines_of([event(0), event(1, x=1)]), 2),
        ([], 0),
    ],
    ids=["not-a-trade", "count-differs", "null", "unknown-key", "empty"],
)
def test_a_joined_message_declines_unless_every_line_is_common(lines: list[bytes], n: int) -> None:
    encoder = RowEncoder()
    assert encoder.encode_joined(b"".join(lines), n) is None
    assert encoder.rows == 0


def test_labels_are_dictionary_encoded_and_times_and_ids_are_not(tmp_path: Path) -> None:
    assert set(DICTIONARY_COLUMNS) == {"type", "product_id", "side", "venue", "feed"}
    sink = ParquetSink(tmp_path / "x.parquet")
    sink.append(RowEncoder().encode(lines_of([event(i) for i in range(1000)]))[0])
    sink.close()
    group = pq.ParquetFile(tmp_path / "x.parquet").metadata.row_group(0)
    dictionary = {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if group.column(i).dictionary_page_offset is not None
    }
    assert dictionary == set(DICTIONARY_COLUMNS)


def test_a_sink_writes_a_part_file_and_renames_it_on_close(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    sink = ParquetSink(path, row_group_rows=10)
    batch, _ = RowEncoder().encode(lines_of([event(i) for i in range(25)]))
    sink.append(batch)
    assert not path.exists() and sink.part.exists() and sink.rows == 25
    assert sink.size > 4  # two row groups of 10 written, 5 rows still buffered
    assert sink.close() == path
    assert not sink.part.exists()
    f = pq.ParquetFile(path)
    assert f.metadata.num_rows == 25 and f.metadata.num_row_groups == 3
    assert f.schema_arrow.equals(SCHEMA)
    assert is_parquet(path)


def test_a_discarded_sink_leaves_nothing(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "x.parquet")
    sink.append(RowEncoder().encode(lines_of([event(0)]))[0])
    sink.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n", [0, 1])
def test_empty_batches_append_nothing(tmp_path: Path, n: int) -> None:
    batch, _ = RowEncoder().encode(lines_of([event(i) for i in range(n)]))
    sink = ParquetSink(tmp_path / "e.parquet")
    sink.append(batch)
    sink.close()
    assert pq.ParquetFile(tmp_path / "e.parquet").metadata.num_rows == n
