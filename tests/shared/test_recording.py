"""Telling a Parquet recording from a JSONL one without loading pyarrow; cutting a JSONL back to whole lines;
reading one back as bounded lines."""

from __future__ import annotations

import io
import os
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.recording import LineSplitter, cut_torn_line, is_parquet, read_lines


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
