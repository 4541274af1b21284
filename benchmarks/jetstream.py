"""The JetStream section of ``make benchmark``: P1-shaped publishing → nats-server → P2 shards (issue 15's goals).

- **One shard**: the highest rate at which one P2 (``P2_SOURCE=nats``, every consumer, recorder on)
  processes every event published, with no drop, within the grace after the last PubAck; a fresh
  stream and a fresh P2 per step, as the TCP steps have a fresh P2. Its ratio to the TCP path
  (``p2``, measured in the same run) is the goal's.
- **Two shards**: the same with ``P2_SHARD=0/2`` and ``1/2``: the published rate both keep up
  with, which is the sum of their rates. The benchmark's three products split 45 % / 55 % between
  the two shards by their hash, and each shard fetches every message (nats-server 2.9 filters a
  consumer on one subject), acknowledging the other shard's unread.
- **Latency** at 10k ev/s: the publisher's stamp (as P1 stamps a batch) to P2's receive stamp,
  from one shard's recording.
- **nats-server**: its CPU (share of a core, µs per event and per message) and RSS at the highest
  passing one-shard step, read from ``/proc``.

The publisher is a separate process (``python -m benchmarks.jetstream publish``), shaped like P1's
sink: in rounds, each taking the events owed by then (a round at most every :data:`ROUND_S`, at most 50 ms' events),
stamped once, as one message per product (the TCP frames inside, ``Nats-Msg-Id`` per batch, at most
4096 events), published together; the next round starts when every PubAck of this one is back. So
messages grow with the rate and the server's answer time, as P1's do. It speaks the load
generator's two JSON lines.

``python -m benchmarks.jetstream [--quick|--smoke] [--runs N]`` runs this section alone, with the
TCP sweep beside it for the ratio, and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

from benchmarks.lab import Lab, LoadGen, poll_until, proc_status_mb, remove_recording
from benchmarks.loadgen import ACHIEVED_TOLERANCE, Pacer
from benchmarks.measure import CONSUMERS, Profile, dropped, percentiles, recorded_latencies_us
from benchmarks.stream import FrameStream, read_pool, stamps
from mercurystream.natsd import NatsServer, find_binary
from mercurystream.processes import ServiceError
from mercurystream.shared.clock import now_us
from mercurystream.shared.jetstream import (
    BATCH_MAX_BYTES,
    DEFAULT_STREAM,
    EVENTS_HEADER,
    MSG_ID_HEADER,
    StreamSettings,
    batch_id,
    ensure_stream,
    new_origin,
    subject_for,
)

LATENCY_RATE = 10_000
MAX_EVENTS_PER_MESSAGE = 4096
"""P1's ``batch_max_events``."""
ROUND_S = 0.002
"""The publisher starts a round at most this often. P1's sink today starts the next round as soon as
the last PubAck is back, which at these rates makes messages of 4 to 20 events; a shard is then
bound by messages, not events (8k ev/s passed, 12k failed on this loaded 2-core VM). 2 ms rounds
make 50 to 100 events a message at 60k to 100k ev/s and add at most 2 ms of latency."""
ROUND_MAX_S = 0.05
"""A round takes at most this much time's events: P1 takes every pending event, up to its batch bound."""

GOALS = (
    ("JetStream 1 shard >= 100,000 ev/s", "js_events_per_s", ">=", 100_000, "ev/s"),
    ("JetStream 1 shard >= 0.5 x TCP path", "js_over_tcp", ">=", 0.5, "x"),
    ("JetStream latency p99 < 5 ms at 10k ev/s", "js_latency_10000_p99_us", "<", 5_000, "us"),
    ("JetStream 2 shards >= 1.3 x 1 shard", "js_two_over_one", ">=", 1.3, "x"),
)
"""``(name, metric, op, target, unit)``: ``benchmarks.report`` makes them goals."""

