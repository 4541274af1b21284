"""The anomaly marks of a bundle: P2's detectors re-run over its events, at their line numbers."""

from __future__ import annotations

import math

import orjson
import pytest

from mercurystream.p2.batch import Batch
from mercurystream.p2.detectors import (
    ANOMALY_TYPES,
    DUPLICATE,
    LATENCY_SPIKE,
    OUT_OF_ORDER,
    SCHEMA_DRIFT,
    SEQUENCE_GAP,
    Detectors,
    nearest_rank,
)
from mercurystream.p2.incident.marks import (
    MARK_TYPES,
    STYLES,
    detector_settings,
    find_marks,
    rolling_p99,
)
from mercurystream.shared.event import latency_ms
from mercurystream.shared.schema import REQUIRED
from tests.p2.incident.support import CONFIG, injected_lines

SETTINGS_KW = {
    "duplicate_lru_max": CONFIG["DUPLICATE_LRU_MAX"],
    "gap_reorder_window": CONFIG["GAP_REORDER_WINDOW"],
    "latency_threshold_ms": CONFIG["LATENCY_SPIKE_THRESHOLD_MS"],
    "latency_buffer_size": CONFIG["LATENCY_BUFFER_SIZE"],
    "latency_eval_every": CONFIG["LATENCY_EVAL_EVERY"],
    "latency_consecutive": CONFIG["LATENCY_SPIKE_CONSECUTIVE"],
}


def parsed(lines: list[bytes]) -> list[tuple[int, dict]]:
    out = []
    for n, line in enumerate(lines, 1):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append((n, obj))
    return out


@pytest.fixture(scope="module")
def bundle_events() -> list[tuple[int, dict]]:
    return parsed(injected_lines())


def test_every_type_is_marked_as_often_as_the_detectors_count_it(bundle_events):
    marks = find_marks(bundle_events, {"config": CONFIG})

    det = Detectors(**SETTINGS_KW)
    anomalies = det.process(Batch.of_events([e for _, e in bundle_events]))
    assert set(MARK_TYPES) == set(ANOMALY_TYPES) == set(STYLES)
    for t in MARK_TYPES:
        assert marks.by_type[t], f"the injected bundle has no {t}"
        assert len(marks.by_type[t]) == sum(a.type == t for a in anomalies)
        assert marks.counter(t) == det.counts[t]
        assert marks.lines(t) == sorted(marks.lines(t))
    assert len(marks.by_type[OUT_OF_ORDER]) > 300, "dense enough to be drawn as a strip"
    assert set(marks.from_meta) == set(list(CONFIG)[:6])


def test_each_mark_is_on_the_line_of_an_event_of_its_type(bundle_events):
    marks = find_marks(bundle_events, {"config": CONFIG})
    by_line = dict(bundle_events)

    seen: set[tuple[str, int]] = set()
    duplicate_lines = set()
    for n, e in bundle_events:
        key = (e.get("product_id"), e.get("trade_id"))
        if type(key[1]) is int and key in seen:
            duplicate_lines.add(n)
        seen.add(key)
    assert set(marks.lines(DUPLICATE)) == duplicate_lines

    latest: dict[str, str] = {}
    late = set()
    for n, e in bundle_events:
        pid, t = e.get("product_id"), e.get("time")
        if isinstance(pid, str) and isinstance(t, str):
            if pid in latest and t < latest[pid]:
                late.add(n)
            else:
                latest[pid] = t
    assert set(marks.lines(OUT_OF_ORDER)) == late

    kinds = {"str": (str,), "int": (int,), "number": (int, float)}
    drifted = {
        n for n, e in bundle_events if any(k not in e or type(e[k]) not in kinds[kind] for k, kind in REQUIRED.items())
    }
    assert set(marks.lines(SCHEMA_DRIFT)) == drifted
    for m in marks.by_type[SEQUENCE_GAP]:
        assert by_line[m.line]["type"] == "match" and m.count >= 1 and m.product_id == by_line[m.line]["product_id"]
    for m in marks.by_type[LATENCY_SPIKE]:
        assert latency_ms(by_line[m.line]) is not None


