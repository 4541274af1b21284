"""Deterministic anomaly injection and the timestamp policy of a replay, sans I/O.

An *item* is one event: ``bytes`` (a line already validated as a JSON object, sent unchanged when
nothing must change it) or a ``dict`` (parsed because some option has to rewrite it). A line is
re-serialized only when an option changes it; restamping cuts a line as P1 and P2 write it at its
stamps rather than round-tripping it through a dict.

A *lenient* line is one P2 reads but orjson does not (``NaN``, ``1e400``, a lone surrogate escape;
``shared.wire.parse_payload``). It stays bytes, since orjson would write ``NaN`` as ``null`` and
refuses a surrogate: restamping cuts its stamps off as for any line, or splices the send stamps
before its closing brace as P2 splices its own when it has none, so its values keep their bytes;
only a lenient line with stamps elsewhere, or one aged or drifted, is re-serialized, by Python's
``json`` (every value kept, ``1e400`` written as ``Infinity``, which P2 reads as the same number).

Order of operations, each stage seeing only what the previous one let through:

1. ``gap``        drop each event with probability ``gap_rate``;
2. ``drift``      corrupt the schema of each remaining event with probability ``drift_rate``;
3. ``duplicate``  emit each event twice in a row with probability ``duplicate_rate``;
4. ``shuffle``    permute each consecutive window of ``shuffle_window`` events (the last may be short);
5. timestamps     at send time (:class:`PayloadEncoder`): restamp ``ingest_ts_*`` and strip
                  ``recv_ts_*``, or keep all four as recorded; then age ``ingest_ts_*`` by ``latency_ms``.

A dropped event is never also counted as drifted; a duplicate repeats the event as it will be
sent, drift included, so P2 sees a true duplicate; shuffling last lets the two copies of a
duplicate move apart and scatters drifted events like any others.

Each random stage draws from its own generator derived from the seed, one draw per event it sees,
so enabling one option never changes what another does, and the output does not depend on how
the input was cut into batches. Drift kinds rotate in a fixed order for the same reason.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat
from operator import add
from typing import Any

import orjson

from mercurystream.shared.event import INGEST_MS, INGEST_US, RECV_MS, RECV_US
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES, HEADER
from mercurystream.shared.wire import parse_payload

Item = bytes | dict[str, Any]

_TAIL_START = b',"%b":' % INGEST_MS.encode()
_STAMPED_TAIL = re.compile(
    rb',"%b":-?\d+(?:,"%b":-?\d+)?(?:,"%b":-?\d+(?:,"%b":-?\d+)?)?\}'
    % (INGEST_MS.encode(), INGEST_US.encode(), RECV_MS.encode(), RECV_US.encode())
)
"""The end of a line as P1 and P2 write it: only the four stamps, in their order, then the closing brace.

A match at the last ``,"ingest_ts_ms":`` of a valid JSON object is a top-level member sequence
(an unescaped quote cannot occur inside a string, and the single brace must close the object)."""

_STAMP_DIGITS = {INGEST_MS: 13, INGEST_US: 16, RECV_MS: 13, RECV_US: 16}
"""Digits of a stamp from 2001 to 2286: in that span a line's stamps have one width, whatever their values."""
_FIXED_TAILS = tuple(
    b"".join(b',"%b":%b' % (key.encode(), b"0" * _STAMP_DIGITS[key]) for key in keys) + b"}"
    for keys in (
        (INGEST_MS, INGEST_US, RECV_MS, RECV_US),
        (INGEST_MS, INGEST_US),
        (INGEST_MS, INGEST_US, RECV_MS),
        (INGEST_MS, RECV_MS, RECV_US),
        (INGEST_MS, RECV_MS),
        (INGEST_MS,),
    )
)
"""The forms of :data:`_STAMPED_TAIL` at those widths, digits written as ``0``: P2's recording first."""
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_BYTES_ONLY = {bytes}
INT64_MIN = -(2**63)
"""The least integer JSON encoders (and P2) take."""


