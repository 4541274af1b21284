"""Telling a Parquet recording from a JSONL one without loading pyarrow; cutting a JSONL back to whole lines;
reading one back as bounded lines; naming a recording's closed files and keeping them under a byte budget."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.recording import (
    LineSplitter,
    closed_files,
    closed_name,
    cut_torn_line,
    file_stem,
    is_parquet,
    next_closed_name,
    prune_closed,
    read_lines,
)


def test_is_parquet_by_extension_or_magic(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"a":1}\n')
    magic = tmp_path / "b.bin"
    magic.write_bytes(b"PAR1....")
    assert not is_parquet(jsonl)
    assert is_parquet(magic)
    assert is_parquet(tmp_path / "missing.parquet")
    assert not is_parquet(tmp_path / "missing")


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        (b"", b""),
        (b'{"i":1}\n', b'{"i":1}\n'),
        (b'{"i":1}\n{"i":2,"pa', b'{"i":1}\n'),
        (b'{"torn', b""),
        (b'{"i":1}\n' + b"x" * 200_000, b'{"i":1}\n'),  # the newline lies more than one read back
    ],
)
def test_cut_torn_line_keeps_whole_lines_only(tmp_path: Path, content: bytes, kept: bytes) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDWR)
    try:
        assert cut_torn_line(fd) == (len(kept), len(content) - len(kept))
    finally:
        os.close(fd)
    assert path.read_bytes() == kept


def split_whole(data: bytes, limit: int) -> tuple[list[bytes], list[int]]:
    """The reference: the whole stream split at once, each line over ``limit`` blanked and listed."""
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # a final newline ends the last line; it does not start another
    over = [i for i, line in enumerate(lines) if len(line) > limit]
    return [b"" if i in over else line for i, line in enumerate(lines)], over


def split_in_chunks(data: bytes, limit: int, cuts: list[int]) -> tuple[list[bytes], list[int], int]:
    """The splitter fed ``data`` cut at ``cuts``: its lines, their positions over the limit, and the most it held."""
    splitter = LineSplitter(limit)
    lines: list[bytes] = []
    over: list[int] = []
    most = 0
    bounds = [0, *sorted(set(cuts)), len(data)]
    for a, b in pairwise(bounds):
        got, where = splitter.feed(data[a:b]) if b > a else ([], [])
        most = max(most, splitter.held)
        over += [len(lines) + i for i in where]
        lines += got
    got, where = splitter.end()
    over += [len(lines) + i for i in where]
    lines += got
    return lines, over, most


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b" ", b"{}"]), max_size=80).map(b"".join),
    limit=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 200), max_size=12),
)
def test_any_chunking_gives_the_whole_streams_lines_with_the_same_ones_over_the_limit(
    data: bytes, limit: int, cuts: list[int]
) -> None:
    lines, over, most = split_in_chunks(data, limit, [c for c in cuts if c < len(data)])
    assert (lines, over) == split_whole(data, limit)
    assert most <= limit


def test_an_endless_line_is_dropped_as_it_arrives() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"ok\n" + b"x" * 50) == ([b"ok"], [])
    for _ in range(1000):
        assert splitter.feed(b"x" * 4096) == ([], [])
        assert splitter.held == 0
    assert splitter.feed(b"x\nnext") == ([b""], [0])
    assert splitter.end() == ([b"next"], [])


def test_a_stream_ending_inside_an_oversize_line_still_counts_it() -> None:
    splitter = LineSplitter(3)
    assert splitter.feed(b"a\nlong") == ([b"a"], [])
    assert splitter.end() == ([b""], [0])


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineSplitter(0)


def test_read_lines_gives_each_reads_lines_and_size_then_the_unterminated_last_line() -> None:
    data = b"a\n" + b"x" * 9 + b"\nbb\ncc"
    got = list(read_lines(io.BytesIO(data), 4, 5))
    assert sum(size for size, _, _ in got) == len(data)
    lines = [line for _, chunk, _ in got for line in chunk]
    assert (lines, got[-1]) == ([b"a", b"", b"bb", b"cc"], (0, [b"cc"], []))
    assert [over for _, _, over in got if over] == [[0]]


def test_file_stem_drops_a_recording_suffix_only() -> None:
    assert file_stem(Path("data/btcusd.jsonl")) == Path("data/btcusd")
    assert file_stem(Path("data/btcusd")) == Path("data/btcusd")
    assert file_stem(Path("data/x.parquet")) == Path("data/x")


def test_closed_files_are_exactly_the_rolled_names_oldest_first(tmp_path: Path) -> None:
    stem = tmp_path / "btcusd"
    second = datetime(2026, 12, 7, 21, 0, 5, tzinfo=UTC)
    rolled = [closed_name(stem, ".jsonl", 2, second - timedelta(seconds=1))]
    rolled += [
        closed_name(stem, suffix, seq, second) for seq, suffix in ((2, ".parquet"), (3, ".jsonl"), (10, ".jsonl"))
    ]
    for age, path in enumerate(rolled):
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 - age, 10**18 - age))  # modification times say nothing of age
    others = ["btcusd.jsonl", "btcusd.backup.jsonl", "btcusd.20261207T000000Z-1.parquet.part"]
    for name in [*others, "eth.20261207T000000Z-1.jsonl"]:
        (tmp_path / name).write_bytes(b"y")
    (tmp_path / "btcusd.20261207T000000Z-9.jsonl").mkdir()
    assert [e.name for e in closed_files(stem)] == [p.name for p in rolled]
    assert closed_files(tmp_path / "missing" / "x") == []


def test_prune_removes_the_oldest_closed_files_until_the_rest_fit(tmp_path: Path) -> None:
    stem = tmp_path / "r"
    paths = [closed_name(stem, ".jsonl", seq) for seq in range(1, 6)]
    for age, path in enumerate(paths):
        path.write_bytes(b"x" * 100)
        os.utime(path, ns=(10**18 + age, 10**18 + age))
    (tmp_path / "r.jsonl").write_bytes(b"z" * 1000)  # the open file: never a candidate
    assert prune_closed(stem, 500) == []
    assert prune_closed(stem, 250) == [p.name for p in paths[:3]]
    assert [e.name for e in closed_files(stem)] == [p.name for p in paths[3:]]
    assert (tmp_path / "r.jsonl").stat().st_size == 1000
    assert prune_closed(stem, 0) == [p.name for p in paths[3:]]


def test_the_next_closed_name_skips_names_an_earlier_run_left(tmp_path: Path) -> None:
    stem, when = tmp_path / "r", datetime(2026, 12, 7, 21, 0, 5, tzinfo=UTC)
    closed_name(stem, ".jsonl", 2, when).write_bytes(b"x")
    assert next_closed_name(stem, ".jsonl", 0, when) == (1, closed_name(stem, ".jsonl", 1, when))
    assert next_closed_name(stem, ".jsonl", 1, when) == (3, closed_name(stem, ".jsonl", 3, when))
