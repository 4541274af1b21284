"""Telling a Parquet recording from a JSONL one without loading pyarrow; cutting a JSONL back to whole lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mercurystream.shared.recording import cut_torn_line, is_parquet


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
