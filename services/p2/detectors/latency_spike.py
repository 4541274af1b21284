"""``latency_spike``: the rolling p99 of P1→P2 latency above a threshold at N evaluations in a row."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from heapq import nlargest
from itertools import accumulate, chain, compress, islice, repeat
from operator import and_, not_, sub
from typing import Any


def nearest_rank(n: int, q_percent: int = 99) -> int:
    """The 1-based nearest rank of the ``q_percent`` quantile of ``n`` samples: ``ceil(q*n/100)``."""
    return max(1, (q_percent * n + 99) // 100)


class LatencySpikeDetector:
    """``latency_spike``: rolling p99 of P1→P2 latency above the threshold at N evaluations in a row.

    The window is the last ``buffer_size`` samples. An evaluation happens at every ``eval_every``-th
    sample (over the samples so far while the window fills), counted from the latest sample above
    the threshold that arrived when the window held none: that is where a latency episode starts,
    and where the count and the run restart. The cadence is thus set by the stream, not by how long
    P2 has run, so a bundle replayed into a fresh P2 is evaluated at the same samples as the P2
    that captured it, once its lines cover the episode's start and a window before the run. p99 is
    the nearest-rank quantile, the sample at rank ``ceil(0.99 n)``. After ``consecutive``
    evaluations above the threshold in a row, a spike is counted and the run restarts from zero.

    The test needs no sorted structure: the p99 exceeds the threshold exactly when at least
    ``n - rank + 1`` window samples do, so the detector keeps a count of samples above the threshold,
    brought up to date a batch at a time (:meth:`try_batch`: two prefix sums over a batch). A spike
    keeps a copy of the samples behind it (:class:`SpikeEvidence`); the p99 values are computed from
    it only if the spike becomes an incident, so a sustained overload (a spike every few
    evaluations) does not add selection work to an already late stream.
    """

    def __init__(
        self, threshold_ms: float = 100.0, buffer_size: int = 3000, eval_every: int = 100, consecutive: int = 2
    ) -> None:
        if buffer_size <= 0 or eval_every <= 0 or consecutive <= 0:
            raise ValueError("buffer_size, eval_every and consecutive must be positive")
        self.threshold_ms = float(threshold_ms)
        self.buffer_size = buffer_size
        self.eval_every = eval_every
        self.consecutive = consecutive
        self.count = 0
        self.samples = 0
        self.since = 0
        """Samples since the cadence last started, modulo ``eval_every``: 0 at an evaluation."""
        self.evaluations = 0
        self.run = 0
        self.above = 0
        self._window: deque[float] = deque(maxlen=buffer_size)
        self._evicted: deque[float] = deque(maxlen=eval_every * consecutive)

    def step(self, latency_ms: float) -> bool | None:
        """Add one sample: ``None`` unless it is an evaluation, else whether the p99 is above the threshold.

        The cadence's one definition; the chart's rolling p99 (``p2/incident/marks.py``) walks it too.
        """
        window = self._window
        if not self.above and latency_ms > self.threshold_ms:
            self.since = 0
            self.run = 0
        if len(window) == self.buffer_size:
            gone = window[0]
            self._evicted.append(gone)
            if gone > self.threshold_ms:
                self.above -= 1
        window.append(latency_ms)
        if latency_ms > self.threshold_ms:
            self.above += 1
        self.samples += 1
        self.since = (self.since + 1) % self.eval_every
        if self.since:
            return None
        self.evaluations += 1
        n = len(window)
        return self.above >= n - nearest_rank(n) + 1

    def observe(self, key: object, latency_ms: float) -> SpikeEvidence | None:
        """The reference: add one sample; the spike (counted) if this sample's evaluation completes a run."""
        above = self.step(latency_ms)
        if above is None:
            return None
        if not above:
            self.run = 0
            return None
        self.run += 1
        if self.run < self.consecutive:
            return None
        self.run = 0
        self.count += 1
        window = self._window
        samples = [*self._evicted, *window]
        return self._spike(samples, 0, len(window), self.samples)

    def try_batch(self, key: object, columns: Sequence[Sequence[float]], hits: list[tuple[int, Any]]) -> bool:
        """Add samples in order, appending ``(position, spike)`` for each spike; takes any batch.

        Only an evaluation needs the count above the threshold, and that count is the window's
        before the batch, plus the new samples above it so far, minus those that have left the
        window: two prefix sums over the batch (C-level passes) give it at any position, so the
        Python-level work is one step per ``eval_every`` samples, late stream or not.
        """
        (values,) = columns
        k = len(values)
        if not k:
            return True
        if self._quiet(values):
            return True
        window = self._window
        thr = self.threshold_ms
        above_thr = thr.__lt__
        size = self.buffer_size
        every = self.eval_every
        before = self.samples
        w = len(window)
        leaving = max(0, w + k - size)
        """How many of the window's samples and then of ``values`` leave the window in this batch."""
        # In an overload every sample is above the threshold: the prefix counts are then the
        # positions themselves, and one short-circuiting pass finds that out.
        all_above = all(map(above_thr, values))
        if all_above:
            new_above: Sequence[int] = range(k + 1)
            every_above = self.above == w
        else:
            new_above = list(accumulate(map(above_thr, values), initial=0))
            every_above = False
        if every_above:
            gone_above: Sequence[int] = range(leaving + 1)
        else:
            gone_above = list(accumulate(map(above_thr, islice(chain(window, values), leaving)), initial=0))
        if self.above > gone_above[min(leaving, w)]:
            restarts: list[int] = []  # a sample above stays in the window throughout
        elif all_above:
            restarts = [] if self.above else [0]
        else:
            restarts = self._restarts(values, new_above, gone_above)
        out = hits
        samples: list[float] | None = None
        """The evicted samples, the window and ``values`` in one list, made at the batch's first spike
        and shared by all of them: under a sustained overload a spike comes every few evaluations."""
        first = (every - 1 - self.since) % every
        for stop in (*restarts, k):
            for pos in range(first, stop, every):
                end = w + pos + 1
                start = max(0, end - size)
                n = end - start
                self.evaluations += 1
                if self.above + new_above[pos + 1] - gone_above[start] >= n - nearest_rank(n) + 1:
                    self.run += 1
                    if self.run >= self.consecutive:
                        self.run = 0
                        self.count += 1
                        if samples is None:
                            samples = [*self._evicted, *window, *values]
                        out.append((pos, self._spike(samples, start, end, before + pos + 1)))
                else:
                    self.run = 0
            if stop < k:  # ``stop`` starts an episode
                self.run = 0
                first = stop + every - 1
        if leaving:
            self._evicted.extend(islice(chain(window, values), leaving))
        window.extend(values)
        self.above += new_above[k] - gone_above[leaving]
        self.samples = before + k
        self.since = (k - restarts[-1] if restarts else self.since + k) % every
        return True

    def _restarts(self, values: Sequence[float], new_above: Sequence[int], gone_above: Sequence[int]) -> list[int]:
        """The positions of ``values`` that start an episode: above the threshold, after a window with none.

        The window's count above after each sample is the count before the batch, plus the prefix
        of ``values`` above, minus the prefix of what has left (nothing before the window is full):
        C-level passes, as for the evaluations.
        """
        k = len(values)
        filling = min(k, max(0, self.buffer_size - len(self._window)))
        gone_at = chain(repeat(0, filling), islice(gone_above, 1, None))
        after = map(sub, map(self.above.__add__, islice(new_above, 1, None)), gone_at)
        calm_before = chain((not self.above,), map(not_, after))
        return list(compress(range(k), map(and_, calm_before, map(self.threshold_ms.__lt__, values))))

    def _quiet(self, values: Sequence[float]) -> bool:
        """The batch with no sample above the threshold in it or in the window, the common case.

        Then no sample starts an episode and every evaluation in it finds none above, which only
        resets the run: a ``max`` and two ``extend`` calls. ``False`` (and nothing done) for any
        other batch.
        """
        if self.above or not values or max(values) > self.threshold_ms:
            return False
        window = self._window
        overflow = len(window) + len(values) - self.buffer_size
        if overflow > 0:
            self._evicted.extend(islice(chain(window, values), overflow))
        window.extend(values)
        self.samples += len(values)
        since = self.since + len(values)
        self.since = since % self.eval_every
        evaluations = since // self.eval_every
        if evaluations:
            self.evaluations += evaluations
            self.run = 0
        return True

    def _spike(self, sequence: list[float], start: int, end: int, samples: int) -> SpikeEvidence:
        """The evidence of a spike at the sample ending ``window + values[: end - len(window)]``.

        ``sequence`` is the evicted samples, the window and the batch's values; ``start``/``end``
        index the window and values part of it.
        """
        evicted = self._evicted
        offset = len(evicted)
        lo = max(0, offset + start - evicted.maxlen)  # type: ignore[operator]
        summary = {
            "threshold_ms": self.threshold_ms,
            "window": end - start,
            "sample": samples,
            "evaluation": self.evaluations,
        }
        return SpikeEvidence(summary, (sequence, lo, offset + end), self.buffer_size, self.eval_every, self.consecutive)


