"""Streaming a JSONL file into Parquet: chunking never changes lines or their numbers; oversize lines are skipped."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from mercurystream.export.convert import Conversion, convert, line_chunks


def numbered(chunks) -> list[tuple[int, bytes]]:
    return [(first + i, line) for first, lines in chunks for i, line in enumerate(lines)]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_any_chunk_size_yields_the_same_numbered_lines(chunk: int) -> None:
    data = b"a\n\nbb\nccc\r\n\ndddd"
    report = Conversion()
    got = numbered(line_chunks(io.BytesIO(data), report, max_line_bytes=100, chunk_bytes=chunk))
    assert got == [(1, b"a"), (2, b""), (3, b"bb"), (4, b"ccc\r"), (5, b""), (6, b"dddd")]
    assert report.lines == 6 and report.bytes_read == len(data)


@pytest.mark.parametrize("chunk", [2, 5, 1 << 20])
def test_an_oversize_line_is_counted_with_its_number_and_never_held(chunk: int) -> None:
    data = b"a\n" + b"x" * 50 + b"\nb\n" + b"y" * 50
    report = Conversion()
    got = numbered(line_chunks(io.BytesIO(data), report, max_line_bytes=10, chunk_bytes=chunk))
    assert [(n, line) for n, line in got if line] == [(1, b"a"), (3, b"b")]
    assert report.bad["oversize"] == 2 and report.bad_lines == [2, 4]


def extra(i: int) -> dict:
    return {"time": "t", "trade_id": i, "ingest_ts_ms": 7}


def test_convert_counts_bad_lines_by_number_and_writes_the_rest(tmp_path: Path) -> None:
    good = [
        orjson.dumps({"type": "match", "product_id": "BTC-USD", "price": 1.5, "last_size": 2.0} | extra(i))
        for i in range(30)
    ]
    deep = good[0][:-1] + b',"x":' + b"[" * 300 + b"]" * 300 + b"}"
    lines = [*good[:10], b"oops", *good[10:20], b"[]", b'{"type":"match"}', *good[20:], deep]
    out = tmp_path / "o.parquet"
    report = convert(io.BytesIO(b"\n".join(lines)), out)
    assert report.rows == 30
    assert report.bad == {
        "invalid_json": 1,
        "not_object": 1,
        "missing_field": 1,
        "wrong_type": 0,
        "too_deep": 1,
        "oversize": 0,
    }
    assert report.bad_lines == [11, 22, 23, 34]
    assert pq.read_table(out).column("trade_id").to_pylist() == list(range(30))
    assert not (tmp_path / "o.parquet.part").exists()


def test_a_failed_read_leaves_no_part_file(tmp_path: Path) -> None:
    class Broken(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            raise OSError("disk gone")

    with pytest.raises(OSError):
        convert(Broken(), tmp_path / "o.parquet")
    assert list(tmp_path.iterdir()) == []
