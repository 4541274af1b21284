"""Recording files: which format one is in, decided without loading pyarrow (replay imports this for every
file), the one rule that keeps a JSONL file to whole lines, the one that reads it back as bounded lines,
and how a recording's closed files are named and kept under a byte budget."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

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


def file_stem(base: Path) -> Path:
    """``data/btcusd.jsonl`` → ``data/btcusd``: the prefix every file of the recording shares."""
    return base.with_suffix("") if base.suffix in (".jsonl", ".parquet") else base


def closed_name(stem: Path, suffix: str, seq: int, when: datetime | None = None) -> Path:
    """``<stem>.<UTC time>-<seq><suffix>``: the name of one of the recording's closed (rolled) files."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return stem.with_name(f"{stem.name}.{stamp}-{seq}{suffix}")


def next_closed_name(stem: Path, suffix: str, seq: int, when: datetime | None = None) -> tuple[int, Path]:
    """The first number after ``seq`` whose :func:`closed_name` no file has yet, and that name.

    A writer keeps its last number, so the files it names within a second are numbered in order;
    a name an earlier run left behind is skipped, never reused.
    """
    when = when or datetime.now(UTC)
    while True:
        seq += 1
        path = closed_name(stem, suffix, seq, when)
        if not path.exists():
            return seq, path


def closed_files(stem: Path) -> list[os.DirEntry[str]]:
    """The recording's closed files (named by :func:`closed_name`, ``.jsonl`` or ``.parquet``), oldest first.

    Only that exact pattern: another file that shares the stem (a backup, the open file, a ``.part``)
    is never one of them. Age is the name's time, then its number (a writer numbers the files it
    names within a second in order), not the modification time, which a copy changes and which a
    coarse file-system clock gives to several files at once.
    """
    pattern = re.compile(re.escape(stem.name) + r"\.(\d{8}T\d{6}Z)-(\d+)\.(?:jsonl|parquet)")
    found = []
    try:
        with os.scandir(stem.parent if str(stem.parent) else ".") as it:
            for entry in it:
                m = pattern.fullmatch(entry.name)
                if m and entry.is_file(follow_symlinks=False):
                    found.append(((m[1], int(m[2]), entry.name), entry))
    except OSError:
        return []
    return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]


def prune_closed(stem: Path, max_bytes: int) -> list[str]:
    """Remove the recording's oldest closed files until the rest total at most ``max_bytes``; the names removed.

    The recorder calls it after each roll with ``RECORD_MAX_BYTES`` less the open file's share
    (``RECORD_ROTATE_BYTES``), so a recording, open file included, stays within ``RECORD_MAX_BYTES``.
    """
    entries = closed_files(stem)
    sizes = []
    for entry in entries:
        try:
            sizes.append(entry.stat(follow_symlinks=False).st_size)
        except OSError:
            sizes.append(0)
    total = sum(sizes)
    removed: list[str] = []
    for entry, size in zip(entries, sizes, strict=True):
        if total <= max_bytes:
            break
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            total -= size  # removed by someone else meanwhile
            continue
        except OSError:
            continue
        total -= size
        removed.append(entry.name)
    return removed


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


class LineSplitter:
    """A JSONL byte stream cut into its lines, sans I/O: feed it chunks in order, then call :meth:`end`.

    A line is its bytes without the ``\n``. One longer than ``max_line_bytes`` is over the limit
    whatever the chunking: it comes out as ``b""`` at its place, with its position listed, and its
    bytes are dropped as they arrive. So the splitter holds at most ``max_line_bytes`` between
    chunks, and a file that is one enormous line cannot exhaust memory. The replay reader and the
    Parquet export both read recordings through it, so both number and bound lines alike.
    """

    __slots__ = ("_carry", "_skipping", "max_line_bytes")

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._carry = b""
        self._skipping = False

    @property
    def held(self) -> int:
        """Bytes held between chunks: the partial last line, never more than ``max_line_bytes``."""
        return len(self._carry)

    def feed(self, chunk: bytes) -> tuple[list[bytes], list[int]]:
        """The lines ``chunk`` completes, and the positions among them of those over the limit."""
        limit = self.max_line_bytes
        ended = False
        if self._skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                return [], []
            chunk = chunk[nl + 1 :]
            self._skipping = False
            ended = True
        # A line can be over the limit only if the chunk and what was held could hold one.
        could_be_over = len(self._carry) + len(chunk) > limit
        lines = chunk.split(b"\n")
        if self._carry:
            lines[0] = self._carry + lines[0]
        carry = lines.pop()
        if len(carry) > limit:
            carry = b""
            self._skipping = True
        self._carry = carry
        over: list[int] = []
        if could_be_over and lines and max(map(len, lines)) > limit:
            over = [i for i, line in enumerate(lines) if len(line) > limit]
            for i in over:
                lines[i] = b""
        if ended:
            lines.insert(0, b"")
            over = [0, *(i + 1 for i in over)]
        return lines, over

    def end(self) -> tuple[list[bytes], list[int]]:
        """The last line when the stream does not end with a newline, as :meth:`feed` gives lines."""
        if self._skipping:
            self._skipping = False
            return [b""], [0]
        carry, self._carry = self._carry, b""
        return ([carry] if carry else []), []


def read_lines(f: BinaryIO, max_line_bytes: int, chunk_bytes: int) -> Iterator[tuple[int, list[bytes], list[int]]]:
    """A file's lines as :class:`LineSplitter` cuts them, one read of ``chunk_bytes`` at a time:
    ``(bytes read, lines, positions over the limit)``, then the last line if it has no newline
    (0 bytes read). Lazy, so a reader that stops taking items stops reading the file."""
    splitter = LineSplitter(max_line_bytes)
    while chunk := f.read(chunk_bytes):
        yield len(chunk), *splitter.feed(chunk)
    yield 0, *splitter.end()
