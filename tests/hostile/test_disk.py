"""A full disk under a real P2 (D4, D8) and a killed P2's leftovers (D10)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.hostile.harness import payload, trade, wait_until

pytestmark = pytest.mark.e2e


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file until about ``leave`` bytes are free; the file, to free the space again."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def whole_lines(path: Path) -> list[dict]:
    """Every line of ``path``, each one whole JSON object: a torn line fails the case."""
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), f"{path} ends in a torn line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def test_a_full_disk_leaves_whole_lines_counts_exactly_what_was_lost_and_resumes(start_p2, small_disk):
    """D4: a failed 2,000-event write left 393 events and a torn line, counted all 2,000 as errors, and
    the next batch was appended to the torn line. D8: drift samples lost to the error were not counted."""
    record, drift = small_disk / "record.jsonl", small_disk / "drift.jsonl"
    p2 = start_p2(RECORD="true", RECORD_FILE=record, DRIFT_SAMPLE_FILE=drift, DRIFT_SAMPLES_PER_MIN="100000")
    filler = fill(small_disk, leave=40 * 1024)
    with p2.guard():
        sent = p2.send(payload(trade(i)) for i in range(2000))
        sent += p2.send(payload(trade(10_000 + i, price="not a number")) for i in range(300))
        m = p2.settle()
        written = m.value("mercurystream_recorded_events_total")
        lost = m.value("mercurystream_recorder_errors_total")
        assert lost > 0, "the disk did not fill: the case tests nothing"
        assert written + lost == sent
        assert len(whole_lines(record)) == written
        samples = m.value("mercurystream_drift_samples_total")
        samples_lost = m.total("mercurystream_drift_samples_dropped_total")
        assert samples_lost > 0
        assert len(whole_lines(drift)) == samples

        filler.unlink()
        sent += p2.send(payload(trade(20_000 + i)) for i in range(200))
        sent += p2.send(payload(trade(30_000 + i, price="drift again")) for i in range(5))
        assert wait_until(lambda: p2.metrics().value("mercurystream_recorded_events_total") == written + 205)
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_recorder_errors_total") == lost
    lines = whole_lines(record)
    assert len(lines) == written + 205 and [e["trade_id"] for e in lines[-205:]] == [
        *range(20_000, 20_200),
        *range(30_000, 30_005),
    ]
    assert len(whole_lines(drift)) == m.value("mercurystream_drift_samples_total") > samples


def test_tmp_bundle_directories_a_killed_p2_left_are_removed_at_start(start_p2, tmp_path):
    """D10: ``.tmp_*`` bundle directories left by a SIGKILL were never cleaned up."""
    incidents = tmp_path / "incidents"
    leftovers = [incidents / ".tmp_20260101_000000_deadbeef", incidents / ".tmp_x"]
    for d in leftovers:
        d.mkdir(parents=True)
        (d / "events.jsonl").write_bytes(b'{"half": "writ')
    keep = incidents / "20260101_000000_cafecafe"
    keep.mkdir()
    p2 = start_p2(INCIDENTS_DIR=incidents)
    assert wait_until(lambda: not any(d.exists() for d in leftovers))
    with p2.guard():
        sent = p2.send(payload(trade(i)) for i in range(10))
    p2.verdict(frames_sent=sent)
    assert keep.is_dir()
