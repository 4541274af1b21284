"""Recording files: which format one is in, decided without loading pyarrow (replay imports this for every
file), and the one rule that keeps a JSONL file to whole lines."""

from __future__ import annotations

import os
from collections.abc import Callable

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


def cut_torn_line(fd: int, truncate: Callable[[int, int], None] = os.ftruncate) -> tuple[int, int]:
    """Cut a JSONL file back to its last whole line: ``(new size, bytes cut)``.

    A writer killed mid-line, or a write a full disk cut short, leaves a last line without its
    newline; appending after it would glue the next record onto the torn one. ``truncate`` is a
    parameter so a test can make the cut itself fail (the callers then start a new file).
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size, 0
    end = size
    while end > 0:
        start = max(0, end - 65536)
        nl = os.pread(fd, end - start, start).rfind(b"\n")
        if nl >= 0:
            end = start + nl + 1
            break
        end = start
    truncate(fd, end)
    return end, size - end
