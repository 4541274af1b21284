"""latency_spike: the rolling p99 above the threshold at N evaluations in a row."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.p2.detectors import (
    LATENCY_SPIKE,
    Detectors,
    LatencySpikeDetector,
    nearest_rank,
)
from mercurystream.p2.rule import run
from mercurystream.shared.event import latency_ms
from tests.p2.detectors.support import ev, process

# --- latency spike ------------------------------------------------------------------------------


def spikes_of(d: LatencySpikeDetector, values: list[float]) -> list:
    return run(d, None, (values,))


def test_nearest_rank():
    assert [nearest_rank(n) for n in (1, 2, 99, 100, 101, 3000)] == [1, 2, 99, 99, 100, 2970]


def test_p99_boundary_is_nearest_rank():
    # The first sample above starts the episode, so the 100th sample is its first evaluation.
    d = LatencySpikeDetector(threshold_ms=100, buffer_size=100, eval_every=100, consecutive=1)
    assert spikes_of(d, [500.0] + [1.0] * 99) == []  # rank 99 of 100 is 1.0
    d1 = LatencySpikeDetector(threshold_ms=100, buffer_size=100, eval_every=100, consecutive=1)
    assert spikes_of(d1, [500.0, 500.0] + [1.0] * 98)[0][0] == 99  # two above: rank 99 is 500
    d2 = LatencySpikeDetector(threshold_ms=100, buffer_size=100, eval_every=100, consecutive=1)
    assert spikes_of(d2, [100.0, 100.0] + [1.0] * 98) == []  # equal to the threshold is not above
    assert d2.evaluations == 1


def test_spike_needs_consecutive_evaluations_and_the_run_restarts():
    d = LatencySpikeDetector(threshold_ms=100, buffer_size=10, eval_every=10, consecutive=2)
    high = [200.0] * 10
    low = [1.0] * 10
    assert spikes_of(d, high) == []  # run 1
    assert spikes_of(d, low) == []  # broken
    assert spikes_of(d, high) == []  # run 1
    spikes = spikes_of(d, high)  # run 2: spike
    assert [p for p, _ in spikes] == [9]
    assert spikes_of(d, high) == []  # restarted: run 1
    assert len(spikes_of(d, high)) == 1
    assert d.count == 2 and d.evaluations == 6


def test_spike_evidence_has_p99_before_and_during_the_run():
    d = LatencySpikeDetector(threshold_ms=100, buffer_size=20, eval_every=10, consecutive=2)
    spikes_of(d, [float(v) for v in range(1, 21)])
    spike = spikes_of(d, [300.0 + v for v in range(20)])[0][1]
    assert spike.summary == {"threshold_ms": 100.0, "window": 20, "sample": 40, "evaluation": 4}
    spikes_of(d, [1.0] * 50)  # the detector moves on; the spike's evidence does not
    detail = spike.detail()
    assert detail["p99_before_ms"] == 20.0
    assert detail["run_p99_ms"] == [309.0, 319.0]
    assert detail["p99_ms"] == 319.0
    assert detail["worst_ms"] == [319.0, 318.0, 317.0, 316.0, 315.0]
    assert detail["threshold_ms"] == 100.0 and detail["window"] == 20


def test_spike_evidence_early_in_the_stream_has_no_before():
    d = LatencySpikeDetector(threshold_ms=1, buffer_size=3000, eval_every=5, consecutive=2)
    detail = spikes_of(d, [5.0] * 10)[0][1].detail()
    assert detail["p99_before_ms"] is None and detail["run_p99_ms"] == [5.0, 5.0]


def test_detectors_latency_uses_the_shared_definition_and_event_index():
    det = Detectors(latency_threshold_ms=1.0, latency_buffer_size=4, latency_eval_every=2, latency_consecutive=1)
    no_lat = ev(1)
    for k in ("recv_ts_us", "recv_ts_ms"):
        del no_lat[k]
    ms_only = ev(3, lat_us=5000)
    del ms_only["ingest_ts_us"]
    stream = [no_lat, ev(2, lat_us=2000), ms_only]
    out = process(det, stream)
    assert latency_ms(no_lat) is None and latency_ms(ms_only) == 5.0
    assert [(a.type, a.index) for a in out] == [(LATENCY_SPIKE, 2)]
    assert "p99_ms" not in out[0].detail
    assert out[0].resolve()["p99_ms"] == 5.0 and out[0].evidence is None


class ReferenceSpikes:
    """The latency detector one sample at a time, read naively from its definition."""

    def __init__(self, thr: float, size: int, every: int, consec: int) -> None:
        self.thr, self.size, self.every, self.consec = thr, size, every, consec
        self.window: deque[float] = deque()
        self.evicted: deque[float] = deque(maxlen=every * consec)
        self.above = self.samples = self.evaluations = self.run = self.count = 0
        self.episode_start = 0  # the sample number the cadence counts from

    def observe_many(self, values):
        out = []
        for pos, v in enumerate(values):
            if v > self.thr and not any(x > self.thr for x in self.window):
                self.episode_start = self.samples
                self.run = 0
            if len(self.window) == self.size:
                old = self.window.popleft()
                self.above -= old > self.thr
                self.evicted.append(old)
            self.window.append(v)
            self.above += v > self.thr
            self.samples += 1
            if (self.samples - self.episode_start) % self.every == 0:
                n = len(self.window)
                self.evaluations += 1
                if self.above >= n - nearest_rank(n) + 1:
                    self.run += 1
                    if self.run >= self.consec:
                        self.run = 0
                        self.count += 1
                        summary = {"window": n, "sample": self.samples, "evaluation": self.evaluations}
                        out.append((pos, summary, [*self.evicted, *self.window]))
                else:
                    self.run = 0
        return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([1.0, 50.0, 99.0, 100.0, 150.0, 400.0]), max_size=40), max_size=10),
    st.integers(1, 20),
    st.integers(1, 7),
    st.integers(1, 3),
)
def test_latency_batches_are_taken_as_one_sample_at_a_time(batches, size, every, consec):
    _check_latency_batches(batches, size, every, consec)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([150.0, 400.0]), min_size=1, max_size=40) | st.lists(st.just(1.0), max_size=3),
        max_size=10,
    ),
    st.integers(1, 20),
    st.integers(1, 7),
    st.integers(1, 3),
)
def test_latency_batches_in_an_overload_are_taken_as_one_sample_at_a_time(batches, size, every, consec):
    """Batches all above the threshold, with a window all above or not, take the overload shortcut."""
    _check_latency_batches(batches, size, every, consec)


def _check_latency_batches(batches, size, every, consec):
    """The detector's reference, a sample at a time, against a naive reading of the definition."""
    det = LatencySpikeDetector(100.0, size, every, consec)
    ref = ReferenceSpikes(100.0, size, every, consec)
    for values in batches:
        got = run(det, None, (values,), reference_only=True)
        expected = ref.observe_many(values)
        assert [pos for pos, _ in got] == [pos for pos, _, _ in expected]
        for (_, spike), (_, summary, history) in zip(got, expected, strict=True):
            assert {k: spike.summary[k] for k in summary} == summary
            assert spike.history == history
        assert (det.count, det.samples, det.evaluations, det.run, det.above) == (
            ref.count,
            ref.samples,
            ref.evaluations,
            ref.run,
            ref.above,
        )
        assert list(det._window) == list(ref.window) and list(det._evicted) == list(ref.evicted)
        assert det.since == (ref.samples - ref.episode_start) % every


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([1.0, 1.0, 1.0, 150.0]), max_size=300),
    st.integers(1, 20),
    st.integers(1, 20),
)
def test_every_episode_is_evaluated_when_the_window_is_at_least_the_cadence(values, every, extra):
    """With ``buffer_size >= eval_every`` (P2's settings require it) a late sample cannot restart the
    cadence again before its episode's first evaluation, whatever the stream."""
    size = every + extra - 1
    d = LatencySpikeDetector(100.0, size, every, 1)
    evaluated = {k for k, v in enumerate(values) if d.step(v) is not None}
    starts = [k for k, v in enumerate(values) if v > 100.0 and all(x <= 100.0 for x in values[max(0, k - size) : k])]
    for k in starts:
        if k + every - 1 < len(values):
            assert k + every - 1 in evaluated


