"""Lines to typed Parquet rows and back: the exact path and the fast path agree, nothing is lost silently."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.parquet import (
    COLUMNS,
    DELTA_ENCODINGS,
    DICTIONARY_COLUMNS,
    EXTRA,
    REQUIRED,
    SCHEMA,
    TIME_TS,
    ParquetSink,
    RowEncoder,
    _rowscan,
    events_of,
    is_parquet,
    scan_columns,
    schema_problem,
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


def test_labels_are_dictionary_encoded_and_times_and_ids_delta_encoded(tmp_path: Path) -> None:
    assert set(DICTIONARY_COLUMNS) == {"type", "product_id", "side", "venue", "feed"}
    assert {
        **dict.fromkeys(
            ("trade_id", "sequence", "ingest_ts_ms", "ingest_ts_us", "recv_ts_ms", "recv_ts_us", "time_ts"),
            "DELTA_BINARY_PACKED",
        ),
        "time": "DELTA_BYTE_ARRAY",
    } == DELTA_ENCODINGS
    sink = ParquetSink(tmp_path / "x.parquet")
    sink.append(RowEncoder().encode(lines_of([event(i) for i in range(1000)]))[0])
    sink.close()
    group = pq.ParquetFile(tmp_path / "x.parquet").metadata.row_group(0)
    columns = [group.column(i) for i in range(group.num_columns)]
    dictionary = {c.path_in_schema for c in columns if c.dictionary_page_offset is not None}
    assert dictionary == set(DICTIONARY_COLUMNS)
    for c in columns:
        data = set(c.encodings) - {"RLE"}  # RLE: the validity levels every column has
        if c.path_in_schema in DELTA_ENCODINGS:
            assert data == {DELTA_ENCODINGS[c.path_in_schema]}, c.path_in_schema
        elif c.path_in_schema not in DICTIONARY_COLUMNS:
            assert data == {"PLAIN"}, c.path_in_schema


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


# --- the C scanner (shared/_rowscan.c) beside the plain decode ------------------------------------------

_NAMES = [n for n, _ in COLUMNS]


def _plain_columns(data: bytes, n: int) -> list[pa.Array] | None:
    batch = RowEncoder().encode_joined(data, n, scan=False)
    return None if batch is None else batch.columns[: len(COLUMNS)]


def assert_same_columns(scanned: list[pa.Array], plain: list[pa.Array] | None) -> None:
    """The scanner's columns equal the plain decode's, -0.0 told from 0.0."""
    assert plain is not None
    assert pa.Table.from_arrays(scanned, names=_NAMES).equals(pa.Table.from_arrays(plain, names=_NAMES))
    signs = [[math.copysign(1, v) for v in c.to_pylist() if type(v) is float] for c in scanned]
    assert signs == [[math.copysign(1, v) for v in c.to_pylist() if type(v) is float] for c in plain]


def _render(value: object, spelling: int, kind: str = "float64") -> bytes:
    """A JSON value as orjson writes it, or (numbers) spelled another valid way: exponent, trailing zeros.

    An integer gets an exponent only in a float column (in an int column that makes it a float).
    """
    text = b"%d" % value if type(value) is int else orjson.dumps(value)
    if type(value) is float and spelling == 1:
        return repr(value).encode().replace(b"e+", b"E+") if "e" in repr(value) else b"%.17e" % value
    if type(value) is float and spelling == 2 and b"e" not in text and b"." in text:
        return text + b"000"
    if type(value) is int and spelling == 1 and kind == "float64":
        return b"%de0" % value
    return text


def _plain_text(value: object) -> bool:
    return not isinstance(value, str) or all(" " <= ch <= "~" and ch not in '"\\' for ch in value)


_OF_KIND = {
    "string": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
    "float64": st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=-1e6, max_value=1e6).map(lambda v: round(v, 4)),
        st.integers(min_value=-(1 << 53), max_value=1 << 53),
        st.integers(min_value=-(1 << 54), max_value=1 << 54),
    ),
    "int64": st.one_of(
        st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.integers(min_value=-(1 << 64), max_value=1 << 64)
    ),
    "bool": st.booleans(),
}


@st.composite
def _spelled_lines(draw: st.DrawFn) -> tuple[bytes, int, bool]:
    """Lines of mostly well-typed events spelled as any producer might: key order, spacing, number forms.

    Also returns whether every string in them is plain printable ASCII. Now and then a value of another
    kind, a null or an unknown key.
    """
    lines = []
    plain_text = True
    for _ in range(draw(st.integers(0, 4))):
        e = {}
        for name, kind in COLUMNS:
            if name in REQUIRED or draw(st.booleans()):
                e[name] = draw(_OF_KIND[kind]) if draw(st.integers(0, 49)) else draw(_values)
        if not draw(st.integers(0, 49)):
            e["x"] = draw(_values)
        plain_text &= all(map(_plain_text, e.values()))
        keys = draw(st.permutations(list(e)))
        ws = draw(st.sampled_from([b"", b" ", b"\n", b"\t", b"\r\n "]))
        kinds = dict(COLUMNS)
        parts = [
            b'"%s"%s:%s%s' % (k.encode(), ws, ws, _render(e[k], draw(st.integers(0, 2)), kinds.get(k, "")))
            for k in keys
        ]
        lines.append(ws + b"{" + ws + (b"," + ws).join(parts) + ws + b"}" + ws)
    return b"".join(lines), len(lines), plain_text


@pytest.mark.skipif(_rowscan is None, reason="the C scanner is not built (no C compiler at install)")
@settings(max_examples=300, deadline=None)
@given(_spelled_lines())
def test_the_scanner_gives_the_plain_decodes_columns_whenever_it_takes_a_message(
    message: tuple[bytes, int, bool],
) -> None:
    """Held equal: what the scanner takes, the plain decode takes, into equal columns (-0.0 and 0.0 told apart).

    And it pays: it declines a message the plain decode takes only for a string that is not plain
    printable ASCII, or a number a double cannot hold.
    """
    data, n, plain_text = message
    scanned = scan_columns(data, n)
    plain = _plain_columns(data, n)
    if scanned is not None:
        assert_same_columns(scanned, plain)
    elif plain is not None and plain_text:
        finite = [v for c in plain for v in c.to_pylist() if type(v) is float]
        assert not all(map(math.isfinite, finite)), "declined a message of plain strings and finite numbers"


_EDIT_BYTES = b'{}[]",:.-+eE0123456789 \n\t\\atrufnl\x00\xff'


def edits(max_pos: int) -> st.SearchStrategy[list[tuple[int, int, bytes]]]:
    """Up to four edits ``(position, bytes cut, bytes inserted)`` of JSON's own characters and some that break it."""
    return st.lists(
        st.tuples(
            st.integers(0, max_pos),
            st.integers(0, 4),
            st.binary(max_size=3).map(lambda b: bytes(_EDIT_BYTES[x % len(_EDIT_BYTES)] for x in b)),
        ),
        min_size=1,
        max_size=4,
    )


