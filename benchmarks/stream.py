"""The benchmark's event stream: realistic normalized trades, rendered as frames without re-serializing.

A *pool* is made once by the offline exchange's :class:`Market` and P1's :class:`IngestPipeline`, so
every payload is byte for byte what P1 would send (its stamps aside). :class:`FrameStream` repeats the
pool as *cycles*: each cycle shifts every product's trade ids and sequences past the pool's last ones
and the exchange time by one day, so P2's forensics sees one contiguous, ordered stream of any length
and writes no incident. The ingest stamps are not rendered per event: all frames of a chunk share
one stamp of fixed width, spliced between the frames by ``bytes.join``.

A stream has a *shape*, the keys after the trade's own (:data:`SHAPES`): P1's two ingest stamps, the
seed's ``ingest_ts_ms`` alone, or an incident line replayed with ``--keep-timestamps`` (receive stamps
already there, plus a key P2 does not know). :class:`StormStream` resends a stream's first events,
all duplicates and all out of order, for the anomaly-storm scenario.

Exchange time advances at a realistic market pace (:data:`MARKET_RATE`), not at the send rate: the
stream is a recording of a normal market replayed fast, so the analytics' time windows hold minutes
of trading, as they would in production.
"""

from __future__ import annotations

import calendar
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from mercurystream.exchange.market import MATCH, Market
from mercurystream.p1.pipeline import IngestPipeline
from mercurystream.shared.event import recv_suffix
from mercurystream.shared.framing import HEADER

POOL_START_US = 1_767_225_600_000_000
"""2026-01-01T00:00:00Z: the pool's exchange times all fall on this date, so a cycle shifts only the date."""
DAY_S = 86_400
MARKET_RATE = 50.0
"""Trades per second of exchange time across the products (the offline exchange's default)."""

ZERO_STAMPS = b',"ingest_ts_ms":0,"ingest_ts_us":0}'
STAMPS = b',"ingest_ts_ms":%d,"ingest_ts_us":%d}'
STAMPS_LEN = len(STAMPS % (10**12, 10**15))
"""Stamps are 13 and 16 digits from 2001 to 2286, so a frame's length never depends on when it is sent."""