def _fixed_tail(lines: list[bytes]) -> int | None:
    """The length of the stamps every line ends with, if that is one of :data:`_FIXED_TAILS` for all; else ``None``.

    The batch form of ``rfind`` + :data:`_STAMPED_TAIL`, in a few C-level passes over the lines'
    ends instead of a regex per line: the last bytes of every line, digits turned into ``0``, must
    be the first line's form. A tail holds only the one marker it starts with, so that is where
    ``rfind`` cuts and the regex matches. Other widths (a stamp before 2001, a negative one) and
    mixed forms return ``None``, for the per-line path.
    """
    first = lines[0].translate(_DIGITS_TO_ZERO)
    tail = next((t for t in _FIXED_TAILS if first.endswith(t)), None)
    if tail is None:
        return None
    size = len(tail)
    if min(map(len, lines)) <= size:
        return None
    ends = b"".join(map(bytes.__getitem__, lines, repeat(slice(-size, None))))
    if ends.translate(_DIGITS_TO_ZERO) != tail * len(lines):
        return None
    return size


_STAMP_KEYS = (INGEST_MS, INGEST_US, RECV_MS, RECV_US)


def _lenient_dumps(obj: Any) -> bytes | None:
    """A lenient line's object written back by Python's ``json`` (``NaN``, infinities, integers of any
    size; non-ASCII and lone surrogates as ``\\u`` escapes), or ``None`` if even that cannot write it."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()
    except (ValueError, TypeError, RecursionError):
        return None


def _lenient_dict(line: bytes) -> dict[str, Any] | None:
    """A line orjson refused, parsed as P2 parses it; ``None`` if it is no object even to P2."""
    obj = parse_payload(line)
    return obj if type(obj) is dict else None


def _frame_all(payloads: list[bytes]) -> bytes:
    """``payloads`` framed as one buffer, the headers packed by ``map`` rather than a loop."""
    parts: list[bytes] = [b""] * (2 * len(payloads))
    parts[0::2] = map(HEADER.pack, map(len, payloads))
    parts[1::2] = payloads
    return b"".join(parts)


REQUIRED_KEYS = ("type", "product_id", "price", "last_size", "time", "trade_id")
"""Required keys of P2's drift detector that a replay may break (``ingest_ts_ms`` is restamped)."""


def _missing_key(ev: dict[str, Any], n: int) -> None:
    ev.pop(REQUIRED_KEYS[n % len(REQUIRED_KEYS)], None)


def _price_string(ev: dict[str, Any], n: int) -> None:
    ev["price"] = str(ev.get("price"))


def _trade_id_float(ev: dict[str, Any], n: int) -> None:
    tid = ev.get("trade_id")
    ev["trade_id"] = float(tid) if isinstance(tid, int | float) else 0.5


def _trade_id_bool(ev: dict[str, Any], n: int) -> None:
    ev["trade_id"] = True


def _last_size_null(ev: dict[str, Any], n: int) -> None:
    ev["last_size"] = None


def _time_number(ev: dict[str, Any], n: int) -> None:
    ms = ev.get(INGEST_MS)
    ev["time"] = ms if type(ms) is int else 0


DRIFT_KINDS = (
    ("missing_key", _missing_key),
    ("price_string", _price_string),
    ("trade_id_float", _trade_id_float),
    ("trade_id_bool", _trade_id_bool),
    ("last_size_null", _last_size_null),
    ("time_number", _time_number),
)
"""The schema breaks a replay injects, in rotation: each one is ``schema_drift`` by P2's definition.

Breaking ``trade_id`` also hides that id from P2's gap detector, which then counts it missing:
the same thing real upstream drift would do."""


