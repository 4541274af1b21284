"""An incident bundle with every anomaly type in it, made the way the demo makes one: a clean stream
through the replay injector (gaps, drift, duplicates, shuffling), then P1/P2 stamps with a latency
spike, written as ``events.jsonl`` and ``meta.json``."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from mercurystream.replay.inject import InjectOptions, Injector

T0_US = 1_714_566_896_000_000
SYMBOLS = (("BTC-USD", 64000.0, 650_000_000), ("ETH-USD", 3100.0, 520_000_000), ("SOL-USD", 145.0, 95_000_000))
CONFIG = {
    "LATENCY_SPIKE_THRESHOLD_MS": 100.0,
    "LATENCY_BUFFER_SIZE": 300,
    "LATENCY_EVAL_EVERY": 50,
    "LATENCY_SPIKE_CONSECUTIVE": 2,
    "DUPLICATE_LRU_MAX": 50_000,
    "GAP_REORDER_WINDOW": 20,
    "FLIGHT_PRE_EVENTS": 5000,
    "INCIDENTS_DIR": "data/incidents",
}


def clean_stream(n: int) -> list[dict]:
    """``n`` match events over three symbols, contiguous trade ids and rising times per symbol."""
    out = []
    next_id = {sym: first for sym, _, first in SYMBOLS}
    for i in range(n):
        sym, base, _ = SYMBOLS[i % 5 % 3]
        tid = next_id[sym]
        next_id[sym] = tid + 1
        out.append(
            {
                "type": "match",
                "product_id": sym,
                "price": round(base * (1 + 0.0004 * ((i * 37) % 23 - 11) / 11), 2),
                "last_size": 0.01,
                "time": f"2024-05-01T12:{i // 60000:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}000Z",
                "trade_id": tid,
            }
        )
    return out


def injected_lines(n: int = 1500, seed: int = 3, spike: range = range(600, 760)) -> list[bytes]:
    """The injected stream as recorded lines; the events at positions in ``spike`` took 180 ms."""
    inj = Injector(InjectOptions(shuffle_window=10, duplicate_rate=0.05, drift_rate=0.02, gap_rate=0.02, seed=seed))
    lines = []
    for k, item in enumerate(inj.run(clean_stream(n))):
        ev = dict(orjson.loads(item)) if isinstance(item, bytes) else dict(item)
        ingest = T0_US + k * 2000
        latency_us = 180_000 if k in spike else 300 + (k * 7919) % 900
        ev.update(
            ingest_ts_ms=ingest // 1000,
            ingest_ts_us=ingest,
            recv_ts_ms=(ingest + latency_us) // 1000,
            recv_ts_us=ingest + latency_us,
        )
        lines.append(orjson.dumps(ev))
    return lines


def write_bundle(directory: Path, lines: list[bytes], meta: dict | None = None, trigger_line: int = 100) -> Path:
    """A bundle directory holding ``lines`` and a meta.json with :data:`CONFIG` (or ``meta``)."""
    directory.mkdir(parents=True)
    (directory / "events.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    if meta is None:
        meta = {"incident_id": directory.name, "type": "duplicate", "trigger_line": trigger_line, "config": CONFIG}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory
