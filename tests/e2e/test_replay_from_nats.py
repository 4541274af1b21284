"""An incident a P2 shard captured from JetStream, replayed from the stream by its report's command, is found again.

Real processes throughout: nats-server, a P2 shard (``P2_SOURCE=nats``) and an isolated P2 on TCP.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import time
from datetime import UTC, datetime

import orjson
import pytest

from mercurystream.processes import BIN, child_env, free_port
from tests.e2e.conftest import Cluster
from tests.replay.test_from_nats import publish

pytestmark = pytest.mark.e2e


T0 = time.time() - 3600


def event(tid: int, product: str) -> bytes:
    """A trade as P1 publishes it, stamped now so P2 sees no latency, traded an hour ago."""
    now_us = time.time_ns() // 1000
    traded = datetime.fromtimestamp(T0 + tid / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return orjson.dumps(
        {
            "type": "match", "product_id": product, "price": 100.0 + tid % 7, "last_size": 0.5, "time": traded,
            "trade_id": tid, "ingest_ts_ms": now_us // 1000, "ingest_ts_us": now_us,
        }
    )  # fmt: skip


def bundles(directory) -> list:
    if not directory.is_dir():
        return []
    """The finished bundles: one is written in a ``.tmp_*`` directory and renamed whole when done."""
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def trigger(bundle) -> tuple[dict, dict]:
    meta = json.loads((bundle / "meta.json").read_text())
    line = (bundle / "events.jsonl").read_bytes().splitlines()[meta["trigger_line"] - 1]
    ev = json.loads(line)
    return meta, {k: v for k, v in ev.items() if not k.startswith(("ingest_ts", "recv_ts"))}


def test_replay_from_the_stream_reproduces_the_trigger_line(tmp_path, nats_server: str) -> None:
    # Two products, ten events per message; ETH-USD's trade 1150 arrives a second time in message 30.
    batches = []
    for m in range(40):
        product = ("BTC-USD", "ETH-USD")[m % 2]
        events = [event(1000 + (m // 2) * 10 + k, product) for k in range(10)]
        if m == 29:
            events.insert(5, event(1150, product))
        batches.append((product, events))
    asyncio.run(publish(nats_server, batches))

    c = Cluster(tmp_path)
    try:
        common = {"FLIGHT_POST_EVENTS": 40, "LATENCY_SPIKE_THRESHOLD_MS": 600_000, "INCIDENT_CHARTS": "false"}
        c.p2(P2_SOURCE="nats", P2_SHARD="0/1", NATS_URL=nats_server, RECORD="false", **common)
        c.wait("the shard's incident", lambda: bool(bundles(c.incidents)), 60)
        (original,) = bundles(c.incidents)
        meta, shard_trigger = trigger(original)
        assert meta["type"] == "duplicate" and shard_trigger["trade_id"] == 1150
        nats = meta["nats"]
        assert (nats["stream"], nats["first_seq"]) == ("MERCURY_TRADES", 1)
        assert nats["products"] == ["BTC-USD", "ETH-USD"] and nats["url"] == nats_server
        report = (original / "report.md").read_text()
        (command,) = [line for line in report.splitlines() if line.startswith("mercury-replay --from-nats")]

        replay_dir = tmp_path / "replayed"
        port = free_port()
        c.p2(PORT=port, METRICS_PORT=free_port(), INCIDENTS_DIR=replay_dir, RECORD="false", **common)
        argv = [str(BIN / "mercury-replay"), *shlex.split(command)[1:], "--port", str(port)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=child_env())
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"stream sequences 1..{nats['last_seq']}" in done.stdout
        c.wait("the replayed incident", lambda: bool(bundles(replay_dir)), 60)
        (replayed,) = bundles(replay_dir)
        again, replay_trigger = trigger(replayed)
        assert replay_trigger == shard_trigger
        assert (again["type"], again["trigger_line"], again["product_id"]) == (
            meta["type"],
            meta["trigger_line"],
            meta["product_id"],
        )
    finally:
        c.stop_all()
