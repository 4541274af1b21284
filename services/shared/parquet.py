"""Recorded lines as typed Parquet rows and back: the column table, the row encoder and a file sink.

Shared by ``mercury-export`` (a JSONL recording or a bundle's ``events.jsonl`` to a file), P2's
recorder (``RECORD_FORMAT=parquet``) and replay (a Parquet file back to the same events). Importing
this module loads pyarrow, about 20 MB of private memory and 80 MB of shared library pages, so P2
imports it only when it records Parquet.

A row holds the normalized event's fields in typed columns (:data:`COLUMNS`), ``time_ts`` (``time``
parsed to a UTC timestamp, null when it is not an ISO-8601 time) and ``extra``: a JSON object of
every key that has no column, or whose value does not fit its column (a JSON ``null``, another
JSON type), so the event can be rebuilt exactly. JSON has one kind of number, so an integer in a
float column is stored as a float (``100`` comes back as ``100.0``, equal as a number). A line
whose required field is missing or does not fit is rejected, counted under a reason, never stored.

Lines become rows on one of three paths, each holding to the same rows: the C line scanner
(``_rowscan.c``, :func:`scan_columns`) for a message of common lines, when it is built; msgspec's
decode of exactly the columns when it declines; and the exact per-line path for anything else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import msgspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from mercurystream.shared.recording import PART_SUFFIX, is_parquet
from mercurystream.shared.schema import FIELDS
from mercurystream.shared.schema import REQUIRED as REQUIRED_FIELDS
from mercurystream.shared.wire import SCAN_SPEC

_KINDS = {"str": "string", "number": "float64", "int": "int64", "bool": "bool"}
COLUMNS: tuple[tuple[str, str], ...] = tuple((f.name, _KINDS[f.kind]) for f in FIELDS)
"""The schema's fields in wire order (``shared.schema.FIELDS``), with their Parquet kind; the
schema's required fields are non-null, the rest nullable."""

TIME_TS = "time_ts"
EXTRA = "extra"
NAMES = tuple(name for name, _ in COLUMNS)
REQUIRED = frozenset(REQUIRED_FIELDS)
__all__ = [
    "COLUMNS",
    "SCHEMA",
    "ParquetSink",
    "RowEncoder",
    "events_of",
    "is_parquet",
    "iter_event_batches",
    "schema_problem",
]
_STAMPS = ("ingest_ts_ms", "ingest_ts_us", "recv_ts_ms", "recv_ts_us")

_ARROW = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_()}
TS_TYPE = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema(
    [pa.field(name, _ARROW[kind], nullable=name not in REQUIRED) for name, kind in COLUMNS]
    + [pa.field(TIME_TS, TS_TYPE), pa.field(EXTRA, pa.string())]
)

COMPRESSION = "zstd"
ROW_GROUP_ROWS = 32768
"""Rows per row group at most: enough for zstd and DuckDB's column scans, about 5 MB of Arrow data."""
ROW_GROUP_BYTES = 8 << 20
"""Arrow bytes per row group at most, for events far larger than P1's."""

REJECT_REASONS = ("invalid_json", "not_object", "missing_field", "wrong_type", "too_deep")
"""Why a line has no row: not JSON, JSON but not an object, a required field absent, one that does not fit,
extra keys nested deeper than orjson writes (254 levels; it reads 1,024)."""

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_EXACT_FLOAT_INT = 1 << 53
"""The largest integer a float64 holds exactly; a larger one in a float column goes to ``extra``."""
_FAST_TYPES = {
    "string": str,
    "float64": Annotated[int, msgspec.Meta(ge=-_EXACT_FLOAT_INT, le=_EXACT_FLOAT_INT)] | float,
    "int64": Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)],
    "bool": bool,
}
_FAST_ROW = msgspec.defstruct(
    "FastRow",
    [(name, _FAST_TYPES[kind]) if name in REQUIRED else (name, _FAST_TYPES[kind], None) for name, kind in COLUMNS],
    forbid_unknown_fields=True,
    kw_only=True,
    gc=False,
)
"""Exactly the columns in their order, for the common line: every optional key absent or well typed.
Unknown keys or a mistyped value fail the decode and send the line to the exact path. An optional
field's type leaves ``null`` out while its default is ``None`` (msgspec does not check defaults):
a JSON ``null`` fails the decode too (it belongs in ``extra``), so ``None`` here means absent."""
_COLUMNS_STRUCT = pa.struct(list(SCHEMA)[: len(COLUMNS)])
_FAST_DECODER = msgspec.json.Decoder(_FAST_ROW)
_decode_fast = _FAST_DECODER.decode
try:
    from mercurystream.shared import _rowscan
