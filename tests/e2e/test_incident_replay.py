"""Deterministic replay of incidents: a bundle's events.jsonl replayed with --keep-timestamps into a
fresh P2 produces an incident of the same type whose bundle contains the same trigger event."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import orjson
import pytest

from mercurystream.processes import BIN, free_port

pytestmark = pytest.mark.e2e

FLIGHT = {"FLIGHT_PRE_EVENTS": 300, "FLIGHT_POST_EVENTS": 100, "FLIGHT_COOLDOWN_S": 600}


def write_stream(path: Path, n: int = 1500) -> Path:
    """A clean stream of normalized trades: three products, contiguous ids, increasing times."""
    products = {"BTC-USD": (60000.0, 1_000_000), "ETH-USD": (3000.0, 2_000_000), "SOL-USD": (150.0, 3_000_000)}
    lines = []
    for i in range(n):
        pid = ("BTC-USD", "ETH-USD", "SOL-USD")[i % 3]
        price, first_id = products[pid]
        k = i // 3
        event = {
            "type": "match",
            "product_id": pid,
            "price": round(price * (1 + 0.0001 * ((k * 7919) % 13 - 6)), 2),
            "last_size": 0.01 + (k % 5) * 0.002,
            "time": f"2026-01-01T00:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}000Z",
            "trade_id": first_id + k,
            "side": "buy" if k % 2 else "sell",
            "ingest_ts_ms": 0,
            "ingest_ts_us": 0,
        }
        lines.append(orjson.dumps(event))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def replay(port: int, file: Path, *flags: object) -> None:
    cmd = [str(BIN / "mercury-replay"), "--file", str(file), "--port", str(port), "--rate", "0", *map(str, flags)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def only_bundle(cluster, incidents: Path) -> Path:
    def ready() -> bool:
        # A bundle is written in a ``.tmp_*`` directory and renamed whole: only a renamed one is done.
        return incidents.is_dir() and any(
            (d / "report.md").exists() for d in incidents.iterdir() if d.is_dir() and not d.name.startswith(".")
        )

    cluster.wait(f"a bundle in {incidents}", ready, timeout=60)
    (bundle,) = [d for d in incidents.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bundle


def trigger_line(bundle: Path) -> bytes:
    meta = json.loads((bundle / "meta.json").read_text())
    return (bundle / "events.jsonl").read_bytes().splitlines()[meta["trigger_line"] - 1]


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        ("duplicate", ["--duplicate-rate", "0.01", "--seed", "4"]),
        ("sequence_gap", ["--gap-rate", "0.01", "--seed", "5"]),
        ("latency_spike", ["--latency-ms", "300", "--seed", "6"]),
    ],
)
def test_replaying_a_bundle_reproduces_the_incident(cluster, tmp_path, kind, flags):
    stream = write_stream(tmp_path / "stream.jsonl")
    first = tmp_path / "first"
    cluster.p2(INCIDENTS_DIR=first, **FLIGHT)
    replay(cluster.p2_port, stream, *flags)
    original = only_bundle(cluster, first)
    meta = json.loads((original / "meta.json").read_text())
    assert meta["type"] == kind
    wanted = trigger_line(original)

    again = tmp_path / "again"
    port, metrics_port = free_port(), free_port()
    cluster.p2(PORT=port, METRICS_PORT=metrics_port, INCIDENTS_DIR=again, RECORD="false", **FLIGHT)
    replay(port, original / "events.jsonl", "--keep-timestamps")
    reproduced = only_bundle(cluster, again)
    assert json.loads((reproduced / "meta.json").read_text())["type"] == kind
    assert wanted in (reproduced / "events.jsonl").read_bytes().splitlines()
    assert trigger_line(reproduced) == wanted