ROWS = (
    ("JetStream 1 shard zero-drop (ev/s)", "js_events_per_s", "ev/s"),
    ("JetStream 1 shard / TCP path (x)", "js_over_tcp", "x"),
    ("JetStream 2 shards zero-drop, summed (ev/s)", "js_two_shards_events_per_s", "ev/s"),
    ("JetStream 2 shards / 1 shard (x)", "js_two_over_one", "x"),
    ("JetStream latency @ 10,000 ev/s p50 (us)", "js_latency_10000_p50_us", "us"),
    ("JetStream latency @ 10,000 ev/s p99 (us)", "js_latency_10000_p99_us", "us"),
    ("nats-server CPU at 1-shard limit (% core)", "js_server_cpu_share", "x"),
    ("nats-server CPU per event (us)", "js_server_cpu_us_per_event", "us"),
    ("nats-server CPU per message (us)", "js_server_cpu_us_per_message", "us"),
    ("events per message at 1-shard limit", "js_events_per_message", "x"),
    ("nats-server peak RSS (MB)", "js_server_peak_rss_mb", "MB"),
)


# --- the publisher process -----------------------------------------------------------------------------


async def publish(args: argparse.Namespace) -> int:
    import nats

    pool = read_pool(args.pool)
    stream = FrameStream(pool)
    stream.position = args.skip
    size = len(stream)
    product_of = [p for p, _ in stream.times]
    subjects = [subject_for("coinbase", p) for p in stream.products]
    total = round(args.rate * args.duration)
    nc = await nats.connect(args.url, connect_timeout=10, max_reconnect_attempts=5)
    js = nc.jetstream()
    await ensure_stream(js, StreamSettings(args.stream))
    origin = new_origin()
    counts = {"messages": 0, "acked_events": 0, "acked_messages": 0, "failed": 0}

    async def one(subject: str, data: bytes, headers: dict[str, str], n: int) -> None:
        try:
            await js.publish(subject, data, headers=headers, timeout=30)
            counts["acked_events"] += n
            counts["acked_messages"] += 1
        except Exception:  # a failed publish is counted; the harness then sees fewer events than sent
            counts["failed"] += 1

    pacer = Pacer(args.rate, total, tick_s=max(0.001, args.round_s), max_chunk_s=max(ROUND_MAX_S, args.round_s))
    clock = time.perf_counter
    blocked = render = 0.0
    pacer.start(clock())
    seq = 0
    last_round = 0.0
    while not pacer.done:
        now = clock()
        n = pacer.due(now)
        if n == 0 or (args.round_s and now - last_round < args.round_s and pacer.owed(now) < pacer.max_chunk):
            await asyncio.sleep(max(pacer.wait(now), last_round + args.round_s - now))
            continue
        last_round = now
        pos0 = stream.position
        bodies = stream.bodies(n)
        tail = stamps(now_us())
        groups: dict[int, list[bytes]] = {}
        for j, body in enumerate(bodies):
            groups.setdefault(product_of[(pos0 + j) % size], []).append(body)
        pacer.record(n)
        sends = []
        for p, group in groups.items():
            for part in _messages(group, len(tail)):
                seq += 1
                headers = {MSG_ID_HEADER: batch_id(origin, seq), EVENTS_HEADER: str(len(part))}
                sends.append(one(subjects[p], tail.join(part) + tail, headers, len(part)))
        counts["messages"] += len(sends)
        t = clock()
        render += t - now
        await asyncio.gather(*sends)
        blocked += clock() - t
    elapsed = clock() - pacer.t0
    nominal = pacer.total / pacer.rate
    ok = pacer.done and elapsed <= nominal / ACHIEVED_TOLERANCE
    _emit({
        "event": "sent", "target_rate": pacer.rate, "sent": pacer.sent, "messages": counts["messages"],
        "elapsed_s": round(elapsed, 4), "nominal_s": round(nominal, 4),
        "achieved_rate": round(pacer.sent / elapsed if elapsed > 0 else 0.0, 1), "achieved": ok,
        "max_lag_ms": round(pacer.max_lag_s * 1000, 3), "blocked_s": round(blocked, 4), "render_s": round(render, 4),
        "generator_limited": not ok and blocked < 0.02 * elapsed,
    })  # fmt: skip
    _emit({"event": "closed", "acked": counts["acked_events"], **counts})
    await nc.close()
    return 0 if counts["acked_events"] == pacer.sent else 3


