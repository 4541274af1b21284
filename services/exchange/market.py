"""Deterministic market simulator: the trade stream the offline exchange serves.

Each product's mid price follows geometric Brownian motion. Taker orders arrive as one Poisson
process across products; some sweep several resting orders, which makes a *cascade*: several
matches with one taker order id and one timestamp. The ticker channel folds a cascade into one
message (as Coinbase's does), so ticker trade ids are not contiguous.

Everything derives from one seeded RNG and time offsets the caller passes in, and each arrival
draws the next one's time before returning: the same seed gives the same stream however the caller
slices time into :meth:`Market.advance` calls. Messages are built as JSON text with f-strings from
integer amounts in 1e-8 units (Coinbase's 8-decimal strings), because the benchmark needs well over
100k messages/s from one process.
"""

from __future__ import annotations

import bisect
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

MATCH, TICKER, HEARTBEAT = 0, 1, 2
"""Channel indexes. A market message's route key is ``product_index * N_CHANNELS + channel``."""
CHANNELS = ("matches", "ticker", "heartbeat")
N_CHANNELS = len(CHANNELS)
LAST_MATCH, SUBSCRIPTIONS, ERROR = 3, 4, 5
"""Kinds of the messages sent to one client only (replies), after the three channel kinds."""
KIND_NAMES = ("match", "ticker", "heartbeat", "last_match", "subscriptions", "error")

Msg = tuple[int, int, bytes]
"""``(route key, kind, JSON text)``: one outgoing message, shared by every client that gets it."""

UNITS = 100_000_000
YEAR_US = 365 * 24 * 3600 * 1_000_000
PRODUCT_ID = re.compile(r"^[A-Z0-9]{2,10}-[A-Z0-9]{2,10}$")
MAX_CASCADE = 20
SIZE_SIGMA = 1.1
"""Log-sd of trade sizes: a few large prints among many small ones, as on a real tape."""


@dataclass(frozen=True, slots=True)
class ProductSpec:
    product_id: str
    price: float
    """Start mid price in the quote currency."""
    annual_vol: float
    median_size: float
    """Median trade size in the base currency."""
    weight: float
    """Relative share of the total trade rate."""
    volume_24h: float
    """Baseline 24 h volume in the base currency, so ``volume_24h`` looks like a live market's."""
    trade_id_base: int
    sequence_base: int
    tick: float = 0.01


CATALOG: dict[str, ProductSpec] = {
    "BTC-USD": ProductSpec("BTC-USD", 60000.0, 0.55, 0.004, 0.45, 9_500.0, 650_000_000, 80_000_000_000),
    "ETH-USD": ProductSpec("ETH-USD", 3000.0, 0.70, 0.08, 0.35, 120_000.0, 520_000_000, 55_000_000_000),
    "SOL-USD": ProductSpec("SOL-USD", 150.0, 0.90, 2.0, 0.20, 1_400_000.0, 95_000_000, 9_000_000_000),
}
DEFAULT_PRODUCTS = tuple(CATALOG)


def spec_for(product_id: str) -> ProductSpec:
    """The catalog's spec, or a plain mid-cap one for a product the catalog does not know."""
    spec = CATALOG.get(product_id)
    if spec is not None:
        return spec
    if not PRODUCT_ID.match(product_id):
        raise ValueError(f"{product_id!r} is not a product id like BTC-USD")
    return ProductSpec(product_id, 100.0, 0.80, 1.0, 0.10, 500_000.0, 10_000_000, 1_000_000_000)


def _dec(units: int) -> str:
    """``123456789`` (1e-8 units) → ``"1.23456789"``."""
    return f"{units // UNITS}.{units % UNITS:08d}"


_POOL_BITS = 12
_ID_MIX = 0x9E3779B97F4A7C15
_ID_MASK = (1 << 48) - 1
"""Order ids are a random pooled prefix plus 48 bits of a counter times an odd constant: unique (the
multiplication is a bijection mod 2^48), random-looking, and far cheaper than a fresh uuid4 each."""