# --- a bundle's replay evaluates at the same events (known open: the cadence counts from P2's start) ----


def _spike_line(payload_batches: list[list[bytes]]) -> bytes:
    """The trigger line of the first latency-spike capture of a fresh P2 fed these reads."""
    from mercurystream.p2.batch import normalize
    from mercurystream.p2.flight_recorder import FlightRecorder

    det = Detectors(latency_threshold_ms=100, latency_buffer_size=300, latency_eval_every=100, latency_consecutive=2)
    fr = FlightRecorder(450, 100, cooldown_s=1e9, clock=lambda: 0.0, wall_clock=lambda: 1.7e9)
    caps = []
    for payloads in payload_batches:
        b, _ = normalize(payloads, 1_700_000_000_000_000)
        caps += fr.feed(b.lines, det.process(b).triggers(), b.recv_ts_us).completed
    last = fr.finalize()
    cap = caps[0] if caps else last
    return cap.lines()[cap.trigger_line - 1]


def test_a_latency_bundle_replayed_into_a_fresh_p2_triggers_on_the_same_event():
    """The reviewer's case: 1,000 calm events, then a sustained 300 ms; the bundle's first line is not
    sample 1 (mod 100) of the original P2, so the replay evaluated at other events and triggered 50 later."""
    import orjson

    base = 1_700_000_000_000_000

    def line(i: int, lat_ms: int) -> bytes:
        ing = base + i * 1000
        e = {**ev(i + 1), "ingest_ts_ms": ing // 1000, "ingest_ts_us": ing}
        e.update(recv_ts_ms=(ing + lat_ms * 1000) // 1000, recv_ts_us=ing + lat_ms * 1000)
        return orjson.dumps(e)

    events = [line(i, 1) for i in range(1000)] + [line(i, 300) for i in range(1000, 2000)]
    original = _spike_line([events[i : i + 64] for i in range(0, len(events), 64)])
    start = events.index(original) - 449  # the bundle: 450 pre lines up to the trigger, then the post
    bundle = events[start : start + 550]
    assert _spike_line([bundle[i : i + 512] for i in range(0, len(bundle), 512)]) == original