def _messages(bodies: list[bytes], tail: int) -> list[list[bytes]]:
    """A product's events cut into messages of at most :data:`MAX_EVENTS_PER_MESSAGE` and ``BATCH_MAX_BYTES``."""
    out: list[list[bytes]] = [[]]
    size = 0
    for b in bodies:
        n = len(b) + tail
        if out[-1] and (len(out[-1]) >= MAX_EVENTS_PER_MESSAGE or size + n > BATCH_MAX_BYTES):
            out.append([])
            size = 0
        out[-1].append(b)
        size += n
    return out


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def publisher_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.jetstream publish")
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--stream", default=DEFAULT_STREAM)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--round-s", type=float, default=0.0, help="a round starts at most this often (P1: 0)")
    args = p.parse_args(argv)
    try:
        import uvloop

        return uvloop.run(publish(args))
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(publish(args))


# --- the harness -----------------------------------------------------------------------------------------


class Server:
    """One nats-server for a section, whose stream is deleted before every step."""

    def __init__(self, lab: Lab) -> None:
        binary = find_binary()
        if binary is None:
            raise ServiceError("nats-server is not installed: the JetStream section needs it")
        self.nats = NatsServer(binary, lab.logs, name=f"nats-{int(time.time() * 1000) % 100000}")
        self.nats.start()

    @property
    def url(self) -> str:
        return self.nats.url

    def reset(self) -> None:
        asyncio.run(_delete_stream(self.url, DEFAULT_STREAM))

    def usage(self) -> tuple[float, int]:
        return self.nats.usage()

    def peak_rss_mb(self) -> float:
        pid = self.nats.pid
        return proc_status_mb(pid, "VmHWM") if pid else math.nan

    def stop(self) -> None:
        self.nats.stop()