def stamps(now_us: int) -> bytes:
    """The tail P1 gives an event stamped at ``now_us``: both ingest fields and the closing brace."""
    out = STAMPS % (now_us // 1000, now_us)
    if len(out) != STAMPS_LEN:
        raise ValueError(f"clock {now_us} µs is outside the fixed-width stamp range")
    return out


def _seed_tail(now_us: int) -> bytes:
    return b',"ingest_ts_ms":%d}' % (now_us // 1000)


REPLAYED_AGE_US = (500, 250)
"""A replayed incident line's stamps: ingested 500 µs and received 250 µs before it is sent again."""


def _replayed_tail(now_us: int) -> bytes:
    ingest, recv = now_us - REPLAYED_AGE_US[0], now_us - REPLAYED_AGE_US[1]
    return b',"ingest_ts_ms":%d,"ingest_ts_us":%d,"recv_ts_ms":%d,"recv_ts_us":%d,"note":"x"}' % (
        ingest // 1000,
        ingest,
        recv // 1000,
        recv,
    )


SHAPES = {"p1": stamps, "seed": _seed_tail, "replayed": _replayed_tail}
"""Each shape's tail for a chunk sent at ``now_us``: what follows the trade's keys, closing brace included."""
_REFERENCE_US = 1_767_225_600_000_000


def tail_width(shape: str) -> int:
    """A shape's tail length, the same at any clock from 2001 to 2286 (13- and 16-digit stamps)."""
    return len(SHAPES[shape](_REFERENCE_US))


def generate_pool(n: int, seed: int = 1) -> list[bytes]:
    """``n`` match events as P1 serializes them, stamped 0, for three products at :data:`MARKET_RATE`."""
    if n <= 0:
        raise ValueError("the pool needs at least one event")
    market = Market(rate=MARKET_RATE, seed=seed, start_us=POOL_START_US)
    market.tickers = False
    msgs: list[bytes] = []
    until = 0
    while len(msgs) < n:
        until += 60_000_000
        msgs.extend(text for _, kind, text in market.advance(until) if kind == MATCH)
    trades = [orjson.loads(m) for m in msgs[:n]]
    payloads, invalid = IngestPipeline().process(trades, 0)
    if invalid:
        raise RuntimeError(f"the market produced {invalid} trades P1 rejects")
    return payloads


def write_pool(path: Path, payloads: Iterable[bytes]) -> None:
    path.write_bytes(b"".join(p + b"\n" for p in payloads))


def read_pool(path: Path) -> list[bytes]:
    return [line for line in Path(path).read_bytes().split(b"\n") if line]


class FrameStream:
    """The endless stream over a pool: ``take(n, now_us)`` is the next ``n`` frames as one buffer.

    Each pool payload becomes a ``%`` template with the date, trade id and sequence as fields and its
    frame header in front (the length is fixed: the fields keep their digit count, which each cycle
    checks). Rendering a frame is one ``%`` operation; stamping a chunk is one ``join``.
    """

    def __init__(self, pool: Sequence[bytes], shape: str = "p1") -> None:
        if not pool:
            raise ValueError("empty pool")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
        self.shape = shape
        self._tail = SHAPES[shape]
        self._tail_len = width = tail_width(shape)
        self.times: list[tuple[int, str]] = []
        """Each pool event's product (index into :attr:`products`) and exchange time, in cycle 0."""
        self._parts: list[tuple[bytes, int, int, int, int]] = []
        products: dict[str, int] = {}
        tids: list[list[int]] = []
        seqs: list[list[int]] = []
        date = None
        for payload in pool:
            ev = orjson.loads(payload)
            if not payload.endswith(ZERO_STAMPS):
                raise ValueError(f"pool payload does not end with zero ingest stamps: {payload[:120]!r}")
            pid, tid, seq, when = ev["product_id"], ev["trade_id"], ev["sequence"], ev["time"]
            p = products.setdefault(pid, len(products))
            if p == len(tids):
                tids.append([])
                seqs.append([])
            tids[p].append(tid)
            seqs[p].append(seq)
            self.times.append((p, when))
            if date is None:
                date = when[:10]
            elif when[:10] != date:
                raise ValueError("the pool's exchange times must fall on one date")
            body = payload[: -len(ZERO_STAMPS)].replace(b"%", b"%%")
            for old, new in (
                (b'"time":"%s' % date.encode(), b'"time":"%s'),
                (b'"trade_id":%d,' % tid, b'"trade_id":%d,'),
                (b'"sequence":%d,' % seq, b'"sequence":%d,'),
            ):
                if body.count(old) != 1:
                    raise ValueError(f"cannot template {old!r} in {payload[:120]!r}")
                body = body.replace(old, new)
            self._parts.append((body, len(payload) - len(ZERO_STAMPS) + width, tid, seq, p))
        for ids in tids:
            if sorted(ids) != list(range(min(ids), min(ids) + len(ids))):
                raise ValueError("the pool's trade ids are not contiguous per product")
        assert date is not None
        self.products = tuple(products)
        self._date0 = calendar.timegm(time.strptime(date, "%Y-%m-%d"))
        self._tid_span = [len(ids) for ids in tids]
        self._tid_range = [(min(ids), max(ids)) for ids in tids]
        self._seq_span = [max(s) - min(s) + 8 for s in seqs]
        self._seq_range = [(min(s), max(s)) for s in seqs]
        self.position = 0
        """Frames rendered so far; set it to start further on (the ids and times continue from there)."""
        self._cycle = -1
        self._args: tuple[bytes, list[int], list[int]] = (b"", [], [])
        self._templates: list[tuple[bytes, int, int, int]] = []
        self._widths: list[int] | None = None

    def __len__(self) -> int:
        """Frames in one cycle."""
        return len(self._parts)

    def _id_widths(self, k: int) -> list[int] | None:
        """Each product's trade id and sequence digit counts in cycle ``k``; ``None`` if a range changes width."""
        out = []
        for (lo, hi), span in zip(self._tid_range + self._seq_range, self._tid_span + self._seq_span, strict=True):
            w = len(str(lo + k * span))
            if len(str(hi + k * span)) != w:
                return None
            out.append(w)
        return out

    def stable_start(self, cycles: int) -> int:
        """The first position from which ``cycles`` whole cycles render with the same id widths.

        Ids that gain a digit within a cycle would change frame lengths mid-template; a long sweep
        starts here instead, so its ids and times increase for all of them.
        """
        k = 0
        while (w := self._id_widths(k)) is None or w != self._id_widths(k + cycles):
            k += 1
        return k * len(self)

    def _enter_cycle(self, k: int) -> None:
        widths = self._id_widths(k)
        if widths is None:
            raise OverflowError(f"ids change width within cycle {k} (frame {self.position}): see stable_start")
        if widths != self._widths:
            n = len(self.products)
            self._templates = [
                (
                    HEADER.pack(size + widths[p] - len(str(tid)) + widths[n + p] - len(str(seq))).replace(b"%", b"%%")
                    + body,
                    tid,
                    seq,
                    p,
                )
                for body, size, tid, seq, p in self._parts
            ]
            self._widths = widths
        date = time.strftime("%Y-%m-%d", time.gmtime(self._date0 + k * DAY_S)).encode()
        self._cycle = k
        self._args = (date, [k * s for s in self._tid_span], [k * s for s in self._seq_span])

    def bodies(self, n: int) -> list[bytes]:
        """The next ``n`` frames without their stamps (header and payload up to the ingest fields)."""
        out: list[bytes] = []
        size = len(self._parts)
        while n > 0:
            k, i = divmod(self.position, size)
            if k != self._cycle:
                self._enter_cycle(k)
            date, tid_off, seq_off = self._args
            j = min(size, i + n)
            out += [t % (date, tid + tid_off[p], seq + seq_off[p]) for t, tid, seq, p in self._templates[i:j]]
            n -= j - i
            self.position += j - i
        return out

    def take(self, n: int, now_us: int) -> bytes:
        """The next ``n`` frames, every one stamped ``now_us``, ready to write."""
        if n <= 0:
            return b""
        tail = self._tail(now_us)
        if len(tail) != self._tail_len:
            raise ValueError(f"clock {now_us} µs is outside the fixed-width stamp range")
        return tail.join(self.bodies(n)) + tail

    def recording(self, n: int, ingest_us: int, recv_us: int) -> list[bytes]:
        """The next ``n`` events of a P1-shaped stream as P2 records them (payload plus receive stamps)."""
        if self.shape != "p1":
            raise ValueError("recordings are made of P1's shape")
        tail = stamps(ingest_us)[:-1] + recv_suffix(recv_us)
        return [b[HEADER.size :] + tail for b in self.bodies(n)]


class StormStream:
    """An anomaly storm: the first ``window`` events of a fresh :class:`FrameStream`, sent again and again.

    Whoever received those ``window`` events in order (the priming) sees every frame of this stream
    as a duplicate and as out of order: only events strictly earlier than their product's latest
    time in the window are resent, each pass in a new seeded shuffle. Keep ``window`` per product
    under P2's ``DUPLICATE_LRU_MAX``, so every id is still remembered. Same ``take`` as a stream.
    """

    def __init__(self, pool: Sequence[bytes], window: int, seed: int = 0, shape: str = "p1") -> None:
        stream = FrameStream(pool, shape)
        if not 0 < window <= len(stream):
            raise ValueError(f"the storm window must be 1 to {len(stream)} events (one pool cycle)")
        latest: dict[int, str] = {}
        for p, when in stream.times[:window]:
            latest[p] = max(latest.get(p, when), when)
        bodies = stream.bodies(window)
        self._bodies = [b for b, (p, when) in zip(bodies, stream.times, strict=False) if when < latest[p]]
        if not self._bodies:
            raise ValueError("no event in the storm window is earlier than its product's latest")
        self._tail = stream._tail
        self._rng = random.Random(seed)
        self._order: list[bytes] = []
        self._i = 0
        self.position = 0
        """Frames rendered so far."""

    def __len__(self) -> int:
        """Distinct frames the storm resends."""
        return len(self._bodies)

    def bodies(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        while n > 0:
            if self._i == len(self._order):
                self._order = self._bodies[:]
                self._rng.shuffle(self._order)
                self._i = 0
            j = min(len(self._order), self._i + n)
            out += self._order[self._i : j]
            n -= j - self._i
            self.position += j - self._i
            self._i = j
        return out

    def take(self, n: int, now_us: int) -> bytes:
        if n <= 0:
            return b""
        tail = self._tail(now_us)
        return tail.join(self.bodies(n)) + tail
