"""Trades for the analytics tests, and the one way the consumers feed their windows and filters."""

from __future__ import annotations

from datetime import UTC, datetime

from mercurystream.p2.analytics import TradeFilter, VolatilityWindow, VolumeWindow
from mercurystream.p2.batch import Batch
from mercurystream.p2.rule import run
from mercurystream.shared.event import group_positions, pick

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def iso(offset_s: float) -> str:
    return datetime.fromtimestamp(BASE + offset_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def trade(tid=1, product="BTC-USD", price=100.0, size=1.0, t=0.0, **extra):
    ev = {"type": "match", "product_id": product, "price": price, "last_size": size, "time": iso(t), "trade_id": tid}
    ev.update(extra)
    return ev


def accepted_columns(f: TradeFilter, events: list[dict]) -> tuple:
    """The product ids, prices, sizes and times in seconds of the events that ``f`` counts."""
    trades = f.accept(Batch.of_events(events))
    return trades.product_ids, trades.prices, trades.sizes, trades.times


def accepted(f: TradeFilter, events: list[dict]) -> list[tuple]:
    """The ``(product_id, price, size, time_s)`` of the events that ``f`` counts, in order."""
    return list(zip(*accepted_columns(f, events), strict=True))


def feed(window, trades: list[tuple]) -> set[str]:
    """``(product_id, price, size, time_s)`` trades into a window as its consumer feeds it; the products fed."""
    if not trades:
        return set()
    pids, prices, sizes, times = (list(col) for col in zip(*trades, strict=True))
    if isinstance(window, VolumeWindow):
        run(window, None, (pids, prices, sizes, times))
        window.evict()
        return set(pids)
    for pid, idx in group_positions(pids).items():
        p_prices, p_times = list(pick(prices, idx)), list(pick(times, idx))
        if isinstance(window, VolatilityWindow):
            run(window, pid, (p_prices, p_times))
        else:
            run(window, pid, (p_prices, list(pick(sizes, idx)), p_times))
    return set(pids)
