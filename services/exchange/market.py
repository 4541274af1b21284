"""Deterministic market simulator: the trade stream the offline exchange serves.

Each product's mid price follows geometric Brownian motion. Taker orders arrive as one Poisson
process across products; some sweep several resting orders, which makes a *cascade*: several
matches with one taker order id and one timestamp. The ticker channel sends one message per fill,
as Coinbase's does: a cascade of three fills gives three tickers with contiguous trade ids.

Held to real recordings (tests/fixtures/SOURCES.md): prices and trade sizes are decimal strings with
trailing zeros trimmed (``"22386.3"``, ``"0.0006"``), while ``best_bid_size``, ``best_ask_size`` and
the volumes keep Coinbase's 8 decimals; sequence numbers skip as the recorded BTC-USD matches do
(:data:`SEQ_SKIP_LOG_MU`).

Everything derives from one seeded RNG and time offsets the caller passes in. The randomness and
the price path are computed ahead in numpy chunks of taker orders, independent of how the caller
slices time into :meth:`Market.advance` calls, so the same seed gives the same stream whatever the
slicing. Messages are ``%`` templates over bytes filled from integer amounts in 1e-8 units
and pooled strings: the exchange shares two cores with the pipeline
it feeds, so its CPU per trade is part of that pipeline's latency.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

MATCH, TICKER, HEARTBEAT = 0, 1, 2
"""Channel indexes. A market message's route key is ``product_index * N_CHANNELS + channel``."""
CHANNELS = ("matches", "ticker", "heartbeat")
N_CHANNELS = len(CHANNELS)
LAST_MATCH, SUBSCRIPTIONS, ERROR = 3, 4, 5
"""Kinds of the messages sent to one client only (replies), after the three channel kinds."""
MARKET_TRADES_KIND, HEARTBEATS_KIND = 6, 7
"""Advanced Trade's batched ``market_trades`` and its ``heartbeats`` messages (``--api advanced-trade``)."""
KIND_NAMES = ("match", "ticker", "heartbeat", "last_match", "subscriptions", "error", "market_trades", "heartbeats")

Msg = tuple[int, int, bytes]
"""``(route key, kind, JSON text)``: one outgoing message, shared by every client that gets it."""

UNITS = 100_000_000
YEAR_US = 365 * 24 * 3600 * 1_000_000
PRODUCT_ID = re.compile(r"^[A-Z0-9]{2,10}-[A-Z0-9]{2,10}$")
MAX_CASCADE = 20
SIZE_SIGMA = 1.1
"""Log-sd of trade sizes: a few large prints among many small ones, as on a real tape."""
SEQ_SKIP_LOG_MU, SEQ_SKIP_LOG_SIGMA, SEQ_SKIP_MIN = 4.555, 1.244, 3
"""Sequence skip from one taker order's last match to the next order's first: lognormal, fitted to
131 such skips in 200 consecutive recorded BTC-USD matches (2022-09-12; median 99, p10 18, p90 430,
min 3, max 838). The full channel's received/open/done/change messages take the numbers between."""
SEQ_SKIP_IN_CASCADE_3 = 1 / 68
"""Within a cascade the recorded skip is 2 (the match and the filled maker's ``done``): 67 of 68
times; 3 once."""


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
    """``123456789`` (1e-8 units) → ``"1.23456789"``: 8 decimals, as Coinbase sends quote sizes and volumes."""
    return f"{units // UNITS}.{units % UNITS:08d}"


def _trim(units: int) -> str:
    """``2238630000000`` (1e-8 units) → ``"22386.3"``, ``100000000`` → ``"1"``: trailing zeros trimmed, as
    Coinbase sends trade prices and sizes."""
    whole, frac = divmod(units, UNITS)
    frac_s = f"{frac:08d}".rstrip("0")
    return f"{whole}.{frac_s}" if frac_s else str(whole)


_POOL_BITS = 12
_POOL = 1 << _POOL_BITS
_ID_MIX = 0x9E3779B97F4A7C15
_ID_MASK = (1 << 48) - 1
"""Order ids are a random pooled prefix plus 48 bits of a counter times an odd constant: unique (the
multiplication is a bijection mod 2^48), random-looking, and far cheaper than a fresh uuid4 each."""
_CHUNK = 4096
"""Arrivals (and extra cascade fills) drawn per numpy refill."""
_MAX_GAP_US = float(1 << 50)
"""Cap on one Poisson gap (35 years), so even an absurdly low rate fits the int64 times are drawn as."""
_MAX_UNITS = float(1 << 62)