def damaged(data: bytes, changes: list[tuple[int, int, bytes]]) -> bytes:
    """``data`` with each edit applied in turn (a position past the end appends)."""
    out = bytearray(data)
    for pos, cut, insert in changes:
        pos %= len(out) + 1
        out[pos : pos + cut] = insert
    return bytes(out)


@pytest.mark.skipif(_rowscan is None, reason="the C scanner is not built (no C compiler at install)")
@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), edits(2000), st.integers(0, 4))
def test_the_scanner_on_damaged_bytes_declines_or_agrees(lines: int, changes: list, n: int) -> None:
    """Bytes cut, inserted or truncated anywhere: the scanner never reads past them and never disagrees."""
    data = damaged(b"".join(lines_of([event(i) for i in range(lines)])), changes)
    scanned = scan_columns(data, n)
    if scanned is not None:
        assert_same_columns(scanned, _plain_columns(data, n))


@pytest.mark.skipif(_rowscan is None, reason="the C scanner is not built (no C compiler at install)")
def test_the_scanner_takes_p2s_common_lines_and_declines_what_only_the_plain_decode_may_judge() -> None:
    common = lines_of([event(i) for i in range(5)])
    assert scan_columns(b"".join(common), 5) is not None
    assert scan_columns(b"\n".join(common) + b"\n", 5) is not None
    declined = {
        "escape": orjson.dumps(event(1, side="b\\u0075y")).replace(b"\\\\", b"\\"),
        "non-ascii": orjson.dumps(event(1, product_id="BTC-€")),
        "null": orjson.dumps(event(1, best_bid=None)),
        "unknown key": orjson.dumps(event(1, x=1)),
        "repeated key": orjson.dumps(event(1))[:-1] + b',"price":1.5}',
        "huge int in a float column": orjson.dumps(event(1, price=(1 << 53) + 1)),
        "int64 overflow": orjson.dumps(event(1))[:-1].replace(b'"sequence":9001', b'"sequence":9223372036854775808')
        + b"}",
        "float in an int column": orjson.dumps(event(1)).replace(b'"trade_id":1001', b'"trade_id":1001.0'),
        "overflowing float": orjson.dumps(event(1)).replace(b'"price":60001.5', b'"price":1e400'),
        "nested": orjson.dumps(event(1, backfilled=[True])),
        "missing required": orjson.dumps(event(1, price=...)),
        "leading zero": orjson.dumps(event(1)).replace(b'"price":60001.5', b'"price":060001.5'),
        "trailing garbage": orjson.dumps(event(1)) + b"x",
    }
    for why, line in declined.items():
        assert scan_columns(common[0] + line, 2) is None, why
    assert scan_columns(b"".join(common), 4) is None, "more objects than lines"
    assert scan_columns(b"".join(common), 6) is None, "fewer objects than lines"
    assert scan_columns(b"".join(common), 1 << 40) is None, "more lines than the bytes could hold"


SPECIAL_BYTES = (b"\\", b"\x1f", b"\x7f", b"\x80", "é".encode())
"""Bytes a plain string may not hold, and one it may (DEL), each tried at every offset of an eight-byte word."""