@dataclass(frozen=True, slots=True)
class InjectOptions:
    """What to inject; invalid values raise ``ValueError`` with a message fit for the user."""

    shuffle_window: int = 0
    duplicate_rate: float = 0.0
    drift_rate: float = 0.0
    gap_rate: float = 0.0
    latency_ms: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("duplicate_rate", "drift_rate", "gap_rate"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {p}")
        if self.shuffle_window < 0:
            raise ValueError(f"--shuffle-window must be 0 (off) or a window size, got {self.shuffle_window}")
        if self.latency_ms < 0:
            raise ValueError(f"--latency-ms must be 0 or more, got {self.latency_ms}")

    @property
    def active(self) -> bool:
        """True when some stage of :class:`Injector` changes the stream (latency is the encoder's)."""
        return self.shuffle_window > 1 or self.duplicate_rate > 0 or self.drift_rate > 0 or self.gap_rate > 0


def _stage_rng(seed: int, stage: str) -> random.Random:
    return random.Random(f"mercury-replay:{seed}:{stage}")


class Injector:
    """Stages 1-4 over a stream fed in batches of any size; :meth:`flush` ends the stream.

    Input items are never mutated: a drifted event is a new dict.
    """

    def __init__(self, options: InjectOptions) -> None:
        self.options = options
        self._gap = _stage_rng(options.seed, "gap")
        self._drift = _stage_rng(options.seed, "drift")
        self._dup = _stage_rng(options.seed, "duplicate")
        self._shuffle = _stage_rng(options.seed, "shuffle")
        self._window: list[Item] = []
        self.counts: dict[str, int] = {"gap": 0, "drift": 0, "duplicate": 0, "shuffle": 0}
        """Events dropped, drifted, sent twice, and moved from their place by a shuffle."""
        self.drift_kinds: dict[str, int] = {name: 0 for name, _ in DRIFT_KINDS}

    def active_counts(self) -> dict[str, int]:
        """The counts of the stages that are switched on."""
        opts = self.options
        on = {
            "gap": opts.gap_rate > 0,
            "drift": opts.drift_rate > 0,
            "duplicate": opts.duplicate_rate > 0,
            "shuffle": opts.shuffle_window > 1,
        }
        return {k: v for k, v in self.counts.items() if on[k]}

    def feed(self, batch: list[Item]) -> list[Item]:
        """The items ready to send after this batch (a shuffle holds back an incomplete window)."""
        opts = self.options
        if opts.gap_rate > 0:
            batch = self._apply_gap(batch)
        if opts.drift_rate > 0:
            batch = self._apply_drift(batch)
        if opts.duplicate_rate > 0:
            batch = self._apply_duplicate(batch)
        if opts.shuffle_window > 1:
            batch = self._apply_shuffle(batch, final=False)
        return batch

    def flush(self) -> list[Item]:
        """What is still held at the end of the stream: the last, shorter shuffle window."""
        if self.options.shuffle_window > 1:
            return self._apply_shuffle([], final=True)
        return []

    def run(self, items: Iterable[Item]) -> list[Item]:
        """The whole stream at once (tests, small files)."""
        return self.feed(list(items)) + self.flush()

    def _apply_gap(self, batch: list[Item]) -> list[Item]:
        draw = self._gap.random
        p = self.options.gap_rate
        kept = [it for it in batch if draw() >= p]
        self.counts["gap"] += len(batch) - len(kept)
        return kept

    def _apply_drift(self, batch: list[Item]) -> list[Item]:
        draw = self._drift.random
        p = self.options.drift_rate
        out = batch
        for i, it in enumerate(batch):
            if draw() < p:
                if out is batch:
                    out = list(batch)
                out[i] = self._drift_one(it)
        return out

    def _drift_one(self, item: Item) -> Item:
        """The event broken by the next kind in rotation: a dict, or bytes for a lenient line
        (re-serialized by Python's ``json``; one it cannot write is left as it is, not counted)."""
        lenient = False
        if type(item) is bytes:
            try:
                ev = orjson.loads(item)
            except orjson.JSONDecodeError:
                ev = _lenient_dict(item)
                if ev is None:
                    return item
                lenient = True
        else:
            ev = dict(item)
        n = self.counts["drift"]
        name, breaker = DRIFT_KINDS[n % len(DRIFT_KINDS)]
        breaker(ev, n // len(DRIFT_KINDS))
        if lenient:
            out = _lenient_dumps(ev)
            if out is None:
                return item
        self.counts["drift"] = n + 1
        self.drift_kinds[name] += 1
        return out if lenient else ev

    def _apply_duplicate(self, batch: list[Item]) -> list[Item]:
        draw = self._dup.random
        p = self.options.duplicate_rate
        out: list[Item] = []
        append = out.append
        for it in batch:
            append(it)
            if draw() < p:
                append(it)
        self.counts["duplicate"] += len(out) - len(batch)
        return out

    def _apply_shuffle(self, batch: list[Item], final: bool) -> list[Item]:
        w = self.options.shuffle_window
        held = self._window + batch if self._window else batch
        full = len(held) if final else len(held) - len(held) % w
        self._window = held[full:]
        out: list[Item] = []
        shuffle = self._shuffle.shuffle
        moved = 0
        for start in range(0, full, w):
            size = min(w, full - start)
            order = list(range(size))
            shuffle(order)
            out.extend(held[start + i] for i in order)
            moved += sum(1 for pos, i in enumerate(order) if pos != i)
        self.counts["shuffle"] += moved
        return out


class PayloadEncoder:
    """Stage 5: items → one buffer of frames, stamped for this send.

    Restamping puts one send time on a whole batch: the stamp bytes are formatted once and
    appended to every event, with no clock read per event. A batch of lines whose stamps all have
    the fixed width of a recording (:func:`_fixed_tail`) is cut and framed by ``map`` and one
    ``join``; any other batch goes item by item, a line cut at its stamps or a dict re-serialized.
    Dicts handed in are consumed (their recorded stamps may be removed in place).

    A payload longer than ``max_frame_bytes`` is never sent (P2 would count it oversize and close
    the connection, losing every frame after it): it is counted in :attr:`oversize`. A line under
    the limit as read can cross it once restamped (the send stamps are ~60 bytes), aged or drifted.
    """

    def __init__(
        self, keep_timestamps: bool, latency_ms: int = 0, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must be 0 or more")
        self.keep_timestamps = keep_timestamps
        self.latency_ms = latency_ms
        self.max_frame_bytes = max_frame_bytes
        self.aged = 0
        """Events sent with ``ingest_ts_*`` aged by ``latency_ms``."""
        self.oversize = 0
        """Events not sent because their payload, as it would be sent, exceeds ``max_frame_bytes``."""
        self.unrewritten = 0
        """Lenient lines that had to be rewritten but that not even Python's ``json`` writes back, sent as read."""

    def encode(self, items: list[Item], now_us: int) -> bytes:
        """The frames of ``items``, less those counted in :attr:`oversize`."""
        if not self.keep_timestamps:
            return self._restamp(items, now_us)
        if self.latency_ms:
            return self._age_recorded(items)
        return self._as_is(items)

    def _as_is(self, items: list[Item]) -> bytes:
        if set(map(type, items)) == _BYTES_ONLY and max(map(len, items)) <= self.max_frame_bytes:  # type: ignore[arg-type]
            return _frame_all(items)  # type: ignore[arg-type]
        parts: list[bytes] = []
        append = parts.append
        pack = HEADER.pack
        dumps = orjson.dumps
        limit = self.max_frame_bytes
        for it in items:
            payload = it if type(it) is bytes else dumps(it)
            if len(payload) > limit:
                self.oversize += 1
                continue
            append(pack(len(payload)))
            append(payload)
        return b"".join(parts)

    def _restamp(self, items: list[Item], now_us: int) -> bytes:
        stamp_us = now_us - self.latency_ms * 1000
        stamps = b'"%b":%d,"%b":%d}' % (INGEST_MS.encode(), stamp_us // 1000, INGEST_US.encode(), stamp_us)
        after_key = b"," + stamps
        if items and set(map(type, items)) == _BYTES_ONLY:
            cut = _fixed_tail(items)  # type: ignore[arg-type]
            if cut is not None and max(map(len, items)) - cut + len(after_key) <= self.max_frame_bytes:  # type: ignore[arg-type]
                if self.latency_ms:
                    self.aged += len(items)
                return self._restamp_cut(items, cut, after_key)  # type: ignore[arg-type]
        skipped = self.oversize
        out = self._restamp_each(items, after_key)
        if self.latency_ms:
            self.aged += len(items) - (self.oversize - skipped)
        return out

    def _restamp_each(self, items: list[Item], after_key: bytes) -> bytes:
        """One item at a time: the path for dicts, for lines whose stamps are not all of one fixed form,
        and for a batch with a line that restamping takes over the frame limit."""
        stamps = after_key[1:]
        parts: list[bytes] = []
        append = parts.append
        pack = HEADER.pack
        dumps = orjson.dumps
        loads = orjson.loads
        pop = dict.pop
        stamped_tail = _STAMPED_TAIL.fullmatch
        limit = self.max_frame_bytes
        for it in items:
            if type(it) is bytes:
                # P1's stamps come last and P2 splices its own after them: cut the line there
                # instead of a loads/dumps round trip.
                cut = it.rfind(_TAIL_START)
                if cut > 0 and stamped_tail(it, cut):
                    payload = it[:cut] + after_key
                else:
                    try:
                        it = loads(it)
                        payload = b""
                    except orjson.JSONDecodeError:
                        payload = self._restamp_lenient(it, after_key)
            else:
                payload = b""
            if not payload:
                pop(it, INGEST_MS, None)
                pop(it, INGEST_US, None)
                pop(it, RECV_MS, None)
                pop(it, RECV_US, None)
                body = dumps(it)
                payload = body[:-1] + after_key if len(body) > 2 else b"{" + stamps
            if len(payload) > limit:
                self.oversize += 1
                continue
            append(pack(len(payload)))
            append(payload)
        return b"".join(parts)

    def _restamp_lenient(self, line: bytes, after_key: bytes) -> bytes:
        """A lenient line restamped: the send stamps spliced before its closing brace when it has no
        stamps of its own (P2's own splice, every other byte kept), else re-serialized by Python's ``json``."""
        ev = _lenient_dict(line)
        if ev is not None and not any(k in ev for k in _STAMP_KEYS):
            return line.rstrip()[:-1] + after_key if ev else b"{" + after_key[1:]
        if ev is not None:
            for k in _STAMP_KEYS:
                ev.pop(k, None)
            body = _lenient_dumps(ev)
            if body is not None:
                return body[:-1] + after_key if len(body) > 2 else b"{" + after_key[1:]
        self.unrewritten += 1
        return line

    @staticmethod
    def _restamp_cut(lines: list[bytes], cut: int, after_key: bytes) -> bytes:
        """Each line less its last ``cut`` bytes, framed with the batch's stamp bytes after it.

        The stamp bytes are one object repeated in the list, so nothing is concatenated per event:
        the single ``join`` copies each body once. The caller has checked that no frame exceeds the limit.
        """
        parts: list[bytes] = [after_key] * (3 * len(lines))
        parts[0::3] = map(HEADER.pack, map(add, map(len, lines), repeat(len(after_key) - cut)))
        parts[1::3] = map(bytes.__getitem__, lines, repeat(slice(-cut)))
        return b"".join(parts)

    def _age_recorded(self, items: list[Item]) -> bytes:
        shift_ms = self.latency_ms
        shift_us = shift_ms * 1000
        parts: list[bytes] = []
        append = parts.append
        pack = HEADER.pack
        dumps = orjson.dumps
        loads = orjson.loads
        limit = self.max_frame_bytes
        aged = 0
        for it in items:
            lenient = False
            if type(it) is bytes:
                try:
                    ev = loads(it)
                except orjson.JSONDecodeError:
                    ev, lenient = _lenient_dict(it) or {}, True
            else:
                ev = dict(it)
            ms = ev.get(INGEST_MS)
            us = ev.get(INGEST_US)
            # A stamp that would fall below 64 bits (only a hostile file has one) is sent as recorded.
            ms = ms if type(ms) is int and ms - shift_ms >= INT64_MIN else None
            us = us if type(us) is int and us - shift_us >= INT64_MIN else None
            if ms is not None:
                ev[INGEST_MS] = ms - shift_ms
            if us is not None:
                ev[INGEST_US] = us - shift_us
            changed = ms is not None or us is not None
            if lenient:
                payload = (_lenient_dumps(ev) if changed else None) or it
                if changed and payload is it:
                    self.unrewritten += 1
                    changed = False
            else:
                payload = it if type(it) is bytes and not changed else dumps(ev)
            if len(payload) > limit:
                self.oversize += 1
                continue
            aged += changed
            append(pack(len(payload)))
            append(payload)
        self.aged += aged
        return b"".join(parts)