class SpikeEvidence:
    """One spike: a cheap ``summary`` now, and its p99 values on demand (called at most once).

    ``history`` is the window at the spike preceded by the samples evicted during the run, which
    is exactly enough to rebuild the window of each evaluation of the run and of the one before;
    it is given as ``(samples, lo, hi)``, a slice not yet taken of a list other spikes share.
    """

    __slots__ = ("_every", "_history", "_result", "_runs", "_size", "summary")

    def __init__(
        self, summary: dict[str, Any], history: tuple[list[float], int, int], size: int, every: int, runs: int
    ) -> None:
        self.summary = summary
        self._history = history
        self._size = size
        self._every = every
        self._runs = runs
        self._result: dict[str, Any] | None = None

    @property
    def history(self) -> list[float]:
        samples, lo, hi = self._history
        return samples[lo:hi]

    def __call__(self) -> dict[str, Any]:
        if self._result is not None:
            return self._result
        history = self.history
        end = len(history)
        size = self._size
        every = self._every
        run_p99 = []
        for back in range(self._runs - 1, -1, -1):
            stop = end - back * every
            run_p99.append(_p99(history[max(0, stop - size) : stop]))
        before = end - self._runs * every
        self._result = {
            "p99_ms": run_p99[-1],
            "run_p99_ms": run_p99,
            "p99_before_ms": _p99(history[max(0, before - size) : before]) if before > 0 else None,
            "worst_ms": nlargest(5, history[max(0, end - size) :]),
        }
        self._history = ([], 0, 0)
        return self._result

    def detail(self) -> dict[str, Any]:
        """Summary and evidence together (what an incident's meta records)."""
        return {**self.summary, **self()}


def _p99(values: list[float]) -> float:
    n = len(values)
    return nlargest(n - nearest_rank(n) + 1, values)[-1]
