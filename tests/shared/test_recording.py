"""Telling a Parquet recording from a JSONL one without loading pyarrow."""

from __future__ import annotations

from pathlib import Path

from mercurystream.shared.recording import is_parquet


def test_is_parquet_by_extension_or_magic(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"a":1}\n')
    magic = tmp_path / "b.bin"
    magic.write_bytes(b"PAR1....")
    assert not is_parquet(jsonl)
    assert is_parquet(magic)
    assert is_parquet(tmp_path / "missing.parquet")
    assert not is_parquet(tmp_path / "missing")