except ImportError:  # built without a C compiler: the plain decode below does all the work
    _rowscan = None
_ARROW_TYPES = tuple(_ARROW[kind] for _, kind in COLUMNS)
DICTIONARY_COLUMNS = tuple(f.name for f in FIELDS if f.kind == "str" and not f.time)
"""Columns written dictionary-encoded: labels that repeat (type, product, side, venue, feed). A
time or an id rarely repeats, and trying a dictionary on it first costs the writer time for nothing."""
DELTA_ENCODINGS: dict[str, str] = {
    **{f.name: "DELTA_BINARY_PACKED" for f in FIELDS if f.kind == "int"},
    **{f.name: "DELTA_BYTE_ARRAY" for f in FIELDS if f.kind == "str" and f.time},
    TIME_TS: "DELTA_BINARY_PACKED",
}
"""Columns written as differences from the row before: ids, sequences, stamps and times mostly climb
in small steps, and a time string shares most of its bytes with the one before. A delta is a
byte or two where the plain value is eight (or 27 for a time), so zstd gets a fraction of the
bytes to compress: the writer spends less time and the file comes out a little smaller. DuckDB
and pyarrow read these encodings."""


def _fits(kind: str, value: object) -> bool:
    t = type(value)
    if kind == "string":
        return t is str
    if kind == "bool":
        return t is bool
    if kind == "int64":
        return t is int and _INT64_MIN <= value <= _INT64_MAX  # type: ignore[operator]
    return t is float or (t is int and -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT)  # type: ignore[operator]


