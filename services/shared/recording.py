"""Which format a recording file is in, decided without loading pyarrow (replay imports this for every file)."""

from __future__ import annotations

import os

PARQUET_MAGIC = b"PAR1"
PART_SUFFIX = ".part"
"""A Parquet file being written is named ``<name>.part`` until its footer is in place."""


def is_parquet(path: str | os.PathLike[str]) -> bool:
    """The file ends with ``.parquet`` or starts with Parquet's magic bytes."""
    if str(path).endswith(".parquet"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False
