"""One JSONL recording to one Parquet file, streamed: memory stays bounded whatever the file's size.

The file is read in fixed-size chunks and split on newlines by
:class:`~mercurystream.shared.recording.LineSplitter` (never a line at a time, never whole); each
chunk's lines go through :class:`~mercurystream.shared.parquet.RowEncoder` and into a
:class:`~mercurystream.shared.parquet.ParquetSink`, which holds at most one row group. A line longer
than ``max_line_bytes`` is skipped without being held (``oversize``), so one enormous line cannot
exhaust memory either. Every line without a row is counted by reason; the first line numbers are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES
from mercurystream.shared.parquet import REJECT_REASONS, ParquetSink, RowEncoder
from mercurystream.shared.recording import read_lines

CHUNK_BYTES = 1 << 20
MAX_REPORTED_LINES = 10
REASONS = (*REJECT_REASONS, "oversize")


@dataclass
class Conversion:
    """What one conversion did: rows written, bad lines by reason and the first bad line numbers (1-based)."""

    rows: int = 0
    lines: int = 0
    bytes_read: int = 0
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    bad_lines: list[int] = field(default_factory=list)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def count_bad(self, reason: str, lineno: int) -> None:
        self.bad[reason] += 1
        if len(self.bad_lines) < MAX_REPORTED_LINES:
            self.bad_lines.append(lineno)


def line_chunks(
    f: BinaryIO, report: Conversion, max_line_bytes: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, list[bytes]]]:
    """``(number of the first line, lines)`` per chunk read; an oversize line is counted in ``report`` and blanked."""
    lineno = 0
    for size, lines, over in read_lines(f, max_line_bytes, chunk_bytes):
        report.bytes_read += size
        for i in over:
            report.count_bad("oversize", lineno + 1 + i)
        if lines:
            yield lineno + 1, lines
            lineno += len(lines)
    report.lines = lineno


def convert(
    f: BinaryIO,
    out: Path,
    max_line_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    on_progress: Callable[[int], None] | None = None,
) -> Conversion:
    """Write the JSONL stream ``f`` to the Parquet file ``out`` (through ``out.part``, renamed at the end).

    Raises ``OSError`` when reading or writing fails; the ``.part`` file is then removed.
    """
    report = Conversion()
    encoder = RowEncoder()
    out.with_name(out.name + ".part").unlink(missing_ok=True)
    sink = ParquetSink(out)
    try:
        for first, lines in line_chunks(f, report, max_line_bytes):
            batch, bad = encoder.encode(lines)
            sink.append(batch)
            for index, reason in bad:
                report.count_bad(reason, first + index)
            if on_progress is not None:
                on_progress(report.bytes_read)
        sink.close()
    except BaseException:
        sink.discard()
        raise
    report.rows = encoder.rows
    return report