class RowEncoder:
    """Recorded lines → Arrow record batches of :data:`SCHEMA`; each rejected line counted by reason.

    Blank lines are skipped without a count (a JSONL file may end with one). :meth:`encode` returns
    the batch and the indexes of the rejected lines with their reasons, so a caller that knows
    line numbers can report them.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def encode_joined(self, data: bytes | memoryview, n: int, scan: bool = True) -> pa.RecordBatch | None:
        """The rows of ``n`` lines given back to back in ``data``, in one decode; ``None`` unless all ``n`` are common.

        The caller vouches that each of its lines is one JSON object (P2's recorded lines are), so
        ``n`` objects decoded from ``data`` are its ``n`` lines in order. ``None`` sends the caller
        to :meth:`encode` with the lines split, where each is judged alone. The C scanner
        (:func:`scan_columns`) goes first when built and ``scan`` is true; what it declines, the
        plain decode judges.
        """
        columns = scan_columns(data, n) if scan else None
        if columns is None:
            try:
                rows = _FAST_DECODER.decode_lines(data)
            except (msgspec.DecodeError, RecursionError):
                return None
            if len(rows) != n or not n:
                return None
            columns = _columns(rows)
        batch = _record_batch(columns, None)
        self.rows += batch.num_rows
        return batch

    def encode(self, lines: Sequence[bytes]) -> tuple[pa.RecordBatch, list[tuple[int, str]]]:
        columns = self._fast(lines)
        extra: list[str | None] | None = None
        bad: list[tuple[int, str]] = []
        if columns is None:
            columns, extra, bad = self._exact(lines)
        for _, reason in bad:
            self.rejected[reason] += 1
        batch = _record_batch(columns, extra)
        self.rows += batch.num_rows
        return batch, bad

    @staticmethod
    def _fast(lines: Sequence[bytes]) -> list[pa.Array] | None:
        """Every line decoded by the struct and converted in C-level passes, or ``None`` for the exact path."""
        if not lines:
            return None
        try:
            rows = list(map(_decode_fast, lines))
        except (msgspec.DecodeError, RecursionError):
            return None
        return _columns(rows)

    @staticmethod
    def _exact(lines: Sequence[bytes]) -> tuple[list[pa.Array], list[str | None], list[tuple[int, str]]]:
        """Line by line: blank lines skipped, bad ones listed, keys without a fitting column kept in ``extra``."""
        rows: list[tuple[Any, ...]] = []
        extra: list[str | None] = []
        bad: list[tuple[int, str]] = []
        for i, raw in enumerate(lines):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad.append((i, "invalid_json"))
                continue
            if type(obj) is not dict:
                bad.append((i, "not_object"))
                continue
            reason = _rejection(obj)
            if reason is not None:
                bad.append((i, reason))
                continue
            rest = dict(obj)
            row = []
            for name, kind in COLUMNS:
                value = obj.get(name)
                if value is not None and _fits(kind, value):
                    row.append(value)
                    del rest[name]
                else:
                    row.append(None)
            try:
                kept = orjson.dumps(rest).decode() if rest else None
            except orjson.JSONEncodeError:
                bad.append((i, "too_deep"))
                continue
            rows.append(tuple(row))
            extra.append(kept)
        return pa.array(rows, type=_COLUMNS_STRUCT).flatten(), extra, bad


def _rejection(obj: dict[str, Any]) -> str | None:
    """Why an event has no row: a required field absent or not of its column's kind; ``None`` if it has one."""
    for name, kind in COLUMNS:
        if name in REQUIRED:
            if name not in obj:
                return "missing_field"
            if not _fits(kind, obj[name]):
                return "wrong_type"
    return None


def _columns(rows: list[Any]) -> list[pa.Array]:
    """Decoded fast rows as one Arrow array per column (a struct array built in C, then flattened)."""
    return pa.array(list(map(msgspec.structs.astuple, rows)), type=_COLUMNS_STRUCT).flatten()


def scan_columns(data: bytes | memoryview, n: int) -> list[pa.Array] | None:
    """The columns of ``n`` common lines back to back in ``data``, by the C scanner (``_rowscan.c``).

    ``None`` when the scanner is not built or declines a line; it takes a subset of what the plain
    decode in :meth:`RowEncoder.encode_joined` takes (plain ASCII strings, no escapes) and must give
    the same columns, which a property test holds.
    """
    if _rowscan is None:
        return None
    scanned = _rowscan.scan(data, n, *SCAN_SPEC)
    if scanned is None:
        return None
    columns = []
    for arrow_type, (validity, values, chars, nulls) in zip(_ARROW_TYPES, scanned, strict=True):
        buffers = [None if validity is None else pa.py_buffer(validity), pa.py_buffer(values)]
        if chars is not None:
            buffers.append(pa.py_buffer(chars))
        columns.append(pa.Array.from_buffers(arrow_type, n, buffers, null_count=nulls))
    return columns


def _record_batch(columns: list[pa.Array], extra: list[str | None] | None) -> pa.RecordBatch:
    """The columns, ``time_ts`` parsed from ``time``, and ``extra`` (``None``: no line has any)."""
    kept = pa.nulls(len(columns[0]), pa.string()) if extra is None else pa.array(extra, type=pa.string())
    arrays = [*columns, _parse_times(columns[NAMES.index("time")]), kept]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _parse_times(times: pa.Array) -> pa.Array:
    """``time`` as UTC timestamps: one cast per batch; element by element (null if unparsable) if that fails."""
    try:
        return times.cast(TS_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = []
    for t in times:
        try:
            out.append(t.cast(TS_TYPE))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(None)
    return pa.array(out, type=TS_TYPE)


_READABLE: dict[str, Any] = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "float64": lambda t: pa.types.is_integer(t) or pa.types.is_float32(t) or pa.types.is_float64(t),
    "int64": pa.types.is_integer,
    "bool": pa.types.is_boolean,
}
"""Arrow types whose values :func:`events_of` turns into the JSON value of a column's kind: any
width of integer, a float (not half: Python has no such float), the string kinds."""


def schema_problem(schema: pa.Schema) -> str | None:
    """Why the columns :func:`events_of` reads cannot be events (one line), or ``None`` if they can.

    A file another tool wrote may give a column another type: a decimal ``price`` or a binary
    ``product_id`` has no JSON value, so the whole file is refused, not each of its rows. A
    dictionary-encoded column is judged by its values; a column of nulls only is absent in every row.
    """
    for name, kind in (*COLUMNS, (EXTRA, "string")):
        count = schema.names.count(name)
        if count > 1:
            return f"column {name} appears {count} times"
        if not count:
            continue
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_null(t) or _READABLE[kind](t)):
            return f"column {name} is {t}, not {_ARROW[kind]}"
    return None


