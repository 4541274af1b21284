"""What each rule's batch kernel buys: every rule of P2 over realistic batches, with its kernel and by reference alone.

Two input shapes, as in ``benchmarks/scenarios.py``: ``p1`` (P1's exact shape: the benchmark pool's
stream, trade ids and times increasing) and ``storm`` (the anomaly storm: the first
:data:`~benchmarks.scenarios.STORM_WINDOW` events, primed in order and then resent shuffled, so
every event is a duplicate and out of order). The events are cut into batches of ``--batch``
events, each normalized as P2 normalizes a socket read (``p2.batch.normalize``), and each rule's
columns are picked per product as its driver picks them (``Detectors.process``, the analytics
consumers), before the clock starts. Every rule gets every event of the shape, the windows too
(in P2 the dedupe keeps the storm's duplicates from them; here they price their kernels on
out-of-order times).

P2's read decode (``p2.batch.WIRE_COLUMNS``: ``shared.wire.Columns``, the C scanner) is priced the same way on the
shapes' raw reads, against msgspec's typed decode, as :data:`DECODE`; and the exchange times' conversion
(``shared.timeparse.fixed_seconds``, the C kernel) and their form check (``all_fixed_form``) on the
batches' time columns, against their references, as :data:`TIMES` and :data:`FORM`.

Timed: :func:`mercurystream.p2.rule.run` over every batch, for a fresh rule (primed untimed with
the storm's window), with its kernel and with ``reference_only``, the two alternating within
each repeat so that background load falls on both. ``speedup`` is the median reference time over
the median kernel time, measured in the same run; a kernel pays when it is at least
:data:`PAYS` on some shape.

    .venv/bin/python -m benchmarks.kernels                 # JSON on stdout
    .venv/bin/python -m benchmarks.kernels --events 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks.stream import HEADER, ZERO_STAMPS, FrameStream, StormStream, generate_pool, stamps
from mercurystream.p2.analytics import TradeFilter, VolatilityWindow, VolumeWindow, VwapWindow
from mercurystream.p2.batch import WIRE_COLUMNS, Batch, normalize
from mercurystream.p2.config import P2Settings
from mercurystream.p2.detectors import (
    DuplicateDetector,
    LatencySpikeDetector,
    OutOfOrderDetector,
    SequenceGapDetector,
)
from mercurystream.p2.rule import run
from mercurystream.shared.event import pick
from mercurystream.shared.timeparse import (
    _rowscan,
    all_fixed_form,
    all_fixed_form_reference,
    fixed_seconds,
    fixed_seconds_reference,
    parse_time_us,
)

STORM_WINDOW = 20_000
"""As ``benchmarks.scenarios.STORM_WINDOW`` (not imported: that module pulls in the process lab)."""
SHAPES = ("p1", "storm")
BATCH = 256
"""Events per batch: one socket read of P2 under load (reads grow with the load, up to about 800 of P1's events)."""
PAYS = 1.1
"""A kernel at least this much faster than its reference on some shape pays for itself."""
LATENCY_MEDIAN_MS = 0.3
"""P1→P2 latencies are drawn around this (a log-normal), below the spike threshold as on a healthy feed."""

DECODE = "wire_decode"
"""The read decode's kernel, priced beside the rules' when the C scanner is built."""
TIMES = "fixed_seconds"
"""The exchange times' conversion kernel, priced beside the rules' when the C kernel is built."""
FORM = "all_fixed_form"
"""The exchange times' form check (the out-of-order rule's, P1's), priced likewise."""

Leaf = Callable[[Any], Any]
"""A leaf kernel or its reference: one call on one batch's input."""
Calls = list[tuple[Hashable, tuple[Sequence[Any], ...], Sequence[int] | None]]
"""One rule's work for a batch: ``(key, columns, positions)`` per :func:`run` call."""


@dataclass(frozen=True)
class Rule:
    name: str
    module: str
    make: Callable[[P2Settings], Any]
    calls: Callable[[Batch], Calls]


def _ids(b: Batch) -> Calls:
    """Per product, the trade ids of the events that carry one (every ``match`` event, in these shapes)."""
    tids = b.trade_ids
    out: Calls = []
    for pid, idx in b.groups().items():
        keyed = idx if b.clean else [i for i in idx if tids[i] is not None]
        if keyed:
            out.append((pid, (pick(tids, keyed),), keyed))
    return out


def _times(b: Batch) -> Calls:
    times = b.times
    out: Calls = []
    for pid, idx in b.groups().items():
        timed = idx if b.clean else [i for i in idx if times[i] is not None]
        if timed:
            out.append((pid, (pick(times, timed),), timed))
    return out


def _latencies(b: Batch) -> Calls:
    return [(None, (b.latencies,), b.latency_at)] if b.latencies else []


def _trade_ids(b: Batch) -> Calls:
    trades = b.trades()
    return [(pid, (pick(trades.ids, idx),), idx) for pid, idx in trades.groups().items()]


def _vwap(b: Batch) -> Calls:
    return [(pid, (p.prices, p.sizes, p.times), None) for pid, p in b.trades().by_product().items()]


def _volatility(b: Batch) -> Calls:
    return [(pid, (p.prices, p.times), None) for pid, p in b.trades().by_product().items()]


def _volume(b: Batch) -> Calls:
    t = b.trades()
    return [(None, (t.product_ids, t.prices, t.sizes, t.times), None)] if len(t) else []


RULES = (
    Rule("duplicate", "detectors", lambda s: DuplicateDetector(s.DUPLICATE_LRU_MAX), _ids),
    Rule("sequence_gap", "detectors", lambda s: SequenceGapDetector(s.GAP_REORDER_WINDOW), _ids),
    Rule("out_of_order", "detectors", lambda s: OutOfOrderDetector(), _times),
    Rule(
        "latency_spike",
        "detectors",
        lambda s: LatencySpikeDetector(
            s.LATENCY_SPIKE_THRESHOLD_MS, s.LATENCY_BUFFER_SIZE, s.LATENCY_EVAL_EVERY, s.LATENCY_SPIKE_CONSECUTIVE
        ),
        _latencies,
    ),
    Rule("trade_filter", "analytics", lambda s: TradeFilter(s.DUPLICATE_LRU_MAX), _trade_ids),
    Rule("vwap", "analytics", lambda s: VwapWindow(s.VWAP_WINDOW_S), _vwap),
    Rule("volatility", "analytics", lambda s: VolatilityWindow(s.VOL_WINDOW), _volatility),
    Rule("volume", "analytics", lambda s: VolumeWindow(60.0), _volume),
)


def _reads(bodies: list[bytes], size: int, rng: random.Random) -> list[tuple[list[bytes], int]]:
    """``bodies`` (frames up to their ingest stamps) as P2's reads of ``size`` payloads, each with its receive time.

    P1 stamps a read when its newest trade has happened (the exchange's clock, as on a live feed), so
    P2 takes every trade as valid: stamped at a send-rate clock instead, most trades would lie further
    ahead than ``MAX_FUTURE_SKEW_S`` and be rejected before any window saw them."""
    out = []
    last_us = 0
    for k in range(0, len(bodies), size):
        chunk = [b[HEADER.size :] for b in bodies[k : k + size]]
        newest = max(parse_time_us(orjson.loads(p + ZERO_STAMPS)["time"]) or 0 for p in chunk)
        ingest_us = last_us = max(last_us + 10 * len(chunk), newest + 1000)
        tail = stamps(ingest_us)
        payloads = [p + tail for p in chunk]
        out.append((payloads, ingest_us + round(rng.lognormvariate(0, 0.5) * LATENCY_MEDIAN_MS * 1000)))
    return out


def _batches(reads: list[tuple[list[bytes], int]]) -> list[Batch]:
    """The reads normalized as P2 normalizes them, with realistic latencies."""
    out = []
    for payloads, recv_us in reads:
        batch, errors = normalize(payloads, recv_us)
        if batch is None or errors:
            raise RuntimeError(f"the benchmark's events did not normalize: {errors[:1]}")
        out.append(batch)
    return out


def shape_reads(
    shape: str, events: int, size: int, pool: list[bytes]
) -> tuple[list[tuple[list[bytes], int]], list[tuple[list[bytes], int]]]:
    """``(priming reads, timed reads)`` of a shape."""
    rng = random.Random(5)
    if shape == "p1":
        return [], _reads(FrameStream(pool).bodies(events), size, rng)
    window = min(STORM_WINDOW, len(pool))
    prime = _reads(FrameStream(pool).bodies(window), size, rng)
    storm = StormStream(pool, window, seed=1)
    return prime, _reads(storm.bodies(events), size, rng)


def shape_batches(shape: str, events: int, size: int, pool: list[bytes]) -> tuple[list[Batch], list[Batch]]:
    """``(priming batches, timed batches)`` of a shape."""
    prime, timed = shape_reads(shape, events, size, pool)
    return _batches(prime), _batches(timed)


def _feed(rule: Any, work: list[Calls], reference_only: bool) -> float:
    t = time.perf_counter()
    for calls in work:
        for key, columns, positions in calls:
            run(rule, key, columns, positions, reference_only)
    return time.perf_counter() - t


def price(
    rule: Rule, settings: P2Settings, prime: list[Calls], work: list[Calls], repeats: int, events: int
) -> dict[str, float]:
    """Median seconds with and without the kernel over ``work``, after an untimed ``prime``."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for reference_only in (False, True) if r % 2 == 0 else (True, False):
            state = rule.make(settings)
            _feed(state, prime, False)
            times[reference_only].append(_feed(state, work, reference_only))
    kernel, reference = statistics.median(times[False]), statistics.median(times[True])
    return {
        "kernel_us_per_event": round(kernel / events * 1e6, 4),
        "reference_us_per_event": round(reference / events * 1e6, 4),
        "speedup": round(reference / kernel, 3) if kernel else 0.0,
    }


def price_leaf(kernel: Leaf, reference: Leaf, inputs: list[Any], repeats: int, events: int) -> dict[str, float]:
    """A leaf kernel (one call per batch) against its plain reference, over the same inputs."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for reference_only in (False, True) if r % 2 == 0 else (True, False):
            fn = reference if reference_only else kernel
            t = time.perf_counter()
            for x in inputs:
                fn(x)
            times[reference_only].append(time.perf_counter() - t)
    kernel_s, reference_s = statistics.median(times[False]), statistics.median(times[True])
    return {
        "kernel_us_per_event": round(kernel_s / events * 1e6, 4),
        "reference_us_per_event": round(reference_s / events * 1e6, 4),
        "speedup": round(reference_s / kernel_s, 3) if kernel_s else 0.0,
    }


def measure(events: int, repeats: int, batch: int, pool_events: int = 100_000) -> dict[str, Any]:
    settings = P2Settings()
    pool = generate_pool(min(pool_events, max(events, STORM_WINDOW)))
    reads = {shape: shape_reads(shape, events, batch, pool) for shape in SHAPES}
    shapes = {shape: (_batches(prime), _batches(timed)) for shape, (prime, timed) in reads.items()}
    result: dict[str, Any] = {"events": events, "repeats": repeats, "batch": batch, "pays_at": PAYS, "kernels": {}}
    for rule in RULES:
        prices: dict[str, Any] = {"module": rule.module}
        for shape, (prime, timed) in shapes.items():
            prime_calls = [rule.calls(b) for b in prime]
            work = [rule.calls(b) for b in timed]
            prices[shape] = price(rule, settings, prime_calls, work, repeats, sum(map(len, timed)))
        prices["pays"] = any(prices[shape]["speedup"] >= PAYS for shape in SHAPES)
        result["kernels"][rule.name] = prices
    if WIRE_COLUMNS.kernel(reads["p1"][1][0][0]) is not None:
        payloads = {shape: [p for p, _ in timed] for shape, (_, timed) in reads.items()}
        result["kernels"][DECODE] = _price_leaf("shared.wire", WIRE_COLUMNS, WIRE_COLUMNS.reference, payloads, repeats)
    if _rowscan is not None:
        columns = {shape: [list(b.times) for b in timed] for shape, (_, timed) in shapes.items()}
        result["kernels"][TIMES] = _price_leaf(
            "shared.timeparse", fixed_seconds, fixed_seconds_reference, columns, repeats
        )
        result["kernels"][FORM] = _price_leaf(
            "shared.timeparse", all_fixed_form, all_fixed_form_reference, columns, repeats
        )
    return result


def _price_leaf(
    module: str, kernel: Leaf, reference: Leaf, inputs: dict[str, list[Any]], repeats: int
) -> dict[str, Any]:
    """:func:`price_leaf` on each shape's inputs (one a batch), and whether it pays."""
    prices: dict[str, Any] = {"module": module}
    for shape, xs in inputs.items():
        prices[shape] = price_leaf(kernel, reference, xs, repeats, sum(map(len, xs)))
    prices["pays"] = any(prices[shape]["speedup"] >= PAYS for shape in SHAPES)
    return prices


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=50_000, help="events per shape (default 50000)")
    p.add_argument("--repeats", type=int, default=5, help="timings per rule, shape and way; medians (default 5)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"events per batch, as one socket read (default {BATCH})")
    args = p.parse_args(argv)
    if args.events <= 0 or args.repeats <= 0 or args.batch <= 0:
        p.error("--events, --repeats and --batch must be positive")
    json.dump(measure(args.events, args.repeats, args.batch), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
