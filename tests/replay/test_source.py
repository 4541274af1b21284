from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.replay.inject import InjectOptions, Injector
from mercurystream.replay.source import EventQueue, JsonlReader
from mercurystream.shared.wire import NOT_JSON, parse_payload

MIXED = (
    b'{"trade_id":1}\n'  # 1
    b"\n"  # 2 blank
    b"not json\n"  # 3
    b'{"trade_id":2}\r\n'  # 4 CRLF
    b"[1,2]\n"  # 5 not an object
    b"   \n"  # 6 blank
    b'"a string"\n'  # 7 not an object
    b'{"trade_id":3,"x":"\xff"}\n'  # 8 invalid UTF-8
    b'  {"trade_id":4}  \n'  # 9
    b'{"trade_id":5}'  # 10, no final newline
)


def read_all(data: bytes, **kwargs) -> tuple[JsonlReader, list]:
    reader = JsonlReader(io.BytesIO(data), **kwargs)
    items = [it for batch in reader.batches() for it in batch]
    return reader, items


def test_valid_lines_pass_as_stripped_bytes_and_the_rest_is_counted_by_line() -> None:
    reader, items = read_all(MIXED)
    assert items == [b'{"trade_id":1}', b'{"trade_id":2}', b'{"trade_id":4}', b'{"trade_id":5}']
    assert reader.lines == 10
    assert reader.events == 4
    assert reader.blank == 2
    assert reader.malformed == {"invalid_json": 2, "not_object": 2, "oversize": 0, "too_deep": 0}
    assert reader.malformed_lines == [3, 5, 7, 8]
    assert reader.bytes_read == len(MIXED)


LENIENT = [b'{"price":NaN}', b'{"price":1e400,"x":-Infinity}', b'{"product_id":"\\ud800"}', b'{"a":[Infinity]}']
"""Lines P2 reads (its msgspec parse falls back to Python's json) and records, and orjson refuses."""


@pytest.mark.parametrize("parse", [False, True])
def test_lines_only_p2s_lenient_parse_reads_are_sent_as_their_bytes(parse: bool) -> None:
    """Replay counted these invalid_json and dropped them, so a replayed bundle lost lines P2 had recorded."""
    data = b"\n".join([b'{"trade_id":1}', *LENIENT, b"{NaN}", b'{"x":"\xff"}', b'{"trade_id":2}']) + b"\n"
    reader, items = read_all(data, parse=parse)
    first, last = ({"trade_id": 1}, {"trade_id": 2}) if parse else (b'{"trade_id":1}', b'{"trade_id":2}')
    assert items == [first, *LENIENT, last]
    assert reader.lenient == len(LENIENT)
    assert reader.malformed["invalid_json"] == 2 and reader.malformed_lines == [6, 7]


def test_parse_yields_dicts() -> None:
    _, items = read_all(MIXED, parse=True)
    assert items == [{"trade_id": n} for n in (1, 2, 4, 5)]


@settings(max_examples=60, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=64))
def test_chunking_does_not_change_the_result(chunk: int) -> None:
    ref, ref_items = read_all(MIXED)
    reader, items = read_all(MIXED, chunk_bytes=chunk)
    assert items == ref_items
    assert (reader.lines, reader.malformed, reader.malformed_lines) == (ref.lines, ref.malformed, ref.malformed_lines)


def test_oversize_lines_are_skipped_without_being_held_whole() -> None:
    big = b'{"pad":"' + b"x" * 5000 + b'"}'
    data = b'{"a":1}\n' + big + b"\n" + b'{"a":2}\n' + big + b"\n" + b'{"a":3}\n' + big
    for chunk in (16, 100, 1 << 16):
        reader, items = read_all(data, max_line_bytes=1000, chunk_bytes=chunk)
        assert items == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
        assert reader.malformed["oversize"] == 3
        assert reader.malformed_lines == [2, 4, 6]
        assert reader.lines == 6


def test_limit_stops_reading_and_counting() -> None:
    data = b"".join(b'{"n":%d}\nbad\n' % i for i in range(100))
    reader, items = read_all(data, limit=3, chunk_bytes=1 << 16)
    assert items == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert reader.events == 3
    assert reader.malformed_lines == [2, 4]


def test_only_the_first_line_numbers_are_kept() -> None:
    reader, _ = read_all(b"x\n" * 50)
    assert reader.malformed_total == 50
    assert reader.malformed_lines == list(range(1, 11))


def test_queue_takes_exact_counts_across_batches_and_flushes_the_injector() -> None:
    data = b"".join(orjson.dumps({"trade_id": i}) + b"\n" for i in range(1000))
    opts = InjectOptions(shuffle_window=64, seed=1)
    reader = JsonlReader(io.BytesIO(data), chunk_bytes=300)
    queue = EventQueue(reader.batches(), Injector(opts))
    taken = []
    sizes = []
    while batch := queue.take(37):
        sizes.append(len(batch))
        taken += batch
    assert sizes[:-1] == [37] * (len(sizes) - 1)
    assert len(taken) == 1000
    expected = Injector(opts).run(read_all(data)[1])
    assert taken == expected
    assert queue.take(5) == []


