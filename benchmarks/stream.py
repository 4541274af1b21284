"""The benchmark's event stream: realistic normalized trades, rendered as frames without re-serializing.

A *pool* is made once by the offline exchange's :class:`Market` and P1's :class:`IngestPipeline`, so
every payload is byte for byte what P1 would send (its stamps aside). :class:`FrameStream` repeats the
pool as *cycles*: each cycle shifts every product's trade ids and sequences past the pool's last ones
and the exchange time by one day, so P2's forensics sees one contiguous, ordered stream of any length
and writes no incident. The ingest stamps are not rendered per event: all frames of a chunk share
one stamp of fixed width, spliced between the frames by ``bytes.join``.

Exchange time advances at a realistic market pace (:data:`MARKET_RATE`), not at the send rate: the
stream is a recording of a normal market replayed fast, so the analytics' time windows hold minutes
of trading, as they would in production.
"""

from __future__ import annotations

import calendar
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

    def __init__(self, pool: Sequence[bytes]) -> None:
        if not pool:
            raise ValueError("empty pool")
        self._templates: list[tuple[bytes, int, int, int]] = []
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
            header = HEADER.pack(len(payload) - len(ZERO_STAMPS) + STAMPS_LEN).replace(b"%", b"%%")
            self._templates.append((header + body, tid, seq, p))
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
        """Frames rendered so far."""
        self._cycle = -1
        self._args: tuple[bytes, list[int], list[int]] = (b"", [], [])

    def __len__(self) -> int:
        """Frames in one cycle."""
        return len(self._templates)

    def _enter_cycle(self, k: int) -> None:
        tid_off = [k * s for s in self._tid_span]
        seq_off = [k * s for s in self._seq_span]
        for (lo, hi), off in zip(self._tid_range + self._seq_range, tid_off + seq_off, strict=True):
            if len(str(lo)) != len(str(lo + off)) or len(str(hi)) != len(str(hi + off)):
                raise OverflowError(f"stream too long: ids would change width after {self.position} frames")
        date = time.strftime("%Y-%m-%d", time.gmtime(self._date0 + k * DAY_S)).encode()
        self._cycle = k
        self._args = (date, tid_off, seq_off)

    def bodies(self, n: int) -> list[bytes]:
        """The next ``n`` frames without their stamps (header and payload up to the ingest fields)."""
        out: list[bytes] = []
        size = len(self._templates)
        templates = self._templates
        while n > 0:
            k, i = divmod(self.position, size)
            if k != self._cycle:
                self._enter_cycle(k)
            date, tid_off, seq_off = self._args
            j = min(size, i + n)
            out += [t % (date, tid + tid_off[p], seq + seq_off[p]) for t, tid, seq, p in templates[i:j]]
            n -= j - i
            self.position += j - i
        return out

    def take(self, n: int, now_us: int) -> bytes:
        """The next ``n`` frames, every one stamped ``now_us``, ready to write."""
        if n <= 0:
            return b""
        tail = stamps(now_us)
        return tail.join(self.bodies(n)) + tail

    def recording(self, n: int, ingest_us: int, recv_us: int) -> list[bytes]:
        """The next ``n`` events as P2 records them (payload plus receive stamps), for replay input."""
        tail = stamps(ingest_us)[:-1] + recv_suffix(recv_us)
        return [b[HEADER.size :] + tail for b in self.bodies(n)]
