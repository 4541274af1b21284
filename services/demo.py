"""``make demo``: the seed's five steps, offline, as local processes, in well under two minutes.

1. start the offline exchange, P1, a live P2 (recording ``data/btcusd.jsonl``), an isolated
   P2 for replays, and Prometheus when its binary is installed;
2. verify every service answers, and show the live status lines for a while;
3. replay the recording into the isolated P2 with duplicates, shuffled order, drift and gaps;
4. wait until the flight recorder has written the incident bundles;
5. (re)generate the reports, and print where the bundles, reports and charts are.

Everything started here is stopped on the way out, whatever happens. ``--docker`` runs the same
steps against ``docker compose`` for users with a Docker engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mercurystream.processes import (
    BIN,
    Service,
    ServiceError,
    child_env,
    free_port,
    http_ok,
    port_is_free,
    wait_for,
)
from mercurystream.shared.scrape import scrape

WIDTH = 66


def banner(text: str) -> None:
    print("╔" + "═" * WIDTH + "╗")
    print("║" + text.center(WIDTH) + "║")
    print("╚" + "═" * WIDTH + "╝", flush=True)


def step(n: int, text: str) -> None:
    print(f"\n→ Step {n}/5: {text}", flush=True)


class DemoError(Exception):
    """A demo step failed; the message is the one line shown to the user."""


class DemoServices:
    """Starting a demo's services: each with the demo's log settings and status interval, logged under
    ``run_dir``, and remembered in ``services`` so the demo stops them all."""

    args: argparse.Namespace
    run_dir: Path
    services: list[Service]

    def env(self, **extra: object) -> dict[str, str]:
        env = child_env(extra, keep=("LOG_LEVEL", "LOG_JSON"))
        env.setdefault("STATUS_INTERVAL_S", str(self.args.status_interval))
        return env

    def spawn(self, name: str, argv: list[str], **env: object) -> Service:
        svc = Service(name, argv, self.env(**env), self.run_dir)
        svc.start()
        self.services.append(svc)
        return svc


class LocalDemo(DemoServices):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(args.data_dir)
        self.run_dir = self.root / "run"
        self.incidents = self.root / "incidents"
        self.recording = self.root / "btcusd.jsonl"
        self.services: list[Service] = []
        if args.free_ports:
            self.ports = {
                k: free_port()
                for k in ("exchange", "p2", "p2_metrics", "p1_metrics", "replay", "replay_metrics", "prom")
            }
        else:
            self.ports = {
                "exchange": 8765, "p2": 9001, "p2_metrics": 9090, "p1_metrics": 9100,
                "replay": 9002, "replay_metrics": 9092, "prom": 9091,
            }  # fmt: skip
            busy = [f"{k}={p}" for k, p in self.ports.items() if not port_is_free(p)]
            if busy:
                raise DemoError(f"ports already in use: {', '.join(busy)} (stop what uses them, or pass --free-ports)")

    def run(self) -> None:
        a, p = self.args, self.ports
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.incidents.mkdir(parents=True, exist_ok=True)
        self.recording.unlink(missing_ok=True)
        before = set(self._bundles())

        step(1, "Starting services...")
        self.spawn(
            "exchange",
            [str(BIN / "mercury-exchange"), "--port", str(p["exchange"]), "--rate", str(a.rate), "--seed", "7"],
        )
        p2 = self.spawn(
            "p2", [str(BIN / "mercury-p2")],
            PORT=p["p2"], METRICS_PORT=p["p2_metrics"], RECORD="true", RECORD_FILE=self.recording,
            INCIDENTS_DIR=self.incidents, DRIFT_SAMPLE_FILE=self.root / "drift_samples.jsonl",
        )  # fmt: skip
        self.spawn(
            "p2-replay", [str(BIN / "mercury-p2")],
            PORT=p["replay"], METRICS_PORT=p["replay_metrics"], INCIDENTS_DIR=self.incidents,
            DRIFT_SAMPLE_FILE=self.root / "drift_samples.jsonl", FLIGHT_COOLDOWN_S=a.cooldown,
            FLIGHT_POST_EVENTS=a.post_events,
        )  # fmt: skip
        self.spawn(
            "p1", [str(BIN / "mercury-p1")],
            COINBASE_WS_URL=f"ws://127.0.0.1:{p['exchange']}", P2_PORT=p["p2"], P1_METRICS_PORT=p["p1_metrics"],
        )  # fmt: skip
        prom = shutil.which("prometheus")
        if prom and not a.no_prometheus:
            cfg = self._prometheus_config()
            self.spawn(
                "prometheus",
                [prom, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{p['prom']}",
                 f"--storage.tsdb.path={self.run_dir / 'prometheus'}", "--log.level=warn"],
            )  # fmt: skip
        else:
            print("  (prometheus binary not installed: skipping it; metrics are still served by P1 and P2)")
        print("  exchange, p1, p2 (live, recording), p2-replay (isolated, for injected anomalies) started")

        step(2, "Verifying services are running...")
        wait_for("the exchange", lambda: http_ok(f"http://127.0.0.1:{p['exchange']}/healthz"), 20, self.services)
        wait_for("P2 metrics", lambda: http_ok(f"http://127.0.0.1:{p['p2_metrics']}/metrics"), 20, self.services)
        wait_for("P1 metrics", lambda: http_ok(f"http://127.0.0.1:{p['p1_metrics']}/metrics"), 20, self.services)
        wait_for("P2-replay", lambda: http_ok(f"http://127.0.0.1:{p['replay_metrics']}/metrics"), 20, self.services)
        if any(s.name == "prometheus" for s in self.services):
            wait_for("Prometheus", lambda: http_ok(f"http://127.0.0.1:{p['prom']}/-/ready"), 30, self.services)
            print(f"  Prometheus: http://127.0.0.1:{p['prom']} (alert rules from alerts.yml: /alerts)")
        print(
            f"  P2 metrics: http://127.0.0.1:{p['p2_metrics']}/metrics   P1 metrics: http://127.0.0.1:{p['p1_metrics']}/metrics"
        )
        print(f"  live status lines for {a.warmup:.0f}s while P2 records {self.recording}:")
        p2.echo(True, keep=lambda line: any(tag in line for tag in _STATUS_TAGS))
        shown_from = time.monotonic()
        p2_url = f"http://127.0.0.1:{p['p2_metrics']}/metrics"
        enough = lambda: scrape(p2_url).value("mercurystream_events_total") >= a.min_events  # noqa: E731
        wait_for(f"{a.min_events} recorded events", enough, 60, self.services)
        time.sleep(max(0.0, a.warmup - (time.monotonic() - shown_from)))
        p2.echo(False)
        live = scrape(f"http://127.0.0.1:{p['p2_metrics']}/metrics")
        print(f"  P2 received {live.value('mercurystream_events_total'):.0f} events from P1")

        step(3, "Injecting anomalies (duplicates + shuffled order)...")
        snapshot = self.run_dir / "replay_input.jsonl"
        n = self._snapshot(snapshot, a.replay_events)
        if n < 2 * a.post_events:
            raise DemoError(f"only {n} events recorded; a capture needs more than {a.post_events} after its trigger")
        replay = [
            str(BIN / "mercury-replay"), "--file", str(snapshot), "--port", str(p["replay"]),
            "--rate", str(a.replay_rate), "--duplicate-rate", "0.05", "--shuffle-window", "10",
            "--drift-rate", "0.01", "--gap-rate", "0.01", "--seed", "42",
        ]  # fmt: skip
        print(f"  replaying {n} recorded events into p2-replay: 5% duplicates, shuffle window 10, 1% drift, 1% gaps")
        result = subprocess.run(replay, env=self.env(), capture_output=True, text=True, timeout=120)
        for line in (result.stdout + result.stderr).strip().splitlines()[-6:]:
            print(f"  [replay] {line}")
        if result.returncode != 0:
            raise DemoError(f"replay failed with exit code {result.returncode}")

        step(4, "Waiting for incident capture to complete...")
        rp = f"http://127.0.0.1:{p['replay_metrics']}/metrics"
        wait_for("an incident bundle", lambda: len(set(self._bundles()) - before) >= 1, 60, self.services)
        time.sleep(1.0)
        m = scrape(rp)
        anomalies = m.by_label("mercurystream_anomalies_total", "type")
        print("  anomalies detected by p2-replay: " + ", ".join(f"{k}={v:.0f}" for k, v in sorted(anomalies.items())))
        print(f"  incidents written: {m.total('mercurystream_incidents_total'):.0f}")

        step(5, "Generating incident reports...")
        rep = subprocess.run(
            [str(BIN / "mercury-report"), str(self.incidents)], env=self.env(), capture_output=True, text=True
        )
        if rep.returncode != 0:
            raise DemoError(f"mercury-report failed: {(rep.stderr or rep.stdout).strip()}")
        new = sorted(set(self._bundles()) - before)
        self.stop()
        banner("Demo Complete!")
        print(f"\nRecording:      {self.recording}")
        print(f"Drift samples:  {self.root / 'drift_samples.jsonl'}")
        print(f"Incidents ({len(new)} new) in {self.incidents}/:")
        for b in new:
            meta = _read_meta(b)
            chart = b / "chart.png"
            print(
                f"  {b.name}  type={meta.get('type', '?')}  report={b / 'report.md'}"
                + (f"  chart={chart}" if chart.exists() else "")
            )
        if new:
            report = new[0] / "report.md"
            print(f"\n$ head -30 {report}")
            with contextlib.suppress(OSError):
                print("\n".join(report.read_text().splitlines()[:30]))
        print(f"\nService logs: {self.run_dir}/*.log")

    def _bundles(self) -> list[Path]:
        if not self.incidents.is_dir():
            return []
        return [
            d
            for d in self.incidents.iterdir()
            if d.is_dir() and (d / "meta.json").exists() and not d.name.startswith(".")
        ]

    def _snapshot(self, dest: Path, limit: int) -> int:
        n = 0
        with open(self.recording, "rb") as src, open(dest, "wb") as out:
            for line in src:
                if not line.endswith(b"\n"):
                    break
                out.write(line)
                n += 1
                if n >= limit:
                    break
        return n

    def _prometheus_config(self) -> Path:
        """The repo's prometheus.local.yml, with the ports this run uses."""
        text = Path("prometheus.local.yml").read_text() if Path("prometheus.local.yml").exists() else ""
        for default, key in (("9090", "p2_metrics"), ("9100", "p1_metrics")):
            text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{self.ports[key]}")
            text = text.replace(f"localhost:{default}", f"127.0.0.1:{self.ports[key]}")
        cfg = self.run_dir / "prometheus.yml"
        cfg.write_text(text)
        # Its rule_files entry (alerts.yml) is relative to the config's directory: copy the rules beside it.
        if Path("alerts.yml").exists():
            shutil.copyfile("alerts.yml", self.run_dir / "alerts.yml")
        return cfg

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.echo(False)
            svc.stop()
        self.services.clear()


_STATUS_TAGS = ("VWAP", "VOLATILITY", "VOLUME", "HEALTH", "FORENSICS", "RECORDER")


def _read_meta(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def docker_demo(args: argparse.Namespace) -> int:
    """The same five steps against ``docker compose`` (needs a Docker engine; P1 reads the real feed)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        print("make demo DOCKER=1: no Docker engine is reachable (`docker info` failed)", file=sys.stderr)
        return 2
    compose = [docker, "compose", "--profile", "replay"]
    env = {**os.environ, "RECORD": "true", "MERCURY_UID": str(os.getuid()), "MERCURY_GID": str(os.getgid())}
    recording = Path(args.data_dir) / "btcusd.jsonl"
    incidents = Path(args.data_dir) / "replay_incidents"
    before = {d.name for d in incidents.iterdir()} if incidents.is_dir() else set()
    banner("MercuryStream Incident Detection Demo")
    try:
        step(1, "Starting services...")
        if subprocess.run([*compose, "up", "--build", "-d", "--wait"], env=env).returncode != 0:
            raise DemoError("docker compose up failed")
        step(2, "Verifying services are running...")
        subprocess.run([*compose, "ps"], env=env)
        print(f"  waiting for {args.min_events} recorded trades from Coinbase in {recording} ...")
        wait_for(f"{args.min_events} recorded events", lambda: _count_lines(recording) >= args.min_events, 600, [])
        step(3, "Injecting anomalies (duplicates + shuffled order)...")
        replay = [
            "--file", f"data/{recording.name}", "--limit", str(args.replay_events), "--rate", str(args.replay_rate),
            "--duplicate-rate", "0.05", "--shuffle-window", "10", "--drift-rate", "0.01", "--gap-rate", "0.01",
            "--seed", "42",
        ]  # fmt: skip
        if subprocess.run([*compose, "run", "--rm", "replay", *replay], env=env).returncode != 0:
            raise DemoError("the replay failed")
        step(4, "Waiting for incident capture to complete...")
        new = lambda: {d.name for d in incidents.iterdir() if (d / "meta.json").exists()} - before  # noqa: E731
        wait_for("an incident bundle", lambda: incidents.is_dir() and bool(new()), 120, [])
        step(5, "Generating incident reports...")
        subprocess.run([str(BIN / "mercury-report"), str(incidents)])
        banner("Demo Complete!")
        print(f"Incidents in {incidents}/: {', '.join(sorted(new()))}")
        print("The demo stops its containers now; `make up` runs the stack to explore Grafana on :3000.")
        return 0
    except (DemoError, ServiceError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        subprocess.run([*compose, "down"], env=env)


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class Demo(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...


def drive(make: Callable[[], Demo], name: str) -> int:
    """Build a demo with ``make`` and run it: 0 when it ran through, 1 on a failure (one line on
    stderr), 130 on Ctrl-C or SIGTERM. Whatever happens, the services it started are stopped."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    demo = None
    try:
        demo = make()
        demo.run()
        return 0
    except (DemoError, ServiceError) as exc:
        print(f"\n{name} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping services", file=sys.stderr)
        return 130
    finally:
        if demo is not None:
            demo.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mercury-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--docker", action="store_true", help="run against docker compose instead of local processes")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--rate", type=float, default=400.0, help="exchange trades/s")
    ap.add_argument("--warmup", type=float, default=12.0, help="seconds of live status lines")
    ap.add_argument("--min-events", type=int, default=3000, help="events to record before the replay")
    ap.add_argument("--replay-events", type=int, default=8000)
    ap.add_argument("--replay-rate", type=float, default=4000.0)
    ap.add_argument("--cooldown", type=float, default=3.0, help="FLIGHT_COOLDOWN_S of the replay P2")
    ap.add_argument("--post-events", type=int, default=1000, help="FLIGHT_POST_EVENTS of the replay P2")
    ap.add_argument("--status-interval", type=float, default=3.0)
    ap.add_argument("--free-ports", action="store_true", help="use free ports instead of the defaults")
    ap.add_argument("--no-prometheus", action="store_true")
    args = ap.parse_args(argv)
    if args.docker:
        return docker_demo(args)
    banner("MercuryStream Incident Detection Demo")
    return drive(lambda: LocalDemo(args), "demo")


if __name__ == "__main__":
    sys.exit(main())
