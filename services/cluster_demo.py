"""``make demo-cluster``: the scale-out path offline, as local processes, in about a minute.

1. start a JetStream server (temporary store, free port), the offline exchange with its faults on
   (duplicates, gaps, reordering), P1 publishing to the stream (``P1_SINK=nats``) and two P2 shards
   reading it (``P2_SOURCE=nats``, ``P2_SHARD=0/2`` and ``1/2``);
2. show each shard's status lines while the products split between them;
3. wait until a shard's flight recorder has written an incident bundle, which names the stream
   sequences it covers;
4. replay that incident straight from the stream (``mercury-replay --from-nats``, the command in its
   report) into an isolated P2, and compare the trigger it finds with the shard's;
5. print each shard's share and where the bundles are.

Everything started here is stopped on the way out, whatever happens. Without ``nats-server`` it
says so in one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mercurystream.demo import DemoError, DemoServices, banner, drive
from mercurystream.natsd import MISSING, NatsServer, find_binary
from mercurystream.p2.incident.report import nats_replay_command
from mercurystream.processes import BIN, Service, free_port, http_ok, wait_for
from mercurystream.shared.scrape import scrape

SHARDS = 2
STEPS = 5
_STATUS_TAGS = ("HEALTH", "FORENSICS", "VWAP")
_STAMPS = ("ingest_ts_ms", "ingest_ts_us", "recv_ts_ms", "recv_ts_us")


def step(n: int, text: str) -> None:
    print(f"\n→ Step {n}/{STEPS}: {text}", flush=True)


class ClusterDemo(DemoServices):
    def __init__(self, args: argparse.Namespace, nats_bin: str) -> None:
        self.args = args
        self.root = Path(args.data_dir)
        self.run_dir = self.root / "run-cluster"
        self.incidents = self.root / "incidents"
        self.replay_incidents = self.root / "replay_incidents"
        self.nats = NatsServer(nats_bin, self.run_dir)
        self.services: list[Service] = []
        self.shard_metrics = [free_port() for _ in range(SHARDS)]

    def shard_env(self) -> dict[str, object]:
        """Short captures and cooldowns so a minute shows incidents; latency spikes off (a loaded laptop
        is not an incident)."""
        a = self.args
        return {
            "NATS_URL": self.nats.url,
            "P2_SOURCE": "nats",
            "FLIGHT_POST_EVENTS": a.post_events,
            "FLIGHT_COOLDOWN_S": a.cooldown,
            "LATENCY_SPIKE_THRESHOLD_MS": 60_000,
            "DRIFT_SAMPLE_FILE": self.run_dir / "drift_samples.jsonl",
        }

    def _shard(self, i: int) -> Service:
        env = {**self.shard_env(), "P2_SHARD": f"{i}/{SHARDS}", "PORT": free_port()}
        env.update(METRICS_PORT=self.shard_metrics[i], INCIDENTS_DIR=self.incidents)
        return self.spawn(f"p2-shard-{i}", [str(BIN / "mercury-p2")], **env)

    def run(self) -> Path:
        a = self.args
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.incidents.mkdir(parents=True, exist_ok=True)
        before = set(_bundles(self.incidents))

        step(1, "Starting nats-server, the exchange, P1 → JetStream and two P2 shards...")
        self.nats.start()
        self.services.append(self.nats.service)
        print(f"  nats-server -js on {self.nats.url} (store {self.nats.store})")
        exchange_port = free_port()
        self.spawn(
            "exchange",
            [str(BIN / "mercury-exchange"), "--port", str(exchange_port), "--rate", str(a.rate), "--seed", "7",
             "--duplicate-rate", "0.004", "--gap-rate", "0.002", "--reorder-rate", "0.004"],
        )  # fmt: skip
        shards = [self._shard(i) for i in range(SHARDS)]
        self.spawn(
            "p1", [str(BIN / "mercury-p1")],
            COINBASE_WS_URL=f"ws://127.0.0.1:{exchange_port}", P1_SINK="nats", NATS_URL=self.nats.url,
            P1_METRICS_PORT=free_port(),
        )  # fmt: skip
        print(f"  exchange (faults on), p1 (P1_SINK=nats), p2-shard-0 and p2-shard-1 (P2_SHARD=i/{SHARDS}) started")

        step(2, "Each shard takes its products from the stream...")
        for i in range(SHARDS):
            url = f"http://127.0.0.1:{self.shard_metrics[i]}/metrics"
            wait_for(f"p2-shard-{i} metrics", lambda u=url: http_ok(u), 30, self.services)
        for s in shards:
            s.echo(True, keep=lambda line: any(tag in line for tag in _STATUS_TAGS))
        time.sleep(a.warmup)
        for s in shards:
            s.echo(False)

        step(3, "Waiting for a shard to capture an incident from the stream...")
        fresh = lambda: [b for b in _bundles(self.incidents) if b not in before and "nats" in _meta(b)]  # noqa: E731
        wait_for("an incident bundle from a shard", lambda: bool(fresh()), a.incident_timeout, self.services)
        bundle = min(fresh(), key=lambda b: _meta(b).get("triggered_at", ""))
        meta = _meta(bundle)
        nats = meta["nats"]
        print(f"  {bundle.name}: {meta['type']} on {meta.get('product_id')}, trigger line {meta['trigger_line']}")
        span = f"({nats.get('first_time')} .. {nats.get('last_time')})"
        print(f"  stream {nats['stream']} sequences {nats['first_seq']}..{nats['last_seq']} {span}")
        print(f"  products {','.join(nats['products'])}")

        step(4, "Replaying that incident straight from the stream into an isolated P2...")
        self.replay_incidents.mkdir(parents=True, exist_ok=True)
        replay_before = set(_bundles(self.replay_incidents))
        replay_port, replay_metrics = free_port(), free_port()
        self.spawn(
            "p2-replay", [str(BIN / "mercury-p2")],
            PORT=replay_port, METRICS_PORT=replay_metrics, INCIDENTS_DIR=self.replay_incidents,
            FLIGHT_POST_EVENTS=a.post_events, FLIGHT_COOLDOWN_S=a.cooldown, LATENCY_SPIKE_THRESHOLD_MS=60_000,
            DRIFT_SAMPLE_FILE=self.run_dir / "replay_drift_samples.jsonl",
        )  # fmt: skip
        wait_for("p2-replay metrics", lambda: http_ok(f"http://127.0.0.1:{replay_metrics}/metrics"), 30, self.services)
        command = nats_replay_command(nats)
        assert command is not None
        argv = [str(BIN / "mercury-replay"), *shlex.split(command)[1:], "--port", str(replay_port)]
        print(f"  $ {command.replace('--port 9002', f'--port {replay_port}')}")
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=120)
        for line in (result.stdout + result.stderr).strip().splitlines()[-5:]:
            print(f"  [replay] {line}")
        if result.returncode != 0:
            raise DemoError(f"the replay from the stream failed with exit code {result.returncode}")
        new = lambda: [b for b in _bundles(self.replay_incidents) if b not in replay_before]  # noqa: E731
        wait_for("the replayed incident", lambda: bool(new()), 60, self.services)
        replayed = min(new(), key=lambda b: _meta(b).get("triggered_at", ""))
        original, again = trigger_event(bundle), trigger_event(replayed)
        same = original is not None and original == again
        print(f"  shard's trigger:  {_show(original)}")
        print(f"  replay's trigger: {_show(again)}  ({'the same event' if same else 'DIFFERENT'})")

        step(5, "Each shard's share")
        for i in range(SHARDS):
            m = scrape(f"http://127.0.0.1:{self.shard_metrics[i]}/metrics")
            products = sorted(m.by_label("mercurystream_trades_1m", "product_id"))
            print(
                f"  p2-shard-{i}: {m.total('mercurystream_events_total'):.0f} events, "
                f"incidents={m.total('mercurystream_incidents_total'):.0f}, products={','.join(products) or '?'}"
            )
        written = sorted(b for b in _bundles(self.incidents) if b not in before)
        self.stop()
        banner("Cluster Demo Complete!")
        print(f"\nIncidents from the shards ({len(written)} new) in {self.incidents}/; each meta.json names its")
        print("stream sequences and each report.md the mercury-replay --from-nats command that replays them.")
        print(f"Replayed incident: {replayed}")
        print(f"Service logs: {self.run_dir}/*.log")
        if not same:
            raise DemoError("the replay from the stream did not find the shard's trigger event")
        return replayed

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.echo(False)
            svc.stop()
        self.services.clear()
        self.nats.stop()


def _bundles(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").exists()]


def _meta(bundle: Path) -> dict[str, Any]:
    try:
        return json.loads((bundle / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def trigger_event(bundle: Path) -> dict[str, Any] | None:
    """The bundle's trigger event without the stamps a replay rewrites, or ``None``."""
    meta = _meta(bundle)
    try:
        line = (bundle / "events.jsonl").read_bytes().splitlines()[int(meta["trigger_line"]) - 1]
        event = json.loads(line)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(event, dict):
        return None
    return {k: v for k, v in event.items() if k not in _STAMPS}


def _show(event: dict[str, Any] | None) -> str:
    if event is None:
        return "?"
    return " ".join(f"{k}={event.get(k)}" for k in ("product_id", "trade_id", "price", "time"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mercury-demo-cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--rate", type=float, default=400.0, help="exchange trades/s")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds of the shards' status lines")
    ap.add_argument("--cooldown", type=float, default=5.0, help="FLIGHT_COOLDOWN_S of every P2")
    ap.add_argument("--post-events", type=int, default=200, help="FLIGHT_POST_EVENTS of every P2")
    ap.add_argument("--incident-timeout", type=float, default=90.0)
    ap.add_argument("--status-interval", type=float, default=3.0)
    args = ap.parse_args(argv)
    binary = find_binary()
    if binary is None:
        print(f"make demo-cluster: {MISSING}", file=sys.stderr)
        return 2
    banner("MercuryStream Cluster Demo: P1 → JetStream → 2 shards")
    return drive(lambda: ClusterDemo(args, binary), "demo-cluster")


if __name__ == "__main__":
    sys.exit(main())
