"""The analytics' arithmetic as plain classes: no event loop, no clock reads, no I/O.

Each analytics consumer takes a batch's valid trades (``Batch.trades``, checked once per batch for
all of them), keeps those its own :class:`TradeFilter` has not counted yet, and feeds them to its
window. Every window runs on exchange time, so a replay at any speed produces the figures the live
stream did. Each window and the filter is a rule in the sense of ``p2.rule``: a per-trade
``observe`` that is the reference, and one ``try_batch`` kernel held equal to it.
"""

from mercurystream.p2.analytics.dedupe import DUPLICATE, FILTER_REASONS, TOO_MANY_PRODUCTS, TradeFilter
from mercurystream.p2.analytics.quantile import RollingQuantile
from mercurystream.p2.analytics.volatility import OUT_OF_ORDER, SECONDS_PER_YEAR, VolatilityWindow
from mercurystream.p2.analytics.volume import VolumeWindow
from mercurystream.p2.analytics.vwap import OUTSIDE_WINDOW, VwapWindow

__all__ = [
    "DUPLICATE",
    "FILTER_REASONS",
    "OUTSIDE_WINDOW",
    "OUT_OF_ORDER",
    "SECONDS_PER_YEAR",
    "TOO_MANY_PRODUCTS",
    "RollingQuantile",
    "TradeFilter",
    "VolatilityWindow",
    "VolumeWindow",
    "VwapWindow",
]