class _Book:
    """One product's state: price process, ids, and the figures the ticker reports.

    Prices are integer tick levels and are formatted through a small cache, since trades revisit the
    same levels. Sizes come from a seeded pool of lognormal draws, formatted once.
    """

    __slots__ = (
        "drift",
        "high",
        "key",
        "last_match",
        "last_us",
        "log_mid",
        "low",
        "open_s",
        "pid",
        "prices",
        "quote_sizes",
        "range_s",
        "sequence",
        "sig",
        "sizes",
        "tick",
        "trade_id",
        "vol24",
        "vol30",
    )

    def __init__(self, index: int, spec: ProductSpec, rng: random.Random) -> None:
        self.pid = spec.product_id
        self.key = index * N_CHANNELS
        self.tick = max(1, round(spec.tick * UNITS))
        self.prices: dict[int, str] = {}
        self.log_mid = math.log(spec.price * UNITS)
        # Per-microsecond diffusion, so a step costs one sqrt of the gap since this product's last trade.
        self.sig = spec.annual_vol / math.sqrt(YEAR_US)
        self.drift = -0.5 * spec.annual_vol * spec.annual_vol / YEAR_US
        self.last_us = 0
        self.trade_id = spec.trade_id_base + rng.randrange(1_000_000)
        self.sequence = spec.sequence_base + rng.randrange(100_000_000)
        mu = math.log(spec.median_size * UNITS)
        self.sizes = []
        for _ in range(1 << _POOL_BITS):
            u = max(1, int(math.exp(mu + SIZE_SIGMA * rng.gauss(0.0, 1.0))))
            self.sizes.append((u, _dec(u)))
        self.quote_sizes = [_dec(max(1, int(math.exp(mu + 1.0 + rng.gauss(0.0, 1.0))))) for _ in range(1 << _POOL_BITS)]
        start = round(spec.price * UNITS) // self.tick
        day = spec.annual_vol / math.sqrt(365.0)
        open_level = max(1, round(start * math.exp(day * rng.gauss(0.0, 1.0))))
        self.open_s = f'"open_24h":"{self.price_str(open_level)}"'
        self.low = max(1, round(min(open_level, start) * (1.0 - day * rng.random())))
        self.high = round(max(open_level, start) * (1.0 + day * rng.random()))
        self.range_s = f'"low_24h":"{self.price_str(self.low)}","high_24h":"{self.price_str(self.high)}"'
        self.vol24 = round(spec.volume_24h * (0.8 + 0.4 * rng.random()) * UNITS)
        self.vol30 = round(self.vol24 * (27.0 + 6.0 * rng.random()))
        self.last_match = ""

    def price_str(self, level: int) -> str:
        s = self.prices.get(level)
        if s is None:
            if len(self.prices) >= 4096:
                self.prices.clear()
            s = self.prices[level] = _dec(level * self.tick)
        return s