LINE_KINDS = [
    b'{"trade_id":%d}',
    b'  {"trade_id":%d}\r',
    b"",
    b"   ",
    b"not json %d",
    b"[%d]",
    b'{"pad":"' + b"x" * 700 + b'","n":%d}',  # oversize at max_line_bytes=700
    b'{"pad":"' + b"x" * 680 + b'","n":%d}' + b" " * 30,  # oversize by its padding, whatever the chunking
    b'{"bad":"\xff","n":%d}',
    b'{"n":%d,"d":' + b"[" * 300 + b"]" * 300 + b"}",  # too deep to write back
    b'{"n":%d,"price":NaN}',  # only P2's lenient parse reads these: sent, as bytes
    b'{"n":%d,"x":"\\ud800","y":1e400}',
    b"[NaN,%d]",  # lenient, but not an object
]


def reference(lines: list[bytes], limit: int | None, max_len: int) -> tuple[list, dict[str, int], list[int], int]:
    """What the reader must yield, classified one line at a time with no batching at all."""
    items, bad, where = [], dict.fromkeys(("invalid_json", "not_object", "oversize", "too_deep"), 0), []
    seen = 0
    for lineno, raw in enumerate(lines, 1):
        if limit is not None and len(items) >= limit:
            break
        seen = lineno
        line = raw.strip()
        reason = None
        if len(raw) > max_len:  # by the line's own length, before stripping
            reason = "oversize"
        elif not line:
            continue
        else:
            try:
                obj = orjson.loads(line)
                reason = None if type(obj) is dict else "not_object"
                if reason is None:
                    orjson.dumps(obj)
            except orjson.JSONDecodeError:
                obj = parse_payload(line)  # P2's parse, whose rule replay follows
                reason = "invalid_json" if obj is NOT_JSON else None if type(obj) is dict else "not_object"
            except orjson.JSONEncodeError:
                reason = "too_deep"
        if reason:
            bad[reason] += 1
            where.append(lineno)
        else:
            items.append(line)
    return items, bad, where[:10], seen


@settings(max_examples=150, deadline=None)
@given(
    kinds=st.lists(st.integers(0, len(LINE_KINDS) - 1), max_size=60),
    clean_run=st.integers(0, 40),
    chunk=st.integers(8, 400),
    limit=st.one_of(st.none(), st.integers(1, 80)),
)
def test_whole_chunk_and_per_line_validation_agree_with_a_line_by_line_reference(
    kinds: list[int], clean_run: int, chunk: int, limit: int | None
) -> None:
    picked = [0] * clean_run + kinds  # a clean stretch, so whole chunks pass the C-level check too
    lines = [LINE_KINDS[k] % i if b"%d" in LINE_KINDS[k] else LINE_KINDS[k] for i, k in enumerate(picked)]
    data = b"\n".join(lines)
    reader, items = read_all(data, chunk_bytes=chunk, limit=limit, max_line_bytes=700)
    in_file = data.split(b"\n") if data else []
    if in_file and not in_file[-1]:
        in_file.pop()  # a final newline ends the last line; it does not start another
    want, bad, where, seen = reference(in_file, limit, 700)
    assert items == want
    assert reader.malformed == bad
    assert reader.malformed_lines == where
    assert (reader.events, reader.lines) == (len(want), seen)


def test_a_clean_file_is_never_validated_line_by_line(monkeypatch) -> None:
    def per_line(*args: object) -> list:
        raise AssertionError("the per-line path was taken")

    monkeypatch.setattr(JsonlReader, "_validate_each", per_line)
    data = b"".join(b'{"n":%d}\r\n' % i for i in range(1000))
    for parse in (False, True):
        reader, items = read_all(data, chunk_bytes=1000, parse=parse)
        assert items == [{"n": i} if parse else b'{"n":%d}' % i for i in range(1000)]
        assert (reader.lines, reader.events, reader.malformed_total) == (1000, 1000, 0)
    reader, items = read_all(data, chunk_bytes=1000, limit=7)
    assert len(items) == 7 and reader.lines == 7


# ---------------------------------------------------------------- Parquet


def parquet_of(tmp_path: Path, events: list[dict]) -> Path:
    from mercurystream.shared.parquet import ParquetSink, RowEncoder

    sink = ParquetSink(tmp_path / "r.parquet", row_group_rows=100)
    sink.append(RowEncoder().encode([orjson.dumps(e) for e in events])[0])
    return sink.close()


def pq_event(i: int) -> dict:
    return {"type": "match", "product_id": "BTC-USD", "price": 1.5, "last_size": 2.0, "time": "t", "trade_id": i,
            "ingest_ts_ms": 7}  # fmt: skip


def test_parquet_reader_gives_lines_or_dicts_in_batches_and_honours_the_limit(tmp_path: Path) -> None:
    from mercurystream.replay.source import ParquetReader

    events = [pq_event(i) for i in range(10_000)]
    path = parquet_of(tmp_path, events)
    with open(path, "rb") as f:
        reader = ParquetReader(f)
        got = [line for b in reader.batches() for line in b]
    assert got == [orjson.dumps(e) for e in events]
    assert reader.events == reader.lines == 10_000 and reader.malformed_total == 0
    assert reader.bytes_read == path.stat().st_size
    with open(path, "rb") as f:
        reader = ParquetReader(f, parse=True, limit=4321)
        got = [e for b in reader.batches() for e in b]
    assert got == events[:4321] and reader.events == 4321


