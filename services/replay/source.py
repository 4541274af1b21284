"""Reading a recording: a streaming JSONL (or Parquet) reader and the queue the sender takes batches from, sans I/O.

The file is read in fixed-size chunks and split on newlines by
:class:`~mercurystream.shared.recording.LineSplitter`, never loaded whole and never read a line at a
time: memory stays bounded by the chunk plus the longest allowed line, even for a file that is one
gigantic line. A line is oversize by its length without the newline, whatever the chunking.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from mercurystream.replay.inject import Injector, Item
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES
from mercurystream.shared.recording import read_lines
from mercurystream.shared.wire import NOT_JSON, parse_payload

CHUNK_BYTES = 64 * 1024
"""Below glibc's 128 KiB mmap threshold, so each read reuses heap memory instead of faulting in fresh pages."""
MAX_REPORTED_LINES = 10

_DICT_ONLY = {dict}

MALFORMED_REASONS = ("invalid_json", "not_object", "oversize", "too_deep")
"""Why a line is skipped: not JSON, JSON but not an object, longer than P2 accepts in one frame,
nested too deep to write back."""
MAX_DEPTH = 254
"""Nesting orjson writes back (it reads up to 1,024 levels): a deeper object could not be re-sent."""
DEEP_MIN_BYTES = 2 * MAX_DEPTH
"""A shorter line cannot nest deeper than :data:`MAX_DEPTH`, so only longer ones are checked."""


def lenient_refusal(payload: bytes) -> str | None:
    """For a payload orjson refused: why replay does not send it (``invalid_json``, ``not_object``),
    or ``None`` when P2's lenient parse reads it as an object (``NaN``, ``1e400``, a lone surrogate),
    and it is sent as its bytes. The file and the JetStream reader both judge by it."""
    obj = parse_payload(payload)
    if obj is NOT_JSON:
        return "invalid_json"
    return None if type(obj) is dict else "not_object"