class Market:
    """Generate trades up to a time offset: :meth:`advance` returns ``match`` and ``ticker`` messages.

    Times in messages are ``start_us`` plus the offsets passed to :meth:`advance`, so a test pins
    ``start_us`` and gets byte-identical output for a seed.
    """

    def __init__(
        self,
        products: Sequence[str | ProductSpec] = DEFAULT_PRODUCTS,
        *,
        rate: float = 50.0,
        seed: int = 0,
        start_us: int | None = None,
        max_trades: int | None = None,
        cascade_prob: float = 0.15,
    ) -> None:
        specs = [p if isinstance(p, ProductSpec) else spec_for(p) for p in products]
        if not specs:
            raise ValueError("at least one product is needed")
        if len({s.product_id for s in specs}) != len(specs):
            raise ValueError("product ids must be unique")
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number of trades per second")
        if not 0.0 <= cascade_prob < 1.0:
            raise ValueError("cascade_prob must be in [0, 1)")
        if max_trades is not None and max_trades < 0:
            raise ValueError("max_trades must be >= 0")
        self._rng = rng = random.Random(seed)
        self.rate = rate
        self.start_us = time.time_ns() // 1000 if start_us is None else start_us
        self.max_trades = max_trades
        self.product_ids = tuple(s.product_id for s in specs)
        self._books = [_Book(i, s, rng) for i, s in enumerate(specs)]
        self._cascade = cascade_prob
        # A cascade averages 3 fills (2 + a geometric tail of mean 1), so arrivals run slower than trades.
        self._arrivals_per_us = rate / (1.0 + 2.0 * cascade_prob) / 1e6
        total = sum(s.weight for s in specs)
        acc = 0.0
        self._cum: list[float] = []
        for s in specs:
            acc += s.weight / total
            self._cum.append(acc)
        self._tsec = -1
        self._tprefix = ""
        self._id_prefixes = [
            f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-"
            f"{'89ab'[rng.getrandbits(2)]}{rng.getrandbits(12):03x}-"
            for _ in range(1 << _POOL_BITS)
        ]
        self._order_ids = rng.getrandbits(40)
        self.trades = 0
        self.tickers = True
        """Build ``ticker`` messages. A server with no ticker subscriber turns this off to save the
        formatting; the randomness is drawn either way, so the match stream does not change."""
        # The trade before the stream starts, so a subscriber gets a last_match from the first instant.
        for i, b in enumerate(self._books):
            t = -rng.randrange(1, 5_000_000)
            b.last_us = t
            self._arrival(i, t, [], 1)
        self._clock_us = 0
        self._next_us: int | None = 0
        self._next_p = 0
        self._draw_next(0)
        if max_trades == 0:
            self._next_us = None

    @property
    def next_us(self) -> int | None:
        """Offset of the next trade, or ``None`` once ``max_trades`` have been generated."""
        return self._next_us

    @property
    def clock_us(self) -> int:
        """Offset of the latest trade generated (0 before the first): the market's own clock."""
        return self._clock_us

    @property
    def exhausted(self) -> bool:
        return self._next_us is None

    def iso(self, offset_us: int) -> str:
        """ISO-8601 UTC with microseconds and ``Z``; the second's prefix is formatted once per second."""
        sec, frac = divmod(self.start_us + offset_us, 1_000_000)
        if sec != self._tsec:
            self._tsec = sec
            self._tprefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        return f"{self._tprefix}{frac:06d}Z"

    def advance(self, until_us: int, limit: int | None = None) -> list[Msg]:
        """Every trade due at or before ``until_us``: its ``match`` and, per cascade, one ``ticker``.

        ``limit`` bounds the trades of one call so a caller that fell behind stays responsive; it
        only cuts between arrivals, so the stream is the same whatever the limit.
        """
        out: list[Msg] = []
        nxt = self._next_us
        if nxt is None or nxt > until_us:
            return out
        left = self.max_trades - self.trades if self.max_trades is not None else -1
        budget = limit if limit is not None else -1
        arrival = self._arrival
        draw = self._draw_next
        n = 0
        last = self._clock_us
        while nxt is not None and nxt <= until_us and budget != 0:
            cap = MAX_CASCADE if left < 0 else min(MAX_CASCADE, left)
            k = arrival(self._next_p, nxt, out, cap)
            last = nxt
            n += k
            if left >= 0:
                left -= k
            if budget > 0:
                budget = max(0, budget - k)
            if left == 0:
                self._next_us = nxt = None
            else:
                nxt = draw(nxt)
        self.trades += n
        self._clock_us = last
        return out

    def _draw_next(self, t: int) -> int:
        rng = self._rng
        nxt = t + int(rng.expovariate(self._arrivals_per_us))
        self._next_p = min(bisect.bisect_right(self._cum, rng.random()), len(self._cum) - 1)
        self._next_us = nxt
        return nxt

    def _arrival(self, p: int, t: int, out: list[Msg], cap: int) -> int:
        """One taker order on product ``p`` at offset ``t``: up to ``cap`` matches and one ticker."""
        rng = self._rng
        rand = rng.random
        bits = rng.getrandbits
        b = self._books[p]
        dt = t - b.last_us
        if dt > 0:
            b.log_mid += b.sig * math.sqrt(dt) * rng.gauss(0.0, 1.0) + b.drift * dt
        b.last_us = t
        bid = max(1, int(math.exp(b.log_mid)) // b.tick)
        buy = rand() < 0.5
        fills = 1
        if rand() < self._cascade:
            fills = 2
            while fills < MAX_CASCADE and rand() < 0.5:
                fills += 1
        fills = min(fills, cap)
        ts = self.iso(t)
        prefixes = self._id_prefixes
        oid = self._order_ids
        taker = f"{prefixes[bits(12)]}{(oid * _ID_MIX) & _ID_MASK:012x}"
        oid += 1
        # Coinbase's match ``side`` is the maker's: a taker buy lifts resting sells.
        maker_side = "sell" if buy else "buy"
        level, step = (bid + 1, 1) if buy else (bid, -1)
        pid = b.pid
        key = b.key
        sizes = b.sizes
        price_str = b.price_str
        tid = b.trade_id
        seq = b.sequence
        low, high, vol = b.low, b.high, 0
        text = price_s = size_s = ""
        for i in range(fills):
            if i and rand() < 0.4 and level + step > 0:
                level += step
            price_s = price_str(level)
            size_u, size_s = sizes[bits(_POOL_BITS)]
            tid += 1
            # The full channel's received/open/done messages share the sequence, so matches skip numbers.
            seq += 1 + bits(3)
            text = (
                f'{{"type":"match","trade_id":{tid},'
                f'"maker_order_id":"{prefixes[bits(12)]}{(oid * _ID_MIX) & _ID_MASK:012x}",'
                f'"taker_order_id":"{taker}","side":"{maker_side}","size":"{size_s}","price":"{price_s}",'
                f'"product_id":"{pid}","sequence":{seq},"time":"{ts}"}}'
            )
            oid += 1
            out.append((key, MATCH, text.encode()))
            vol += size_u
            if level < low:
                low = level
            elif level > high:
                high = level
        self._order_ids = oid
        b.trade_id = tid
        b.sequence = seq
        b.vol24 += vol
        b.vol30 += vol
        b.last_match = text
        if low != b.low or high != b.high:
            b.low, b.high = low, high
            b.range_s = f'"low_24h":"{price_str(low)}","high_24h":"{price_str(high)}"'
        bid_q = bits(_POOL_BITS)
        ask_q = bits(_POOL_BITS)
        if not self.tickers:
            return fills
        if buy:
            best_bid, best_ask = max(1, level - 1), level
        else:
            best_bid, best_ask = level, level + 1
        quotes = b.quote_sizes
        vol24 = f"{b.vol24 // UNITS}.{b.vol24 % UNITS:08d}"
        vol30 = f"{b.vol30 // UNITS}.{b.vol30 % UNITS:08d}"
        ticker = (
            f'{{"type":"ticker","sequence":{seq},"product_id":"{pid}","price":"{price_s}",{b.open_s},'
            f'"volume_24h":"{vol24}",{b.range_s},"volume_30d":"{vol30}",'
            f'"best_bid":"{price_str(best_bid)}","best_bid_size":"{quotes[bid_q]}",'
            f'"best_ask":"{price_str(best_ask)}","best_ask_size":"{quotes[ask_q]}",'
            f'"side":"{"buy" if buy else "sell"}","time":"{ts}","trade_id":{tid},"last_size":"{size_s}"}}'
        )
        out.append((key + TICKER, TICKER, ticker.encode()))
        return fills

    def last_match(self, p: int) -> bytes:
        """The product's latest trade as the ``last_match`` a new ``matches`` subscriber gets first."""
        text = self._books[p].last_match
        return ('{"type":"last_match"' + text[len('{"type":"match"') :]).encode()

    def last_trade_id(self, p: int) -> int:
        return self._books[p].trade_id

    def last_sequence(self, p: int) -> int:
        return self._books[p].sequence

    def heartbeats(self, now_us: int) -> list[Msg]:
        """One ``heartbeat`` per product: its latest sequence and trade id, so a client can spot a gap."""
        ts = self.iso(now_us)
        return [
            (
                b.key + HEARTBEAT,
                HEARTBEAT,
                (
                    f'{{"type":"heartbeat","sequence":{b.sequence},"last_trade_id":{b.trade_id},'
                    f'"product_id":"{b.pid}","time":"{ts}"}}'
                ).encode(),
            )
            for b in self._books
        ]
