"""Seeded fault injection on one client's outgoing stream, sans I/O.

Downstream detectors (duplicates, gaps, out-of-order, schema drift) need real faults to find. Only
trade messages (``match``/``ticker``) are touched; heartbeats and replies pass untouched. Faults come
from per-message rates and from on-demand requests ("inject 3 duplicates now"), which take the next
trade messages first. Every fault is counted by kind, and malformed ones also by variant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

from mercurystream.exchange.market import TICKER, Msg

DUPLICATE, GAP, REORDER, MALFORMED = "duplicate", "gap", "reorder", "malformed"
KINDS = (DUPLICATE, GAP, REORDER, MALFORMED)
MALFORMED_VARIANTS = ("bad_price", "missing_field", "wrong_type", "invalid_json")


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probability, per trade message, of each fault. They exclude each other, so the sum is at most 1."""

    duplicate: float = 0.0
    gap: float = 0.0
    reorder: float = 0.0
    malformed: float = 0.0

    def __post_init__(self) -> None:
        for kind in KINDS:
            r = getattr(self, kind)
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"{kind} rate must be in [0, 1], got {r}")
        if self.total > 1.0:
            raise ValueError("fault rates must add up to at most 1")

    @property
    def total(self) -> float:
        return self.duplicate + self.gap + self.reorder + self.malformed


def malform(msg: Msg, variant: str) -> Msg:
    """The message with one realistic defect, keeping its route and kind."""
    key, kind, text = msg
    if variant == "invalid_json":
        return key, kind, text[: max(1, len(text) // 2)]
    obj = orjson.loads(text)
    if variant == "bad_price":
        obj["price"] = "not-a-number"
    elif variant == "missing_field":
        obj.pop("price", None)
    elif variant == "wrong_type":
        # An epoch number where an ISO string belongs: what a schema change upstream looks like.
        obj["time"] = 1_714_567_890_123
    else:
        raise ValueError(f"unknown malformed variant {variant!r}")
    return key, kind, orjson.dumps(obj)


class FaultInjector:
    """Apply faults to batches of outgoing messages; deterministic for a seed and input stream.

    A reordered message is held back and released right after ``1..reorder_window`` later messages
    with the same route (product and channel), so a per-product detector sees it out of order.
    """

    def __init__(self, rates: FaultRates | None = None, seed: int = 0, reorder_window: int = 5) -> None:
        if reorder_window < 1:
            raise ValueError("reorder_window must be >= 1")
        self.rates = rates or FaultRates()
        self._rng = random.Random(seed)
        self._window = reorder_window
        r = self.rates
        self._thresholds = (
            (r.duplicate, DUPLICATE),
            (r.duplicate + r.gap, GAP),
            (r.duplicate + r.gap + r.reorder, REORDER),
            (r.total, MALFORMED),
        )
        self._random = r.total > 0.0
        self._pending = dict.fromkeys(KINDS, 0)
        self._pending_total = 0
        self._held: list[list] = []
        self.injected = dict.fromkeys(KINDS, 0)
        self.malformed = dict.fromkeys(MALFORMED_VARIANTS, 0)

    @property
    def active(self) -> bool:
        """False when :meth:`apply` would return its input unchanged: the caller may skip it."""
        return self._random or self._pending_total > 0 or bool(self._held)

    @property
    def held(self) -> int:
        return len(self._held)

    def inject(self, kind: str, count: int) -> None:
        """Queue ``count`` faults of ``kind`` for the next trade messages."""
        if kind not in self._pending:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        if count < 0:
            raise ValueError("count must be >= 0")
        self._pending[kind] += count
        self._pending_total += count

    def _next_fault(self) -> str | None:
        if self._pending_total:
            for kind in KINDS:
                if self._pending[kind]:
                    self._pending[kind] -= 1
                    self._pending_total -= 1
                    return kind
        if self._random:
            u = self._rng.random()
            for threshold, kind in self._thresholds:
                if u < threshold:
                    return kind
        return None

    def apply(self, msgs: list[Msg]) -> list[Msg]:
        if not self.active:
            return msgs
        out: list[Msg] = []
        append = out.append
        injected = self.injected
        for m in msgs:
            if m[1] > TICKER:
                append(m)
                continue
            fault = self._next_fault()
            if fault is None:
                append(m)
            elif fault is DUPLICATE:
                append(m)
                append(m)
            elif fault is GAP:
                pass
            elif fault is MALFORMED:
                variant = MALFORMED_VARIANTS[self._rng.randrange(len(MALFORMED_VARIANTS))]
                self.malformed[variant] += 1
                append(malform(m, variant))
            else:
                self._held.append([m[0], self._rng.randint(1, self._window), m])
            if fault is not None:
                injected[fault] += 1
            if self._held and fault is not REORDER and fault is not GAP:
                self._release(m[0], append)
        return out

    def _release(self, key: int, append) -> None:
        """Count one more message on route ``key`` against the held ones; emit those now due."""
        keep = []
        for h in self._held:
            if h[0] == key:
                h[1] -= 1
                if h[1] <= 0:
                    append(h[2])
                    continue
            keep.append(h)
        self._held = keep

    def flush(self) -> list[Msg]:
        """Messages still held back for reordering, for when the stream ends."""
        out = [h[2] for h in self._held]
        self._held = []
        return out