def _objects(items: Sequence[object]) -> np.ndarray:
    """A 1-D object array: fancy indexing picks pooled objects and ``tolist`` hands back those same
    objects, so a chunk of draws allocates no Python object per pick."""
    a = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        a[i] = x
    return a


class _Pools:
    """Every pool the draws pick from, as object arrays indexed ``[product, index]`` or ``[index]``."""

    __slots__ = ("books", "prefixes", "sizes")

    def __init__(self, books: list[_Book], prefixes: list[bytes]) -> None:
        self.books = _objects(books)
        self.prefixes = _objects(prefixes)
        self.sizes = np.stack([_objects(b.sizes) for b in books])


def _order_draws(gen: np.random.Generator, products: np.ndarray, pools: _Pools, cascade_prob: float) -> list[list]:
    """Per taker order on ``products``: its book, side, how many makers it sweeps, the taker's and
    first maker's id prefixes, and the first fill's ``(units, text)`` size and sequence skip, each as
    a list."""
    n = len(products)
    buy = gen.random(n) < 0.5
    # A cascade sweeps two makers plus a geometric(1/2) tail of more.
    sweep = np.minimum(gen.geometric(0.5, n) + 1, MAX_CASCADE)
    fills = np.where(gen.random(n) < cascade_prob, sweep, 1)
    taker, maker, size = gen.integers(0, _POOL, (3, n))
    # The full channel's received/open/done messages share the sequence, so matches skip numbers.
    skips = np.maximum(SEQ_SKIP_MIN, np.exp(gen.normal(SEQ_SKIP_LOG_MU, SEQ_SKIP_LOG_SIGMA, n)).astype(np.int64))
    return [
        pools.books[products].tolist(),
        buy.tolist(),
        fills.tolist(),
        pools.prefixes[taker].tolist(),
        pools.prefixes[maker].tolist(),
        pools.sizes[products, size].tolist(),
        skips.tolist(),
    ]