def events_of(batch: pa.RecordBatch | pa.Table, bad: list[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """The events a batch of rows was made from: non-null columns in wire order, ``extra`` merged back.

    Keys from ``extra`` go before the timestamps, where P1 puts the extra keys of a message it
    forwards as received. A row whose ``extra`` is not a JSON object (only a file not written here
    has one) has no event: with ``bad`` it is skipped and listed as ``(row index, reason)``
    (``invalid_json`` or ``not_object``), without it ``ValueError`` is raised. The columns'
    types are :func:`schema_problem`'s to check.
    """
    names = [n for n in NAMES if n in batch.schema.names]
    data = batch.select(names).to_pydict()
    extras = batch.column(EXTRA).to_pylist() if EXTRA in batch.schema.names else [None] * batch.num_rows
    body = [n for n in names if n not in _STAMPS]
    stamps = [n for n in names if n in _STAMPS]
    body_cols = [data[n] for n in body]
    stamp_cols = [data[n] for n in stamps]
    events = []
    for i, ex in enumerate(extras):
        event = {n: c[i] for n, c in zip(body, body_cols, strict=True) if c[i] is not None}
        if ex is not None:
            try:
                kept = orjson.loads(ex)
                reason = None if type(kept) is dict else "not_object"
            except orjson.JSONDecodeError:
                reason = "invalid_json"
            if reason is not None:
                if bad is None:
                    raise ValueError(f"row {i}: its {EXTRA} column is {reason.replace('_', ' ')}")
                bad.append((i, reason))
                continue
            event.update(kept)
        for n, c in zip(stamps, stamp_cols, strict=True):
            if c[i] is not None:
                event[n] = c[i]
        events.append(event)
    return events


def iter_event_batches(path: str | os.PathLike[str], batch_rows: int = 4096) -> Iterator[list[dict[str, Any]]]:
    """The events of a Parquet file, one list per up to ``batch_rows`` rows, reading one row group at a time."""
    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=batch_rows):
            yield events_of(batch)


class ParquetSink:
    """One Parquet file, written as ``<name>.part`` and renamed to ``<name>`` when it is closed.

    Rows are buffered in Arrow until a row group is full (:data:`ROW_GROUP_ROWS` rows or
    :data:`ROW_GROUP_BYTES` bytes), so a reader never sees a half-written file under the final
    name and row groups stay large however small the appends. ``rows`` counts every row appended,
    ``size`` the bytes of the file so far.
    """

    def __init__(
        self,
        path: Path,
        row_group_rows: int = ROW_GROUP_ROWS,
        row_group_bytes: int = ROW_GROUP_BYTES,
        compression: str = COMPRESSION,
    ) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + PART_SUFFIX)
        self.rows = 0
        self._row_group_rows = row_group_rows
        self._row_group_bytes = row_group_bytes
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._file: BinaryIO = open(self.part, "xb")  # noqa: SIM115 - closed by close() or discard()
        self._writer = pq.ParquetWriter(
            self._file,
            SCHEMA,
            compression=compression,
            use_dictionary=list(DICTIONARY_COLUMNS),
            column_encoding=DELTA_ENCODINGS,
        )

    @property
    def size(self) -> int:
        """Bytes written to the file so far (the buffered row group and the footer not included)."""
        return self._file.tell()

    def append(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self._buffer.append(batch)
        self._buffered_rows += batch.num_rows
        self._buffered_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self._buffered_rows >= self._row_group_rows or self._buffered_bytes >= self._row_group_bytes:
            self.flush_row_group()

    def flush_row_group(self) -> None:
        """Write what is buffered as row groups of at most the configured rows."""
        if not self._buffer:
            return
        table = pa.Table.from_batches(self._buffer, schema=SCHEMA)
        self._buffer = []
        self._buffered_rows = self._buffered_bytes = 0
        self._writer.write_table(table, row_group_size=self._row_group_rows)

    def close(self) -> Path:
        """Write the rest and the footer, then rename the file to its final name."""
        self.flush_row_group()
        self._writer.close()
        self._file.close()
        os.replace(self.part, self.path)
        return self.path

    def discard(self) -> None:
        """Give the file up (after a failed write): close what can be closed and remove the ``.part``."""
        self._buffer = []
        for close in (self._writer.close, self._file.close):
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(OSError):
            self.part.unlink(missing_ok=True)
