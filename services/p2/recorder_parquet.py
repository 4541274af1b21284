"""``RECORD_FORMAT=parquet``: the recorder's lines as rotating zstd Parquet files, built on its writer thread.

The loop hands over the same recorded lines as for JSONL (:class:`~mercurystream.p2.recorder.RecorderConsumer`);
this thread parses them into typed rows (:mod:`mercurystream.shared.parquet`), so the loop does no
extra work. Files are ``<RECORD_FILE without suffix>.<UTC start>-<n>.parquet``, written as
``….parquet.part`` and renamed when closed: a reader globbing ``*.parquet`` never opens a file that
has no footer yet. A file is closed (rolled) once it reaches ``RECORD_ROTATE_BYTES`` or has been
open ``RECORD_ROTATE_S``, and on stop.

Accounting: a row counts as written (``mercurystream_recorded_events_total``) when its file is
closed, because a Parquet file is unreadable until then. A line with no row (invalid, or a required
field missing or mistyped, as schema drift is) counts in ``mercurystream_recorder_rejected_total{reason}``;
rows of a file whose write or close failed count in ``mercurystream_recorder_errors_total``, and
that ``.part`` file is removed. A killed P2 (SIGKILL, power loss) leaves its open ``.part`` file
behind unreadable: up to ``RECORD_ROTATE_S`` of rows; JSONL loses at most the last write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path

from loguru import logger

from mercurystream.p2.recorder import JsonlWriter
from mercurystream.shared.parquet import PART_SUFFIX, ParquetSink, RowEncoder


def file_stem(base: Path) -> Path:
    """``data/btcusd.jsonl`` → ``data/btcusd``: the prefix every file of the recording shares."""
    return base.with_suffix("") if base.suffix in (".jsonl", ".parquet") else base


class ParquetRecordWriter(JsonlWriter):
    """The JSONL writer's thread and handoff, writing rotating Parquet files instead of one JSONL file.

    ``path`` is the file being written, or the last one closed (the status line shows it); ``files``
    counts the files closed. The buffer inside the sink holds at most one row group (bounded in rows
    and bytes); the handoff before it is bounded by the recorder, as for JSONL.
    """

    def __init__(
        self,
        base: Path,
        rotate_bytes: int,
        rotate_s: float,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[int], None] | None = None,
        on_rejected: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base, on_written=on_written, on_error=on_error)
        self.base = Path(base)
        self.stem = file_stem(self.base)
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.files = 0
        self.rejected = 0
        self._on_rejected = on_rejected
        self._clock = clock
        self._encoder = RowEncoder()
        self._sink: ParquetSink | None = None
        self._opened_at = 0.0
        self._seq = 0
        self._warn_stale_parts()

    def _warn_stale_parts(self) -> None:
        """Say so when an earlier run left ``.part`` files (it was killed): they have no footer."""
        try:
            stale = sorted(self.stem.parent.glob(f"{self.stem.name}.*.parquet{PART_SUFFIX}"))
        except OSError:
            return
        if stale:
            logger.warning(
                f"recorder: {len(stale)} unfinished Parquet file(s) from an earlier run (killed before it "
                f"closed them; unreadable), e.g. {stale[0]}"
            )

    def _wait_s(self) -> float | None:
        if self._sink is None:
            return None
        return max(0.0, self._opened_at + self.rotate_s - self._clock())

    def _tick(self) -> None:
        if self._sink is not None and self._clock() - self._opened_at >= self.rotate_s:
            self._close_file()

    def _write(self, batches: list[list[bytes]], n: int) -> None:
        """Parse the lines into rows and append them; roll when the file is big enough."""
        try:
            batch, bad = self._encoder.encode(list(chain.from_iterable(batches)))
        except Exception as exc:
            self._count_errors(n, f"encoding {n} events failed: {exc!r}")
            return
        if bad:
            self._rejected(batches, bad)
        if not batch.num_rows:
            return
        try:
            sink = self._sink if self._sink is not None else self._open()
        except Exception as exc:
            self._fail(batch.num_rows, exc)
            return
        try:
            sink.append(batch)  # counts the rows in sink.rows before anything that can fail
        except Exception as exc:
            self._fail(0, exc)
            return
        if sink.size >= self.rotate_bytes:
            self._close_file()

    def _rejected(self, batches: list[list[bytes]], bad: list[tuple[int, str]]) -> None:
        self.rejected += len(bad)
        by_reason: dict[str, int] = {}
        for _, reason in bad:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        if self._on_rejected is not None:
            for reason, k in by_reason.items():
                self._on_rejected(reason, k)
        if self._sampler.should_log("rejected"):
            index, reason = bad[0]
            line = next(islice(chain.from_iterable(batches), index, None))
            logger.warning(f"recorder: {len(bad)} event(s) with no Parquet row ({reason}: {line[:200]!r}); counted")

    def _open(self) -> ParquetSink:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        while True:
            self._seq += 1
            path = self.stem.with_name(f"{self.stem.name}.{stamp}-{self._seq}.parquet")
            if path.exists():
                continue
            try:
                sink = ParquetSink(path)
            except FileExistsError:
                continue
            break
        self._sink = sink
        self._opened_at = self._clock()
        self.path = path
        return sink

    def _close_file(self) -> None:
        """Close the open file (its footer written, renamed from ``.part``) and count its rows as written."""
        sink = self._sink
        if sink is None:
            return
        self._sink = None
        try:
            sink.close()
        except Exception as exc:
            self._fail(0, exc, sink)
            return
        self.files += 1
        self.written += sink.rows
        if self._on_written is not None:
            self._on_written(sink.rows)

    def _fail(self, unappended: int, exc: BaseException, sink: ParquetSink | None = None) -> None:
        """Give up the open file: its rows, and ``unappended`` more, are lost and counted."""
        sink = sink if sink is not None else self._sink
        self._sink = None
        lost = unappended
        if sink is not None:
            lost += sink.rows
            sink.discard()
        self._count_errors(lost, f"writing {sink.part if sink else self.stem} failed: {exc!r}; {lost} events lost")

    def _count_errors(self, n: int, message: str) -> None:
        self.errors += n
        if self._on_error is not None and n:
            self._on_error(n)
        if self._sampler.should_log("write"):
            logger.error(f"recorder: {message}; counted, going on")

    def status_extra(self) -> str:
        return f" rejected={self.rejected} files={self.files}"