class JsonlReader:
    """Validated events from a JSONL stream, in batches of one chunk's lines.

    ``parse=False`` yields the stripped line bytes (validated, then sent as they are);
    ``parse=True`` yields the parsed dicts, for when every event has to be rewritten anyway.
    Blank lines are ignored; malformed ones are counted by reason and their first line numbers kept.

    A line is JSON when P2 reads it as JSON (:func:`~mercurystream.shared.wire.parse_payload`): one
    orjson refuses but P2 reads (``NaN``, ``1e400``, a lone surrogate escape: P2 counts it schema
    drift and records it) is sent, always as its bytes, and counted in :attr:`lenient`. Only the
    lines of a chunk orjson refuses pay for the second parse.
    """

    def __init__(
        self,
        f: BinaryIO,
        parse: bool = False,
        limit: int | None = None,
        max_line_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self._f = f
        self._parse = parse
        self._limit = limit
        self._max = max_line_bytes
        self._chunk = chunk_bytes
        self.lines = 0
        self.events = 0
        self.blank = 0
        self.bytes_read = 0
        self.malformed: dict[str, int] = dict.fromkeys(MALFORMED_REASONS, 0)
        self.malformed_lines: list[int] = []
        """The first :data:`MAX_REPORTED_LINES` malformed line numbers (1-based)."""
        self.lenient = 0
        """Lines only P2's lenient parse reads, sent as bytes (orjson cannot hold their values)."""

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def batches(self) -> Iterator[list[Item]]:
        if self._full():
            return
        for size, lines, over in read_lines(self._f, self._max, self._chunk):
            self.bytes_read += size
            batch = self._validate(lines, over)
            if batch:
                yield batch
            if self._full():
                return

    def _full(self) -> bool:
        return self._limit is not None and self.events >= self._limit

    def _validate(self, lines: list[bytes], over: list[int]) -> list[Item]:
        """Valid items of ``lines`` (``over``: the positions of lines over the length limit, blanked),
        stopping at the event limit so nothing past it is read or counted."""
        if not lines:
            return []
        room = len(lines) if self._limit is None else self._limit - self.events
        if not over:
            fast = self._validate_clean(lines[:room] if room < len(lines) else lines)
            if fast is not None:
                return fast
        return self._validate_each(lines, room, set(over))

    def _validate_clean(self, lines: list[bytes]) -> list[Item] | None:
        """All of ``lines`` as items in C-level passes when every one is a valid object, else ``None``.

        A recording is nearly always clean, so a chunk is checked as a whole: strip and parse run as
        ``map`` over the list, with no Python bytecode per line. Any blank, invalid or non-object
        line sends the whole chunk to :meth:`_validate_each`, as an oversize one already has, which
        counts exactly what it would have counted line by line; the parse is the same
        ``orjson.loads`` either way.
        """
        if not lines:
            return None
        stripped = list(map(bytes.strip, lines))
        if b"" in stripped:
            return None
        try:
            if self._parse:
                items: list[Item] = list(map(orjson.loads, stripped))
                kinds = set(map(type, items))
            else:
                # Each dict is dropped as soon as its type is taken, so the next parse reuses its memory.
                items = stripped  # type: ignore[assignment]
                kinds = set(map(type, map(orjson.loads, stripped)))
        except orjson.JSONDecodeError:
            return None
        if kinds != _DICT_ONLY:
            return None
        if max(map(len, stripped)) > DEEP_MIN_BYTES and any(
            len(line) > DEEP_MIN_BYTES and _too_deep(line) for line in stripped
        ):
            return None
        n = len(stripped)
        self.lines += n
        self.events += n
        return items

    def _validate_each(self, lines: list[bytes], room: int, over: set[int]) -> list[Item]:
        out: list[Item] = []
        append = out.append
        loads = orjson.loads
        bad_json = orjson.JSONDecodeError
        parse = self._parse
        lineno = self.lines
        blank = 0
        for k, raw in enumerate(lines):
            if len(out) >= room:
                break
            lineno += 1
            if over and k in over:
                self._bad("oversize", lineno)
                continue
            line = raw.strip()
            if not line:
                blank += 1
                continue
            try:
                obj = loads(line)
            except bad_json:
                reason = lenient_refusal(line)
                if reason is not None:
                    self._bad(reason, lineno)
                else:
                    # Never re-serialized by orjson (it would write NaN as null), so no depth limit.
                    self.lenient += 1
                    append(line)
                continue
            if type(obj) is not dict:
                self._bad("not_object", lineno)
                continue
            if len(line) > DEEP_MIN_BYTES and _too_deep(obj):
                self._bad("too_deep", lineno)
                continue
            append(obj if parse else line)
        self.lines = lineno
        self.blank += blank
        self.events += len(out)
        return out

    def _bad(self, reason: str, lineno: int) -> None:
        self.malformed[reason] += 1
        if len(self.malformed_lines) < MAX_REPORTED_LINES:
            self.malformed_lines.append(lineno)


def _too_deep(obj: dict[str, Any] | bytes) -> bool:
    """Whether orjson cannot write ``obj`` (or the object of a valid line) back: it nests past :data:`MAX_DEPTH`,
    so restamping or drift would fail on it."""
    try:
        orjson.dumps(orjson.loads(obj) if type(obj) is bytes else obj)
    except orjson.JSONEncodeError:
        return True
    return False


class EventQueue:
    """Takes exactly ``n`` ready items at a time from reader batches passed through the injector."""

    def __init__(self, batches: Iterator[list[Item]], injector: Injector | None = None) -> None:
        self._batches = batches
        self._injector = injector
        self._pending: list[Item] = []
        self._pos = 0
        self._exhausted = False

    def take(self, n: int) -> list[Item]:
        """Up to ``n`` items; fewer only at the end of the stream, then ``[]``."""
        while len(self._pending) - self._pos < n and not self._exhausted:
            self._refill()
        out = self._pending[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def _refill(self) -> None:
        batch = next(self._batches, None)
        inj = self._injector
        if batch is None:
            self._exhausted = True
            more = inj.flush() if inj is not None else []
        else:
            more = inj.feed(batch) if inj is not None else batch
        if not more:
            return
        rest = self._pending[self._pos :] if self._pos < len(self._pending) else []
        self._pending = rest + more if rest else more
        self._pos = 0


PARQUET_BATCH_ROWS = 4096


class ParquetReader:
    """Events from a Parquet recording (``mercury-export``, ``RECORD_FORMAT=parquet``), as :class:`JsonlReader` gives.

    Each row becomes the event it was made from (``extra`` keys restored) as JSON bytes, or the dict
    with ``parse=True``. Rows are read one record batch at a time, so memory stays bounded. A file
    that cannot be read, or whose columns have types that are no JSON value (a decimal ``price``, a
    binary ``product_id``: ``shared.parquet.schema_problem``), raises ``OSError`` with one line: at
    :meth:`open_check`, or mid-file from :meth:`batches`. A row whose ``extra`` is not a JSON object
    (``invalid_json``, ``not_object``) or whose event nests too deep to write (``too_deep``) is
    skipped and counted, its row number (1-based) kept as a JSONL reader keeps line numbers.
    """

    def __init__(self, f: BinaryIO, parse: bool = False, limit: int | None = None) -> None:
        self._f = f
        self._parse = parse
        self._limit = limit
        self.lines = 0
        self.events = 0
        self.blank = 0
        self.bytes_read = 0
        self.malformed: dict[str, int] = dict.fromkeys(MALFORMED_REASONS, 0)
        self.malformed_lines: list[int] = []
        self.lenient = 0
        self._file = self.open_check(f)

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    @staticmethod
    def open_check(f: BinaryIO) -> Any:
        """The opened ``ParquetFile``, or ``OSError`` when it is not one, lacks the required columns or
        has a column of a type that is no JSON value."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mercurystream.shared.parquet import REQUIRED, schema_problem

        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise OSError(f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        missing = sorted(REQUIRED - set(pf.schema_arrow.names))
        if missing:
            raise OSError(f"not a recording: the Parquet file has no column {', '.join(missing)}")
        problem = schema_problem(pf.schema_arrow)
        if problem:
            raise OSError(f"not a recording: {problem}")
        return pf

    def batches(self) -> Iterator[list[Item]]:
        import pyarrow as pa

        from mercurystream.shared.parquet import events_of

        pf = self._file
        total = pf.metadata.num_rows or 1
        size = pf.metadata.serialized_size
        with contextlib.suppress(OSError, ValueError):
            size = os.fstat(self._f.fileno()).st_size
        it = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        while self._limit is None or self.events < self._limit:
            bad: list[tuple[int, str]] = []
            try:
                batch = next(it, None)
                if batch is None:
                    return
                if self._limit is not None and self.events + batch.num_rows > self._limit:
                    batch = batch.slice(0, self._limit - self.events)
                events = events_of(batch, bad)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise OSError(f"the Parquet file is damaged after {self.lines} rows: {exc}") from None
            items = self._writable(events, bad, batch.num_rows)
            for i, reason in sorted(bad):
                self._bad(reason, self.lines + i + 1)
            self.lines += batch.num_rows
            self.events += len(items)
            self.bytes_read = size * self.lines // total
            if items:
                yield items

    def _writable(self, events: list[dict[str, Any]], bad: list[tuple[int, str]], rows: int) -> list[Item]:
        """The events (or their JSON) that orjson can write back; the others listed in ``bad`` as ``too_deep``.

        Every event is written once even with ``parse=True``, so aging or restamping never meets one it cannot write.
        """
        try:
            payloads = list(map(orjson.dumps, events))
        except orjson.JSONEncodeError:
            skipped = {i for i, _ in bad}
            row_of = [i for i in range(rows) if i not in skipped]
            keep: list[dict[str, Any]] = []
            payloads = []
            for row, ev in zip(row_of, events, strict=True):
                try:
                    payloads.append(orjson.dumps(ev))
                except orjson.JSONEncodeError:
                    bad.append((row, "too_deep"))
                    continue
                keep.append(ev)
            events = keep
        return events if self._parse else payloads  # type: ignore[return-value]

    def _bad(self, reason: str, row: int) -> None:
        self.malformed[reason] += 1
        if len(self.malformed_lines) < MAX_REPORTED_LINES:
            self.malformed_lines.append(row)