@pytest.mark.parametrize("content", [b"", b"PAR1", b'{"a":1}\n'])
def test_parquet_reader_refuses_what_is_not_parquet_with_one_line(tmp_path: Path, content: bytes) -> None:
    from mercurystream.replay.source import ParquetReader

    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    with open(path, "rb") as f, pytest.raises(OSError, match="not a readable Parquet file") as info:
        ParquetReader(f)
    assert "\n" not in str(info.value)


def test_parquet_reader_refuses_a_parquet_file_that_is_not_a_recording(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mercurystream.replay.source import ParquetReader

    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    with open(tmp_path / "other.parquet", "rb") as f, pytest.raises(OSError, match="has no column"):
        ParquetReader(f)


def hostile_parquet(tmp_path: Path, name: str, rows: int = 3, **columns) -> Path:
    """A Parquet file with every required column, ``columns`` replacing or adding some (not mercury-export's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = {
        "type": ["match"] * rows,
        "product_id": ["BTC-USD"] * rows,
        "price": [1.0] * rows,
        "last_size": [1.0] * rows,
        "time": ["2024-01-01T00:00:00.000000Z"] * rows,
        "trade_id": list(range(1, rows + 1)),
        "ingest_ts_ms": [1_700_000_000_000] * rows,
    }
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({**base, **columns}), path)
    return path


def test_parquet_rows_whose_extra_is_no_json_object_are_counted_and_skipped(tmp_path: Path) -> None:
    """A bad ``extra`` ended the replay in a traceback; now the row is skipped under a reason, by its number."""
    from mercurystream.replay.source import ParquetReader

    deep = '{"a":' * 300 + "1" + "}" * 300  # orjson reads it but cannot write the event back
    extra = [None, "{not json", "[1,2]", '{"maker":"x"}', "5", deep]
    path = hostile_parquet(tmp_path, "extra", rows=len(extra), extra=extra)
    for parse in (False, True):
        with open(path, "rb") as f:
            reader = ParquetReader(f, parse=parse)
            got = [orjson.loads(e) if type(e) is bytes else e for b in reader.batches() for e in b]
        assert [e["trade_id"] for e in got] == [1, 4] and got[1]["maker"] == "x"
        assert {k: v for k, v in reader.malformed.items() if v} == {"invalid_json": 1, "not_object": 2, "too_deep": 1}
        assert reader.malformed_lines == [2, 3, 5, 6] and (reader.lines, reader.events) == (6, 2)


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("price_decimal", "column price is decimal128(5, 2), not double"),
        ("product_id_binary", "column product_id is binary, not string"),
        ("price_list", "column price is list<element: double>, not double"),
        ("extra_int", "column extra is int64, not string"),
        ("time_timestamp", "column time is timestamp[us], not string"),
    ],
)
def test_a_parquet_column_of_a_type_with_no_json_value_refuses_the_file_in_one_line(
    tmp_path: Path, column: str, expected: str
) -> None:
    import datetime
    import decimal

    import pyarrow as pa

    from mercurystream.replay.source import ParquetReader

    values = {
        "price_decimal": ("price", pa.array([decimal.Decimal("1.5")] * 3, pa.decimal128(5, 2))),
        "product_id_binary": ("product_id", pa.array([b"\xff\xfe"] * 3, pa.binary())),
        "price_list": ("price", pa.array([[1.0]] * 3, pa.list_(pa.float64()))),
        "extra_int": ("extra", pa.array([5] * 3, pa.int64())),
        "time_timestamp": ("time", pa.array([datetime.datetime(2024, 1, 1)] * 3, pa.timestamp("us"))),
    }
    name, array = values[column]
    path = hostile_parquet(tmp_path, column, **{name: array})
    with open(path, "rb") as f, pytest.raises(OSError) as info:
        ParquetReader(f)
    assert str(info.value) == f"not a recording: {expected}"


def test_parquet_columns_of_other_widths_and_encodings_are_read(tmp_path: Path) -> None:
    import pyarrow as pa

    from mercurystream.replay.source import ParquetReader

    path = hostile_parquet(
        tmp_path,
        "widths",
        trade_id=pa.array([2**64 - 1] * 3, pa.uint64()),
        price=pa.array([1.5] * 3, pa.float32()),
        product_id=pa.array(["BTC-USD"] * 3, pa.large_string()).dictionary_encode(),
        side=pa.array([None] * 3, pa.null()),
    )
    with open(path, "rb") as f:
        reader = ParquetReader(f)
        got = [orjson.loads(e) for b in reader.batches() for e in b]
    assert [(e["trade_id"], e["price"], e["product_id"], "side" in e) for e in got] == [
        (2**64 - 1, 1.5, "BTC-USD", False)
    ] * 3