def test_marks_keep_line_numbers_across_lines_that_are_not_events():
    lines = injected_lines(600, spike=range(0))
    clean = find_marks(parsed(lines))
    junk = [b"{not json", b"", b"[1, 2]", *lines]

    shifted = find_marks(parsed(junk))

    for t in MARK_TYPES:
        assert shifted.lines(t) == [n + 3 for n in clean.lines(t)]


def test_settings_come_from_meta_and_bad_ones_fall_back_to_the_defaults():
    kwargs, used = detector_settings({"config": CONFIG})
    assert kwargs == SETTINGS_KW and set(used) == set(list(CONFIG)[:6])
    defaults = find_marks([], None).settings
    assert defaults == find_marks([], {"config": "x"}).settings == find_marks([], []).settings
    bad = {
        "DUPLICATE_LRU_MAX": 0,
        "GAP_REORDER_WINDOW": -1,
        "LATENCY_SPIKE_THRESHOLD_MS": math.nan,
        "LATENCY_BUFFER_SIZE": True,
        "LATENCY_EVAL_EVERY": "100",
        "LATENCY_SPIKE_CONSECUTIVE": 10**30,
    }
    marks = find_marks([], {"config": bad})
    assert marks.from_meta == [] and marks.settings == defaults
    assert find_marks([], {"config": {"GAP_REORDER_WINDOW": 0}}).settings["GAP_REORDER_WINDOW"] == 0


def test_bad_events_never_crash_the_marks():
    odd = [
        {},
        {"product_id": None, "trade_id": "1", "time": 5},
        {"type": "match", "product_id": "X", "trade_id": 10**40, "time": "not a time", "price": "NaN"},
        {"type": "match", "product_id": "X", "trade_id": -1, "time": "2024-05-01T12:00:00+02:00"},
        {"recv_ts_us": 5, "ingest_ts_us": 10**30},
    ]
    marks = find_marks(enumerate(odd, 1))
    assert marks.lines(SCHEMA_DRIFT) == [1, 2, 3, 4, 5]


def test_rolling_p99_is_what_the_spike_detector_evaluates(bundle_events):
    marks = find_marks(bundle_events, {"config": CONFIG})
    lat = [(n, latency_ms(e)) for n, e in bundle_events if latency_ms(e) is not None]
    lines = [n for n, _ in lat]
    values = [v for _, v in lat]

    at, p99 = rolling_p99(lines, values, marks.settings)

    every, size = CONFIG["LATENCY_EVAL_EVERY"], CONFIG["LATENCY_BUFFER_SIZE"]
    thr = CONFIG["LATENCY_SPIKE_THRESHOLD_MS"]
    # Evaluations fall every `every` samples, counted from the latest sample above the threshold
    # that came after `size` samples with none.
    start, evaluated = 0, []
    for k, v in enumerate(values, 1):
        if v > thr and all(x <= thr for x in values[max(0, k - 1 - size) : k - 1]):
            start = k - 1
        if (k - start) % every == 0:
            evaluated.append(k)
    assert len(at) == len(evaluated) and start > 0
    for k, line, p in zip(evaluated, at, p99, strict=True):
        window = sorted(values[max(0, k - size) : k])
        assert line == lines[k - 1] and p == window[nearest_rank(len(window)) - 1]
    above = {line for line, p in zip(at, p99, strict=True) if p > CONFIG["LATENCY_SPIKE_THRESHOLD_MS"]}
    assert set(marks.lines(LATENCY_SPIKE)) <= above

    few_at, _ = rolling_p99(lines, values, marks.settings, max_points=5)
    assert 3 <= len(few_at) <= 5 and set(few_at) <= set(at)
    assert rolling_p99(lines, values, {}) == ([], [])
