"""The one dedupe of P2: every batch's duplicate verdicts, decided once, in stream order, at publish.

The duplicate rule (``detectors.DuplicateDetector``: forensics) and the analytics' dedupe
(``analytics.TradeFilter``: VWAP, volatility, volume) keep their own definitions, but run once per
batch here, before any subscriber queue sees it, with their ids in one :class:`RecentIdStore`
bounded in total by ``DEDUPE_IDS``. The verdicts travel with the batch (``Batch.duplicates``,
``Batch.repeats``, kept by ``Batch.part``), so the analytics consumers no longer hold three copies,
and a consumer's drop-oldest cannot change what anyone else judges a duplicate.
"""

from __future__ import annotations

from loguru import logger

from mercurystream.p2.analytics.dedupe import TradeFilter
from mercurystream.p2.batch import Batch
from mercurystream.p2.detectors.duplicate import DuplicateDetector, duplicates_of
from mercurystream.p2.recent_ids import RecentIdStore
from mercurystream.shared.clip import SAMPLE_MAX, clip
from mercurystream.shared.logger import LogSampler

DETECTOR = "duplicate"
ANALYTICS = "analytics"


class Dedupe:
    """:meth:`judge` is ``Bus.judge``: the verdicts of a batch, set on it; the ids under one bound."""

    def __init__(self, lru_max: int, max_ids: int, *, detector: bool = True, analytics: bool = True) -> None:
        """``detector``/``analytics``: decide only the verdicts someone reads (forensics on, analytics on)."""
        self.store = RecentIdStore(max_ids)
        self.detector = DuplicateDetector(lru_max, self.store.namespace(DETECTOR)) if detector else None
        self.filter = TradeFilter(lru_max, state=self.store.namespace(ANALYTICS)) if analytics else None
        self.errors = 0
        self._sampler = LogSampler()

    @property
    def evicted_ids(self) -> int:
        """Ids forgotten, oldest product first, because the store reached ``DEDUPE_IDS``."""
        return self.store.evicted_ids

    def judge(self, batch: Batch) -> None:
        """Set the batch's verdicts. A rule that raises (a bug, or a batch no receiver makes) leaves
        that verdict unset: each consumer then decides it itself and isolates the failing event,
        counted as ``consumer_error`` (``p2.consumer``), so publishing never fails."""
        products = batch.groups().keys()
        if self.detector is not None:
            try:
                batch.duplicates = duplicates_of(self.detector, batch)
            except Exception as exc:
                self._failed(DETECTOR, exc)
            self.store.touched(DETECTOR, products)
        if self.filter is not None:
            try:
                batch.repeats = self.filter.repeats(batch)
            except Exception as exc:
                self._failed(ANALYTICS, exc)
            self.store.touched(ANALYTICS, products)

    def _failed(self, rule: str, exc: Exception) -> None:
        self.errors += 1
        if self._sampler.should_log(rule):
            logger.warning(
                f"dedupe: the {rule} rule raised {type(exc).__name__}: {clip(exc, SAMPLE_MAX)}; "
                "its consumers decide this batch themselves"
            )
