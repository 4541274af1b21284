"""A seeded stream of random hostile events through a real P2, its recorder, its flight recorder and mercury-report.

The fuzzer (``test_fuzz.py``) covers the decoders in process; this sends the same kinds of values
through every consumer of a real P2, dumps the ring as a bundle and reports it, so a value that
only breaks the forensics, the recorder or the report is found too.
"""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from mercurystream.processes import BIN, child_env
from tests.hostile.harness import payload, trade, wait_until
from tests.hostile.test_tools import dump

pytestmark = pytest.mark.e2e

SEED = 13
FIELDS = ["type", "product_id", "price", "last_size", "time", "trade_id", "side", "sequence"]
STAMPS = ["ingest_ts_ms", "ingest_ts_us", "recv_ts_ms", "recv_ts_us", "backfilled"]


def random_value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(12 if depth < 3 else 9)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice([0, -1, 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, 2**64, 10**400, -(10**30)])
    if pick == 3:
        return rng.choice([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -0.0, 0.1])
    if pick == 4:
        return rng.choice(["", "BTC-USD", "X" * rng.choice([65, 1000, 50_000]), "9999-12-31T23:59:59.999999Z"])
    if pick == 5:
        return rng.choice(['\u0000\n\r\t"\\', "\u2028\u2029", "é" * 70, "gap", "backfill", "match", "ticker"])
    if pick == 6:
        return rng.choice(["2026-02-30T00:00:00Z", "0000-01-01T00:00:00Z", "2026-12-05T23:50:00+99:00", "now"])
    if pick == 7:
        return rng.randrange(-(10**6), 10**6)
    if pick == 8:
        return rng.uniform(-1e6, 1e6)
    if pick == 9:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 10:
        return {str(random_value(rng, 3))[:20]: random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    nest = rng.choice([10, 200, 300, 900])
    value: object = 1
    for _ in range(nest):
        value = [value]
    return value


def random_event(rng: random.Random, i: int) -> bytes:
    event = trade(i, product=rng.choice(["BTC-USD", "ETH-USD", "SOL-USD"]))
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(FIELDS + STAMPS + ["extra", "first_missing", "last_missing", "source"])
        if rng.random() < 0.2:
            event.pop(key, None)
        else:
            event[key] = random_value(rng)
    try:
        return json.dumps(event, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return payload(trade(i))


def stream(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.6:
            out.append(random_event(rng, i))
        elif roll < 0.7:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
        else:
            out.append(payload(trade(100_000 + i, product=rng.choice(["BTC-USD", "ETH-USD"]))))
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_random_hostile_stream_is_accounted_for_recorded_bundled_and_reported(start_p2, tmp_path, fmt):
    rng = random.Random(f"{SEED}:{fmt}")
    incidents = tmp_path / "incidents"
    p2 = start_p2(RECORD="true", RECORD_FORMAT=fmt, RECORD_ROTATE_S="0.5", INCIDENTS_DIR=incidents)
    events = stream(rng, 3000)
    sent = 0
    with p2.guard():
        for k in range(0, len(events), 500):
            sent += p2.send(events[k : k + 500])
        bundle = dump(p2)
    m = p2.verdict(frames_sent=sent)
    frames_bad = m.total("mercurystream_frame_errors_total")
    assert 0 < frames_bad < sent

    def recorded() -> float:
        now = p2.metrics()
        return now.value("mercurystream_recorded_events_total") + now.total("mercurystream_recorder_rejected_total")

    assert wait_until(lambda: recorded() == sent - frames_bad), f"{recorded()} of {sent - frames_bad} recorded"
    assert p2.metrics().value("mercurystream_recorder_errors_total") == 0

    got = subprocess.run(
        [str(BIN / "mercury-report"), str(bundle)], capture_output=True, text=True, timeout=120, env=child_env()
    )
    assert got.returncode == 0, got
    assert "Traceback" not in got.stderr + got.stdout
    report = (bundle / "report.md").read_text()
    assert len(report) < 2_000_000 and max(map(len, report.splitlines())) < 5000
