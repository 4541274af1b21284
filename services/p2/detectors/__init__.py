"""Data-quality detectors: one rule per module, run over each batch by :class:`Detectors`.

Each rule (``drift``, ``duplicate``, ``out_of_order``, ``sequence_gap``, ``latency_spike``) is a
plain class whose ``observe`` is the per-event reference and whose class docstring states the
precise rule, corner cases included; ``p2.rule.run`` drives it, taking its batch kernel where the
kernel accepts a product's values. The detectors are independent: a drifted event is still
checked by every other detector whose fields it carries with the right kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import compress, repeat
from operator import itemgetter
from typing import Any

from mercurystream.p2.batch import Batch
from mercurystream.p2.detectors.drift import DriftDetector
from mercurystream.p2.detectors.duplicate import MAX_PRODUCTS, DuplicateDetector, duplicates_of
from mercurystream.p2.detectors.latency_spike import LatencySpikeDetector, SpikeEvidence, nearest_rank
from mercurystream.p2.detectors.out_of_order import OutOfOrderDetector
from mercurystream.p2.detectors.sequence_gap import SequenceGapDetector
from mercurystream.p2.rule import run
from mercurystream.shared.event import pick
from mercurystream.shared.schema import GAP

__all__ = [
    "ANOMALY_TYPES",
    "DUPLICATE",
    "LATENCY_SPIKE",
    "MAX_PRODUCTS",
    "OUT_OF_ORDER",
    "SCHEMA_DRIFT",
    "SEQUENCE_GAP",
    "TRIGGER_TYPES",
    "Anomaly",
    "Detectors",
    "DriftDetector",
    "DuplicateDetector",
    "Findings",
    "LatencySpikeDetector",
    "OutOfOrderDetector",
    "SequenceGapDetector",
    "SpikeEvidence",
    "describe",
    "nearest_rank",
]

SCHEMA_DRIFT = "schema_drift"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
SEQUENCE_GAP = "sequence_gap"
LATENCY_SPIKE = "latency_spike"

ANOMALY_TYPES = (SCHEMA_DRIFT, DUPLICATE, OUT_OF_ORDER, SEQUENCE_GAP, LATENCY_SPIKE)
TRIGGER_TYPES = frozenset({DUPLICATE, SEQUENCE_GAP, LATENCY_SPIKE})
"""Anomaly types that start a flight-recorder capture; drift and out-of-order are counted only."""


DETAIL_KEYS = {DUPLICATE: ("trade_id", "lru_max"), OUT_OF_ORDER: ("time", "latest_time")}
"""The detail keys of the anomalies a storm is made of: their rows carry the values alone."""


class Anomaly:
    """One detection: ``index`` is the position of the causing event in the batch given to :meth:`Detectors.process`.

    ``count`` is how much it adds to its type's counter (the number of missing ids for a gap, else 1).
    ``evidence``, when set, computes costly detail (a latency spike's p99 values); :meth:`resolve`
    runs it once, so only anomalies that become incidents pay for it, on the bundle writer's thread.
    """

    __slots__ = ("count", "detail", "evidence", "index", "product_id", "type")

    def __init__(
        self,
        type: str,
        index: int,
        count: int,
        product_id: str | None,
        detail: dict[str, Any],
        evidence: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.type = type
        self.index = index
        self.count = count
        self.product_id = product_id
        self.detail = detail
        self.evidence = evidence

    @classmethod
    def of_row(cls, row: Row) -> Anomaly:
        """The anomaly a :class:`Findings` row stands for."""
        index, type_, count, product_id, detail, evidence = row
        if type(detail) is tuple:
            detail = dict(zip(DETAIL_KEYS[type_], detail, strict=True))
        return cls(type_, index, count, product_id, detail, evidence)

    def row(self) -> Row:
        return (self.index, self.type, self.count, self.product_id, self.detail, self.evidence)

    def resolve(self) -> dict[str, Any]:
        """``detail`` completed with the deferred evidence."""
        if self.evidence is not None:
            self.detail = {**self.detail, **self.evidence()}
            self.evidence = None
        return self.detail

    def __repr__(self) -> str:
        return f"Anomaly({self.type!r}, index={self.index}, count={self.count}, product_id={self.product_id!r})"


Row = tuple[int, str, int, "str | None", Any, "Callable[[], dict[str, Any]] | None"]
"""An anomaly as :class:`Findings` holds it: ``(index, type, count, product_id, detail, evidence)``,
where the detail of a type in :data:`DETAIL_KEYS` may be the tuple of its values."""

_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


class Findings:
    """A batch's anomalies in event order, as rows; each becomes an :class:`Anomaly` only when one is wanted.

    In an anomaly storm nearly every event makes an anomaly or two, and nearly all of them are only
    counted (the flight recorder suppresses triggers while it cools down): an object and a dict
    for each would cost more than the detection. So the rules' hits are kept as plain tuples
    (:data:`Row`), made in C-level passes, and ``per_type`` is how much they add to each type's
    counter. Iterating gives :class:`Anomaly` objects.
    """

    __slots__ = ("_per_type", "rows")

    def __init__(self, rows: list[Row], per_type: dict[str, int] | None = None) -> None:
        """``rows`` sorted by index; ``per_type``: their counts by type, when the caller knows them."""
        self.rows = rows
        self._per_type = per_type

    @classmethod
    def of(cls, anomalies: Iterable[Anomaly]) -> Findings:
        """Findings of anomalies made one by one (a manual dump, tests), in their order."""
        return cls([a.row() for a in anomalies])

    @property
    def per_type(self) -> dict[str, int]:
        """How much these anomalies add to each type's counter (types with none left out)."""
        if self._per_type is None:
            counts: dict[str, int] = {}
            for _, t, n, *_ in self.rows:
                counts[t] = counts.get(t, 0) + n
            self._per_type = counts
        return self._per_type

    @property
    def indices(self) -> list[int]:
        return list(map(_FIRST, self.rows))

    @property
    def types(self) -> list[str]:
        return list(map(_SECOND, self.rows))

    def triggers(self) -> Findings:
        """The anomalies that may start a capture (:data:`TRIGGER_TYPES`), in order."""
        rows = self.rows
        return Findings(list(compress(rows, map(TRIGGER_TYPES.__contains__, map(_SECOND, rows)))))

    def anomalies(self) -> list[Anomaly]:
        return list(map(Anomaly.of_row, self.rows))

    def __iter__(self) -> Iterator[Anomaly]:
        return map(Anomaly.of_row, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Findings({self.anomalies()!r})"


class Detectors:
    """All five detectors over a batch: :meth:`process` gives the anomalies in event order, counted (:class:`Findings`).

    The per-product rules run product by product, in the order products first appear in the batch
    (so per-product state is created in event order), each on the events that carry its fields
    with the right kind; the latency rule runs on the batch's latencies.
    """

    def __init__(
        self,
        *,
        duplicate_lru_max: int = 50_000,
        gap_reorder_window: int = 50,
        latency_threshold_ms: float = 100.0,
        latency_buffer_size: int = 3000,
        latency_eval_every: int = 100,
        latency_consecutive: int = 2,
        drift_samples_per_min: int = 100,
        kernels: bool = True,
    ) -> None:
        """``kernels=False`` runs every rule by its reference alone (the tests compare the two)."""
        self.reference_only = not kernels
        self.drift = DriftDetector(drift_samples_per_min)
        self.duplicate = DuplicateDetector(duplicate_lru_max)
        """Used only for batches that carry no verdict of their own (``Batch.duplicates``)."""
        self.judged_duplicates = 0
        """Duplicates counted from the verdicts the batches carried."""
        self.out_of_order = OutOfOrderDetector()
        self.sequence_gap = SequenceGapDetector(gap_reorder_window)
        self.latency = LatencySpikeDetector(
            latency_threshold_ms, latency_buffer_size, latency_eval_every, latency_consecutive
        )

    @classmethod
    def from_settings(cls, settings: Any) -> Detectors:
        return cls(
            duplicate_lru_max=settings.DUPLICATE_LRU_MAX,
            gap_reorder_window=settings.GAP_REORDER_WINDOW,
            latency_threshold_ms=settings.LATENCY_SPIKE_THRESHOLD_MS,
            latency_buffer_size=settings.LATENCY_BUFFER_SIZE,
            latency_eval_every=settings.LATENCY_EVAL_EVERY,
            latency_consecutive=settings.LATENCY_SPIKE_CONSECUTIVE,
            drift_samples_per_min=settings.DRIFT_SAMPLES_PER_MIN,
        )

    @property
    def counts(self) -> dict[str, int]:
        return {
            SCHEMA_DRIFT: self.drift.count,
            DUPLICATE: self.duplicate.count + self.judged_duplicates,
            OUT_OF_ORDER: self.out_of_order.count,
            SEQUENCE_GAP: self.sequence_gap.count,
            LATENCY_SPIKE: self.latency.count,
        }

    def process(self, batch: Batch, now_s: float = 0.0) -> Findings:
        """Check a batch; ``now_s`` (wall clock, read once per batch) paces the drift samples."""
        before = self.counts
        out: list[Row] = []
        pids = batch.product_ids
        if batch.drift:
            observe = self.drift.observe
            out.extend((i, SCHEMA_DRIFT, 1, pids[i], observe(d, now_s), None) for i, d in batch.drift)
        tids = batch.trade_ids
        times = batch.times
        types = batch.types
        clean = batch.clean
        # A time the schema calls invalid (not a time, or past the batch's bound) moves no clock:
        # it must not become a product's latest.
        trades = batch.trades()
        off_clock = set(trades.off_clock)
        groups = batch.groups()
        # The trades' own per-product ids when they group the batch itself (the clean case): the
        # dedupes asked about those very columns already, so "increasing?" is remembered.
        shared = trades.by_product() if clean and trades.groups() is groups else None
        all_match = clean and types.count("match") == len(types)
        lru = self.duplicate.max_ids
        window = self.sequence_gap.window
        backfilled = set(batch.backfilled)
        dups = batch.duplicates
        if dups is None:
            dups = duplicates_of(self.duplicate, batch, self.reference_only)
        else:
            self.judged_duplicates += len(dups)
        if dups:
            details = zip(map(tids.__getitem__, dups), repeat(lru))
            out += zip(dups, repeat(DUPLICATE), repeat(1), map(pids.__getitem__, dups), details, repeat(None))
        notices: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for i, c in batch.controls:
            if c["type"] == GAP:
                notices.setdefault(c["product_id"], []).append((i, c))
        for pid, group in groups.items():
            idx = group
            if backfilled:
                idx = [i for i in idx if i not in backfilled]
            keyed = idx if clean else [i for i in idx if tids[i] is not None]
            if notices and pid in notices:
                matches = [i for i in keyed if types[i] == "match"]
                self._gaps_with_notices(pid, matches, tids, notices[pid], out)
            if keyed:
                p_tids = shared[pid].ids if shared is not None and keyed is group else pick(tids, keyed)
                matches = keyed if all_match else [i for i in keyed if types[i] == "match"]
                if matches and not (notices and pid in notices):
                    m_tids = p_tids if matches is keyed else pick(tids, matches)
                    for i, (ranges, n) in run(self.sequence_gap, pid, (m_tids,), matches, self.reference_only):
                        detail = {"ranges": ranges, "trade_id": tids[i], "window": window}
                        out.append((i, SEQUENCE_GAP, n, pid, detail, None))
            timed = idx if clean and not off_clock else [i for i in idx if times[i] is not None and i not in off_clock]
            if timed:
                hits = run(self.out_of_order, pid, (pick(times, timed),), timed, self.reference_only)
                if hits:
                    at = list(map(_FIRST, hits))
                    details = zip(map(times.__getitem__, at), map(_SECOND, hits), strict=True)
                    out += zip(at, repeat(OUT_OF_ORDER), repeat(1), repeat(pid), details, repeat(None))
        if batch.latencies:
            for i, spike in run(self.latency, None, (batch.latencies,), batch.latency_at, self.reference_only):
                out.append((i, LATENCY_SPIKE, 1, None, spike.summary, spike))
        out.sort(key=_FIRST)
        after = self.counts
        return Findings(out, {t: n - before[t] for t, n in after.items() if n != before[t]})

    def _gaps_with_notices(
        self,
        pid: str,
        matches: list[int],
        tids: Any,
        notices: list[tuple[int, dict[str, Any]]],
        out: list[Row],
    ) -> None:
        """The gap rule over one product's matches with P1's gap notices taken in their place in the batch."""
        window = self.sequence_gap.window
        k = 0
        for j, c in notices:
            seg = []
            while k < len(matches) and matches[k] < j:
                seg.append(matches[k])
                k += 1
            self._gap_segment(pid, seg, tids, out)
            hit = self.sequence_gap.notice(pid, c["first_missing"], c["last_missing"])
            if hit is not None:
                ranges, n = hit
                detail = {"ranges": ranges, "trade_id": None, "window": window, "source": c["source"]}
                out.append((j, SEQUENCE_GAP, n, pid, detail, None))
        self._gap_segment(pid, matches[k:], tids, out)

    def _gap_segment(self, pid: str, seg: list[int], tids: Any, out: list[Row]) -> None:
        if not seg:
            return
        window = self.sequence_gap.window
        for i, (ranges, n) in run(self.sequence_gap, pid, (pick(tids, seg),), seg, self.reference_only):
            out.append((i, SEQUENCE_GAP, n, pid, {"ranges": ranges, "trade_id": tids[i], "window": window}, None))


def describe(anomaly: Anomaly) -> str:
    """A one-line human reason for an anomaly (meta.json's ``reason`` and the report)."""
    d = anomaly.detail
    pid = anomaly.product_id
    t = anomaly.type
    if t == DUPLICATE:
        return f"trade_id {d.get('trade_id')} of {pid} is among its last {d.get('lru_max')} distinct trade ids"
    if t == SEQUENCE_GAP:
        ranges = d.get("ranges", [])
        spans = ", ".join(f"{lo}" if lo == hi else f"{lo}..{hi}" for lo, hi in ranges[:5])
        more = f" and {len(ranges) - 5} more ranges" if len(ranges) > 5 else ""
        if d.get("source"):
            return f"{anomaly.count} trade id(s) of {pid} missing ({spans}{more}), announced by P1 ({d['source']})"
        return f"{anomaly.count} trade id(s) of {pid} missing ({spans}{more}) after {d.get('window')} later events"
    if t == LATENCY_SPIKE:
        return (
            f"P1->P2 latency p99 {d.get('p99_ms')} ms above {d.get('threshold_ms')} ms "
            f"at {len(d.get('run_p99_ms', []))} evaluations in a row"
        )
    if t == OUT_OF_ORDER:
        return f"time {d.get('time')} of {pid} is earlier than {d.get('latest_time')}"
    if t == SCHEMA_DRIFT:
        return f"missing {d.get('missing')}, mismatched {[m['key'] for m in d.get('mismatched', [])]}"
    return t