def texts_holding(special: bytes) -> Iterator[bytes]:
    """Strings of 1 to 25 bytes with ``special`` at each offset: every place in a word and past three words."""
    for length in range(1, 26):
        for at in range(length):
            yield b"a" * at + special + b"b" * (length - at - 1)


NUMBER_SPELLINGS = (
    *(b"7" * k for k in range(1, 21)),
    *(b"-" + b"9" * k for k in (18, 19, 20)),
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"-9223372036854775809",
    *(b"1." + b"3" * k for k in range(12, 17)),
    b"955430966832521.1",  # 16 digits, and 17 below: one rounding of the digits and another of the
    b"821.72843949926903",  # division would be off by one unit in the last place
    *(b"123456789012345e" + e for e in (b"7", b"8", b"-22", b"-23", b"22", b"23")),
    b"0.1e-22",
    b"5e1000",
    b"5e-1000",
    b"5e00000000000000000000000001",
    b"0.000000000000000000000000000001",
    b"-0.0",
    b"-0",
)
"""Numbers at the edges of the one-pass reader: 19 and 20 digits, int64's ends, 15 and 16 significant
digits, exponents either side of 10**22 and of 1000, leading zeros in an exponent."""


@pytest.mark.skipif(_rowscan is None, reason="the C scanner is not built (no C compiler at install)")
@pytest.mark.parametrize("special", SPECIAL_BYTES)
def test_the_scanner_finds_a_special_byte_at_any_offset_of_a_word(special: bytes) -> None:
    """A string is read eight bytes at a time: a byte it may not hold is found wherever it falls."""
    for text in texts_holding(special):
        data = orjson.dumps(event(1)).replace(b'"buy"', b'"' + text + b'"')
        scanned = scan_columns(data, 1)
        if special == b"\x7f":
            assert scanned is not None, text
            assert_same_columns(scanned, _plain_columns(data, 1))
        else:
            assert scanned is None, text


@pytest.mark.skipif(_rowscan is None, reason="the C scanner is not built (no C compiler at install)")
@pytest.mark.parametrize("key", [b"pric", b"price2", b"Price", b"", b"sidee", b"recv_ts_u", b"recv_ts_us_"])
def test_a_key_near_a_columns_name_is_not_taken_for_it(key: bytes) -> None:
    """The next column's name is tried first, byte for byte; a key one byte short, longer or other is another key."""
    line = orjson.dumps(event(1))[:-1] + b',"' + key + b'":1}'
    assert scan_columns(line, 1) is None
    assert _plain_columns(line, 1) is None


@pytest.mark.skipif(_rowscan is None, reason="the C scanner is not built (no C compiler at install)")
@pytest.mark.parametrize("spelling", NUMBER_SPELLINGS)
def test_the_scanner_reads_numbers_at_the_edges_as_the_plain_decode_does(spelling: bytes) -> None:
    """In a float column and an int column: equal values (signs too), or declined where the plain decode
    declines or reads a value no double holds."""
    for column in (b"price", b"sequence"):
        key = b'"%s":' % column
        line = orjson.dumps(event(1, **{column.decode(): 1})).replace(key + b"1", key + spelling)
        scanned, plain = scan_columns(line, 1), _plain_columns(line, 1)
        if scanned is not None:
            assert_same_columns(scanned, plain)
        else:
            finite = plain is not None and all(
                math.isfinite(v) for c in plain for v in c.to_pylist() if type(v) is float
            )
            assert not finite, "declined a number the plain decode reads as a finite value"


def test_the_scanner_is_built_where_ci_requires_it() -> None:
    """CI's machine has a C compiler: there the kernel must be built, so its tests above never skip silently."""
    if os.environ.get("MERCURY_REQUIRE_ROWSCAN") == "1":
        assert _rowscan is not None


def test_rows_whose_extra_is_no_json_object_have_no_event() -> None:
    """Only a file not written here has such a row: listed with its reason when asked, else ``ValueError``."""
    batch, _ = RowEncoder().encode(lines_of([event(i) for i in range(4)]))
    extra = pa.array([None, "{not json", "[1,2]", '{"k":1}'], pa.string())
    hostile = batch.set_column(batch.schema.get_field_index(EXTRA), EXTRA, extra)
    bad: list[tuple[int, str]] = []
    assert events_of(hostile, bad) == [event(0), {**event(3), "k": 1}]
    assert bad == [(1, "invalid_json"), (2, "not_object")]
    with pytest.raises(ValueError, match="row 1: its extra column is invalid json"):
        events_of(hostile)


def test_the_recording_schema_has_no_problem_and_foreign_types_are_named() -> None:
    assert schema_problem(SCHEMA) is None
    price = SCHEMA.get_field_index("price")
    assert schema_problem(SCHEMA.set(price, pa.field("price", pa.decimal128(5, 2)))) == (
        "column price is decimal128(5, 2), not double"
    )
    assert schema_problem(SCHEMA.set(price, pa.field("price", pa.uint8()))) is None
    assert schema_problem(SCHEMA.append(pa.field("price", pa.float64()))) == "column price appears 2 times"