async def _delete_stream(url: str, name: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def _counts(samples: list[Any]) -> dict[str, float]:
    """Every shard's counters summed: received, each consumer's processed, recorded, and drops by consumer
    (``drops:<consumer>``, as ``measure.p2_counts`` names them)."""
    out = {"received": 0.0, "recorded": 0.0, **dict.fromkeys(CONSUMERS, 0.0)}
    for m in samples:
        out["received"] += m.total("mercurystream_events_total")
        out["recorded"] += m.total("mercurystream_recorded_events_total")
        for c, v in m.by_label("mercurystream_drops_total", "consumer").items():
            out[f"drops:{c}"] = out.get(f"drops:{c}", 0.0) + v
        for c, v in m.by_label("mercurystream_consumer_events_total", "consumer").items():
            if c in out:
                out[c] += v
    return out


def js_step(
    lab: Lab, server: Server, rate: float, prof: Profile, shards: int = 1, round_s: float = ROUND_S
) -> dict[str, Any]:
    """One step: a fresh stream, ``shards`` fresh P2s, the publisher at ``rate`` for ``step_s``."""
    server.reset()
    p2s = [
        lab.p2(P2_SOURCE="nats", P2_SHARD=f"{i}/{shards}", NATS_URL=server.url, RECORD="true", FLIGHT_RECORDER="true")
        for i in range(shards)
    ]
    try:
        cpu0 = server.usage()[0]
        gen = _publisher(lab, server, rate, prof.step_s, round_s)
        sent = gen.sent(timeout_s=prof.step_s * 4 + 60)
        t_sent = time.monotonic()
        state: dict[str, Any] = {"failure": "no metrics"}

        def settled() -> bool:
            c = _counts([p.metrics() for p in p2s])
            failure = dropped(c)
            if failure is not None:
                state["failure"] = failure
                return True
            behind = {k: int(v) for k, v in c.items() if not k.startswith("drops:") and v != sent["sent"]}
            state["failure"] = f"not all of {sent['sent']} events processed: {behind}" if behind else None
            return not behind

        poll_until(settled, prof.grace_s)
        settle_s = time.monotonic() - t_sent
        cpu1, rss = server.usage()
        closed = gen.finish()
        failure = state["failure"]
        if not sent["achieved"]:
            why = "the publisher could not keep up" if sent["generator_limited"] else "PubAcks held the publisher back"
            failure = f"rate not achieved: {sent['achieved_rate']:.0f}/s ({why})" + (f"; {failure}" if failure else "")
        events, messages = max(1, sent["sent"]), max(1, sent["messages"])
        return {
            "rate": rate,
            "shards": shards,
            "passed": failure is None,
            "failure": failure,
            "settle_s": round(settle_s, 3),
            "loadgen": sent,
            "acked": closed.get("acked"),
            "server": {
                "cpu_s": round(cpu1 - cpu0, 3),
                "cpu_share": round((cpu1 - cpu0) / max(sent["elapsed_s"] + settle_s, 1e-9), 3),
                "cpu_us_per_event": round((cpu1 - cpu0) / events * 1e6, 3),
                "cpu_us_per_message": round((cpu1 - cpu0) / messages * 1e6, 3),
                "rss_mb": round(rss / 2**20, 1),
            },
            "events_per_message": round(events / messages, 1),
            "p2_cpu_s": [round(p.cpu_seconds(), 3) for p in p2s],
        }
    finally:
        lab.stop(*p2s)
        for p in p2s:
            remove_recording(p.files["record"])


def _publisher(lab: Lab, server: Server, rate: float, duration: float, round_s: float = 0.0) -> LoadGen:
    argv = [sys.executable, "-m", "benchmarks.jetstream", "publish", "--pool", str(lab.pool), "--url", server.url]
    argv += ["--rate", str(rate), "--duration", str(duration), "--round-s", str(round_s)]
    lab._seq += 1
    gen = LoadGen(argv, lab.env({}), lab.logs / f"{lab._seq:03d}-publisher.err")
    lab.loadgens.append(gen)
    return gen


def latency_at(lab: Lab, server: Server, rate: int, prof: Profile) -> dict[str, Any]:
    """Publisher stamp to P2 receive stamp, through the server, from one shard's recording."""
    server.reset()
    duration = min(prof.latency_max_s, max(prof.latency_s, prof.latency_min_samples / rate))
    p2 = lab.p2(P2_SOURCE="nats", P2_SHARD="0/1", NATS_URL=server.url, RECORD="true")
    try:
        t0 = now_us() + int(prof.warmup_s * 1e6)
        gen = _publisher(lab, server, rate, prof.warmup_s + duration, ROUND_S)
        sent = gen.sent(timeout_s=(prof.warmup_s + duration) * 4 + 60)
        t1 = now_us()
        poll_until(lambda: _counts([p2.metrics()])["recorded"] >= sent["sent"], 10.0)
        gen.finish()
        lab.stop(p2)
        lat = recorded_latencies_us(p2.files["record"], t0, t1)
    finally:
        lab.stop(p2)
        remove_recording(p2.files["record"])
    return {"rate": rate, "duration_s": duration, "samples": len(lat), "us": percentiles(lat), "loadgen": sent}


def measure(lab: Lab, prof: Profile, sweep: Any, tcp_events_per_s: float | None = None) -> dict[str, Any]:
    """The section; ``sweep`` is ``benchmarks.measure.sweep`` (passed in so this module stays importable alone)."""
    server = Server(lab)
    try:
        start = prof.sweep_start if prof.max_steps == 1 else max(prof.sweep_start, (tcp_events_per_s or 0) * 0.5)
        one = sweep(
            "JetStream 1 shard", partial(js_step, lab, server, prof=prof, shards=1), start, prof.ramp_factor, prof
        )
        start2 = prof.sweep_start if prof.max_steps == 1 else max(prof.sweep_start, one["events_per_s"])
        two = sweep(
            "JetStream 2 shards", partial(js_step, lab, server, prof=prof, shards=2), start2, prof.ramp_factor, prof
        )
        lat = latency_at(lab, server, LATENCY_RATE, prof)
        us = lat["us"]
        logger.info(f"JetStream latency @ {lat['rate']:,} ev/s p50={us['p50']:.0f} p99={us['p99']:.0f} µs "
                    f"({lat['samples']} samples)")  # fmt: skip
        peak = server.peak_rss_mb()
    finally:
        lab.stop_all()
        server.stop()
    best = [s for s in one["steps"] if s["passed"]]
    at_limit = max(best, key=lambda s: s["rate"]) if best else None
    out = {
        "one_shard": one,
        "two_shards": two,
        "latency": lat,
        "server_peak_rss_mb": round(peak, 1),
        "round_s": ROUND_S,
    }
    if at_limit is not None:
        out["server_at_limit"] = {**at_limit["server"], "events_per_message": at_limit["events_per_message"]}
    if tcp_events_per_s:
        out["tcp_events_per_s"] = tcp_events_per_s
    return out


def flat(run: dict[str, Any]) -> dict[str, float]:
    """The run's JetStream figures for ``benchmarks.report`` (ratios within the run)."""
    js = run.get("jetstream")
    if not js:
        return {}
    one, two = js["one_shard"]["events_per_s"], js["two_shards"]["events_per_s"]
    out = {"js_events_per_s": one, "js_two_shards_events_per_s": two, "js_two_over_one": _ratio(two, one)}
    tcp = js.get("tcp_events_per_s") or run.get("p2", {}).get("events_per_s")
    if tcp:
        out["js_over_tcp"] = _ratio(one, tcp)
    for pct, v in js["latency"]["us"].items():
        out[f"js_latency_{LATENCY_RATE}_{pct}_us"] = v
    srv = js.get("server_at_limit")
    if srv:
        out["js_server_cpu_share"] = srv["cpu_share"]
        out["js_server_cpu_us_per_event"] = srv["cpu_us_per_event"]
        out["js_server_cpu_us_per_message"] = srv["cpu_us_per_message"]
        out["js_events_per_message"] = srv["events_per_message"]
    out["js_server_peak_rss_mb"] = js["server_peak_rss_mb"]
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# --- standalone ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["publish"]:
        return publisher_main(argv[1:])
    from benchmarks import measure as m
    from benchmarks.report import evaluate_goals, summarize, table
    from benchmarks.stream import generate_pool, write_pool

    p = argparse.ArgumentParser(prog="python -m benchmarks.jetstream", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the runs and medians here as JSON")
    args = p.parse_args(argv)
    prof = m.SMOKE if args.smoke else m.QUICK if args.quick else m.FULL
    runs = args.runs or prof.runs
    logger.remove()
    logger.add(sys.stderr, format="<green>{time:HH:mm:ss}</green> | {message}", level="INFO")
    workdir = Path(tempfile.mkdtemp(prefix="mercury-bench-js-"))
    signal.signal(signal.SIGTERM, _interrupt)
    lab: Lab | None = None
    done = []
    try:
        pool = workdir / "pool.jsonl"
        write_pool(pool, generate_pool(prof.pool_events))
        lab = Lab(workdir, pool)
        for i in range(runs):
            logger.info(f"run {i + 1}/{runs} ({prof.name})")
            tcp = m.sweep("P2 all consumers (TCP)", partial(m.p2_step, lab, prof=prof), prof.sweep_start,
                          prof.ramp_factor, prof)  # fmt: skip
            lab.stop_all()
            run = {"p2": tcp, "jetstream": measure(lab, prof, m.sweep, tcp["events_per_s"])}
            done.append(run)
    except (ServiceError, OSError) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark: interrupted", file=sys.stderr)
        return 1
    finally:
        if lab is not None:
            lab.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(done)
    goals = [g for g in evaluate_goals(summary) if g["metric"].startswith("js_")]
    print(table({k: v for k, v in summary.items() if k.startswith(("js_", "p2_events"))}, goals, [], 0))
    if args.out:
        args.out.write_bytes(
            orjson.dumps({"summary": summary, "goals": goals, "runs": done}, option=orjson.OPT_INDENT_2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