def _arrivals(
    gen: np.random.Generator,
    pools: _Pools,
    cum: list[float],
    arrivals_per_us: float,
    cascade_prob: float,
    start_us: int,
    first_us: list[int],
) -> Iterator[zip]:
    """Taker orders in time order, computed in numpy chunks: each chunk yields one tuple per order.

    ``(t, bid, second, micros, book, buy, fills, taker, maker, size, skip)``: the offset, the
    product's bid tick level after the GBM step since its previous order, the epoch second and
    microseconds of ``t``, then :func:`_order_draws`. First come one single-fill order per product
    at ``first_us`` (before the stream, in time order, no price move), then the Poisson stream from
    offset 0. Drawing value by value through :mod:`random` (``gauss`` alone ~0.5 µs) and stepping
    the price in Python was most of a trade's cost.
    """
    books = pools.books.tolist()
    n_p = len(books)
    cum_a = np.asarray(cum)
    mean_gap = 1.0 / arrivals_per_us
    log_mid = [math.log(b.price * UNITS) for b in books]
    sig = [b.vol / math.sqrt(YEAR_US) for b in books]
    drift = [-0.5 * b.vol * b.vol / YEAR_US for b in books]
    last_us = list(first_us)
    order = np.argsort(first_us, kind="stable")
    opening = np.array(first_us, dtype=np.int64)[order]
    epoch = opening + start_us
    yield zip(
        opening.tolist(),
        [max(1, int(math.exp(log_mid[p])) // books[p].tick) for p in order.tolist()],
        (epoch // 1_000_000).tolist(),
        (epoch % 1_000_000).tolist(),
        *_order_draws(gen, order, pools, 0.0),
        strict=True,
    )
    t = 0
    while True:
        gaps = np.minimum(gen.standard_exponential(_CHUNK) * mean_gap, _MAX_GAP_US).astype(np.int64)
        times = np.cumsum(gaps) + t
        t = int(times[-1])
        products = np.minimum(np.searchsorted(cum_a, gen.random(_CHUNK), side="right"), n_p - 1)
        z = gen.standard_normal(_CHUNK)
        levels = np.empty(_CHUNK, dtype=np.int64)
        for p in range(n_p):
            sel = np.flatnonzero(products == p)
            if not sel.size:
                continue
            tp = times[sel]
            dt = np.diff(tp, prepend=last_us[p]).astype(np.float64)
            # GBM per microsecond: variance grows with the gap since this product's previous order.
            path = log_mid[p] + np.cumsum(sig[p] * np.sqrt(dt) * z[sel] + drift[p] * dt)
            log_mid[p] = float(path[-1])
            last_us[p] = int(tp[-1])
            mid = np.minimum(np.exp(path), _MAX_UNITS).astype(np.int64)
            levels[sel] = np.maximum(1, mid // books[p].tick)
        epoch = times + start_us
        yield zip(
            times.tolist(),
            levels.tolist(),
            (epoch // 1_000_000).tolist(),
            (epoch % 1_000_000).tolist(),
            *_order_draws(gen, products, pools, cascade_prob),
            strict=True,
        )


def _fill_draws(gen: np.random.Generator, prefixes: np.ndarray) -> Iterator[zip]:
    """Chunks of a cascade's fills after its first: ``(moves_price, maker, size, skip)`` each."""
    while True:
        moves = gen.random(_CHUNK) < 0.4
        maker, size = gen.integers(0, _POOL, (2, _CHUNK))
        skips = np.where(gen.random(_CHUNK) < SEQ_SKIP_IN_CASCADE_3, 3, 2)
        yield zip(moves.tolist(), prefixes[maker].tolist(), size.tolist(), skips.tolist(), strict=True)


def _quote_draws(gen: np.random.Generator) -> Iterator[zip]:
    """Chunks of the ticker's best bid and ask size indexes, drawn only while tickers are built:
    the match stream never depends on them."""
    while True:
        yield zip(*gen.integers(0, _POOL, (2, _CHUNK)).tolist(), strict=True)


class _Book:
    """One product's state: ids, pools, message templates, and the figures the ticker reports.

    Prices are integer tick levels and are formatted through a small cache, since trades revisit the
    same levels. Sizes come from a seeded pool of lognormal draws, formatted once. Messages are
    ``%`` templates over bytes with the product and side already in place: one formatting step, no
    encode.
    """

    __slots__ = (
        "high",
        "key",
        "last_fill",
        "last_match",
        "low",
        "match_tpl",
        "pid",
        "price",
        "prices",
        "quote_sizes",
        "range_s",
        "sequence",
        "sizes",
        "tick",
        "ticker_tpl",
        "trade_id",
        "traded",
        "vol",
        "vol24",
        "vol30",
    )

    def __init__(self, index: int, spec: ProductSpec, rng: random.Random) -> None:
        self.pid = spec.product_id
        self.key = index * N_CHANNELS
        self.tick = max(1, round(spec.tick * UNITS))
        self.prices: dict[int, bytes] = {}
        self.price = spec.price
        self.vol = spec.annual_vol
        self.trade_id = spec.trade_id_base + rng.randrange(1_000_000)
        self.sequence = spec.sequence_base + rng.randrange(100_000_000)
        mu = math.log(spec.median_size * UNITS)
        self.sizes: list[tuple[int, bytes]] = []
        for _ in range(_POOL):
            u = max(1, int(math.exp(mu + SIZE_SIGMA * rng.gauss(0.0, 1.0))))
            self.sizes.append((u, _trim(u).encode()))
        self.quote_sizes = [_dec(max(1, int(math.exp(mu + 1.0 + rng.gauss(0.0, 1.0))))).encode() for _ in range(_POOL)]
        start = round(spec.price * UNITS) // self.tick
        day = spec.annual_vol / math.sqrt(365.0)
        open_level = max(1, round(start * math.exp(day * rng.gauss(0.0, 1.0))))
        self.low = max(1, round(min(open_level, start) * (1.0 - day * rng.random())))
        self.high = round(max(open_level, start) * (1.0 + day * rng.random()))
        self.range_s = b'"low_24h":"%s","high_24h":"%s"' % (self.price_str(self.low), self.price_str(self.high))
        self.vol24 = round(spec.volume_24h * (0.8 + 0.4 * rng.random()) * UNITS)
        self.vol30 = round(self.vol24 * (27.0 + 6.0 * rng.random()))
        self.traded = 0
        """Units traded since the start: the ticker's volumes are the baselines plus this."""
        self.last_match = b""
        self.last_fill: tuple = ()
        """``(buy, level, seq, tid, price_s, size_s, tprefix, frac)`` of the latest fill, for the ticker
        a new ticker subscriber gets first."""
        pid = self.pid.encode()  # product ids are [A-Z0-9-]: no '%' to escape in the templates
        # Indexed by the taker's side (False: sell, True: buy); Coinbase's match ``side`` is the maker's.
        self.match_tpl = tuple(
            b'{"type":"match","trade_id":%d,"maker_order_id":"%s%012x","taker_order_id":"%s%012x",'
            b'"side":"' + maker_side + b'","size":"%s","price":"%s","product_id":"' + pid + b'",'
            b'"sequence":%d,"time":"%s%06dZ"}'
            for maker_side in (b"buy", b"sell")
        )
        self.ticker_tpl = tuple(
            b'{"type":"ticker","sequence":%d,"product_id":"' + pid + b'","price":"%s",'
            b'"open_24h":"' + self.price_str(open_level) + b'","volume_24h":"%d.%08d",%s,"volume_30d":"%d.%08d",'
            b'"best_bid":"%s","best_bid_size":"%s","best_ask":"%s","best_ask_size":"%s",'
            b'"side":"' + taker_side + b'","time":"%s%06dZ","trade_id":%d,"last_size":"%s"}'
            for taker_side in (b"sell", b"buy")
        )

    def ticker(
        self,
        buy: bool,
        level: int,
        seq: int,
        tid: int,
        price_s: bytes,
        size_s: bytes,
        bid_q: int,
        ask_q: int,
        tprefix: bytes,
        frac: int,
        traded: int,
    ) -> bytes:
        """The ticker after one fill at tick ``level``, with ``traded`` units traded since the start."""
        best_bid, best_ask = (max(1, level - 1), level) if buy else (level, level + 1)
        v24 = self.vol24 + traded
        v30 = self.vol30 + traded
        return self.ticker_tpl[buy] % (
            seq,
            price_s,
            v24 // UNITS,
            v24 % UNITS,
            self.range_s,
            v30 // UNITS,
            v30 % UNITS,
            self.price_str(best_bid),
            self.quote_sizes[bid_q],
            self.price_str(best_ask),
            self.quote_sizes[ask_q],
            tprefix,
            frac,
            tid,
            size_s,
        )

    def price_str(self, level: int) -> bytes:
        s = self.prices.get(level)
        if s is None:
            if len(self.prices) >= 4096:
                self.prices.clear()
            s = self.prices[level] = _trim(level * self.tick).encode()
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
        # A cascade averages 3 fills (2 + a geometric tail of mean 1), so arrivals run slower than trades.
        arrivals_per_us = rate / (1.0 + 2.0 * cascade_prob) / 1e6
        total = sum(s.weight for s in specs)
        acc = 0.0
        cum: list[float] = []
        for s in specs:
            acc += s.weight / total
            cum.append(acc)
        self._tsec = -1
        self._tprefix = b""
        prefixes = [
            (
                f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-"
                f"{'89ab'[rng.getrandbits(2)]}{rng.getrandbits(12):03x}-"
            ).encode()
            for _ in range(_POOL)
        ]
        self._order_ids = rng.getrandbits(40)
        self.trades = 0
        self.tickers = True
        """Build ``ticker`` messages. A server with no ticker subscriber turns this off to save the
        formatting; the randomness is drawn either way, so the match stream does not change."""
        # The trade before the stream starts, so a subscriber gets a last_match from the first instant.
        first_us = [-rng.randrange(1, 5_000_000) for _ in self._books]
        # The numpy streams are seeded from the one seeded RNG, so the seed still fixes everything.
        pools = _Pools(self._books, prefixes)
        self._orders = _arrivals(
            np.random.Generator(np.random.PCG64(rng.getrandbits(128))),
            pools,
            cum,
            arrivals_per_us,
            cascade_prob,
            self.start_us,
            first_us,
        )
        self._fills = _fill_draws(np.random.Generator(np.random.PCG64(rng.getrandbits(128))), pools.prefixes)
        self._quotes = _quote_draws(np.random.Generator(np.random.PCG64(rng.getrandbits(128))))
        self._draw = next(self._orders).__next__
        self._fill_draw = next(self._fills).__next__
        self._quote_draw = next(self._quotes).__next__
        self._pending = self._draw()
        """The next taker order: its time is known before it is due, for :attr:`next_us`."""
        self._next_us: int | None = self._pending[0]
        self.max_trades = None
        self._clock_us = 0
        self.advance(-1)  # the pre-stream orders, all at negative offsets
        self.trades = 0
        self._clock_us = 0
        self.max_trades = max_trades
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

    def _second(self, sec: int) -> bytes:
        self._tsec = sec
        self._tprefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)).encode()
        return self._tprefix

    def iso(self, offset_us: int) -> str:
        """ISO-8601 UTC with microseconds and ``Z``; the second's prefix is formatted once per second."""
        sec, frac = divmod(self.start_us + offset_us, 1_000_000)
        if sec != self._tsec:
            self._second(sec)
        return f"{self._tprefix.decode()}{frac:06d}Z"

    def advance(self, until_us: int, limit: int | None = None) -> list[Msg]:
        """Every trade due at or before ``until_us``: its ``match`` and its ``ticker``.

        ``limit`` bounds the trades of one call so a caller that fell behind stays responsive; it
        only cuts between arrivals, so the stream is the same whatever the limit.
        """
        out: list[Msg] = []
        nxt = self._next_us
        if nxt is None or nxt > until_us:
            return out
        left = self.max_trades - self.trades if self.max_trades is not None else -1
        budget = limit if limit is not None else -1
        append = out.append
        draw = self._draw
        more = self._fill_draw
        quote = self._quote_draw
        mix, mask, match = _ID_MIX, _ID_MASK, MATCH
        tickers = self.tickers
        tsec = self._tsec
        tprefix = self._tprefix
        oid = self._order_ids
        d = self._pending
        n = 0
        last = self._clock_us
        while True:
            t, level, sec, frac, b, buy, fills, taker_p, maker_p, (size_u, size_s), skip = d
            if sec != tsec:
                tsec = sec
                tprefix = self._second(sec)
            if 0 <= left < fills:
                fills = left
            taker_n = (oid * mix) & mask
            # A taker buy lifts the ask, a tick above the bid, and walks up; a sell hits the bid and walks down.
            if buy:
                level += 1
            key = b.key
            tpl = b.match_tpl[buy]
            prices = b.prices
            tid = b.trade_id
            seq = b.sequence
            low, high, vol = b.low, b.high, 0
            traded = b.traded
            for i in range(fills):
                if i:
                    try:
                        moves, maker_p, size, skip = more()
                    except StopIteration:
                        more = self._fill_draw = next(self._fills).__next__
                        moves, maker_p, size, skip = more()
                    size_u, size_s = b.sizes[size]
                    if moves:
                        if buy:
                            level += 1
                        elif level > 1:
                            level -= 1
                oid += 1
                price_s = prices.get(level) or b.price_str(level)
                tid += 1
                seq += skip
                text = tpl % (
                    tid,
                    maker_p,
                    (oid * mix) & mask,
                    taker_p,
                    taker_n,
                    size_s,
                    price_s,
                    seq,
                    tprefix,
                    frac,
                )
                append((key, match, text))
                vol += size_u
                if level < low:
                    low = level
                elif level > high:
                    high = level
                if tickers:
                    if low != b.low or high != b.high:
                        b.low, b.high = low, high
                        b.range_s = b'"low_24h":"%s","high_24h":"%s"' % (b.price_str(low), b.price_str(high))
                    try:
                        bid_q, ask_q = quote()
                    except StopIteration:
                        quote = self._quote_draw = next(self._quotes).__next__
                        bid_q, ask_q = quote()
                    append(
                        (
                            key + TICKER,
                            TICKER,
                            b.ticker(buy, level, seq, tid, price_s, size_s, bid_q, ask_q, tprefix, frac, traded + vol),
                        )
                    )
            oid += 1
            b.trade_id = tid
            b.sequence = seq
            b.traded += vol
            b.last_match = text
            b.last_fill = (buy, level, seq, tid, price_s, size_s, tprefix, frac)
            if low != b.low or high != b.high:
                b.low, b.high = low, high
                b.range_s = b'"low_24h":"%s","high_24h":"%s"' % (b.price_str(low), b.price_str(high))
            last = t
            n += fills
            if left >= 0:
                left -= fills
                if left == 0:
                    nxt = None
                    break
            try:
                d = draw()
            except StopIteration:
                draw = self._draw = next(self._orders).__next__
                d = draw()
            nxt = d[0]
            if nxt > until_us:
                break
            if budget > 0:
                budget = max(0, budget - fills)
                if budget == 0:
                    break
        self._pending = d
        self._next_us = nxt
        self._order_ids = oid
        self._tsec = tsec
        self._tprefix = tprefix
        self.trades += n
        self._clock_us = last
        return out

    def last_match(self, p: int) -> bytes:
        """The product's latest trade as the ``last_match`` a new ``matches`` subscriber gets first."""
        text = self._books[p].last_match
        return b'{"type":"last_match"' + text[len(b'{"type":"match"') :]

    def subscribe_ticker(self, p: int) -> bytes:
        """The product's latest fill as the ``ticker`` a new ``ticker`` subscriber gets first, as Coinbase
        sends one per product on subscribe. Its quote sizes are fixed so it draws no randomness."""
        b = self._books[p]
        buy, level, seq, tid, price_s, size_s, tprefix, frac = b.last_fill
        return b.ticker(buy, level, seq, tid, price_s, size_s, 0, 0, tprefix, frac, b.traded)

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
