"""P2 as a whole: in process on free ports, and ``mercury-p2`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import orjson
import pytest
from loguru import logger

from mercurystream.p2 import app as p2_module
from mercurystream.p2 import consumers as consumer_module
from mercurystream.p2.app import P2App, default_consumers
from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import Consumer
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.recorder import RecorderConsumer
from mercurystream.shared.framing import FrameDecoder, decode_object, encode_frames
from mercurystream.shared.runtime import GC_THRESHOLDS

BIN = Path(sys.executable).parent
SEED_METRICS = (
    "mercurystream_events_total",
    "mercurystream_events_per_second",
    "mercurystream_latency_ms_bucket",
    "mercurystream_anomalies_total",
    "mercurystream_incidents_total",
    "mercurystream_drops_total",
    "mercurystream_consumer_events_total",
    "mercurystream_queue_depth",
)


class Counting(Consumer):
    name = "counting"
    label = "COUNTING"
    capacity = 100_000

    def __init__(self, bus: Bus, settings: P2Settings, metrics: P2Metrics) -> None:
        super().__init__(bus, self.capacity or settings.BUS_QUEUE_EVENTS)
        self.ids: list[int] = []

    def handle(self, batch: Batch) -> None:
        self.ids.extend(batch.trade_ids)

    def status_line(self) -> str:
        return f"seen={len(self.ids)}"


class Sleepy(Counting):
    name = "sleepy"
    label = "SLEEPY"
    capacity = 0  # the settings' BUS_QUEUE_EVENTS

    async def handle_async(self, batch: Batch) -> None:
        await asyncio.sleep(0.2)
        self.handle(batch)


def trade(i: int) -> bytes:
    return orjson.dumps(
        {"type": "match", "product_id": "BTC-USD", "price": 100.0, "last_size": 1.0, "trade_id": i, "ingest_ts_ms": 1}
    )


def settings_for(tmp_path: Path, **kw: object) -> P2Settings:
    base = {
        "HOST": "127.0.0.1",
        "PORT": 0,
        "METRICS_PORT": 0,
        "STATUS_INTERVAL_S": 0.05,
        "RECORD_FILE": tmp_path / "rec.jsonl",
    }
    return P2Settings(**{**base, **kw})


async def send_and_wait_ack(port: int, payloads: list[bytes]) -> list[dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_frames(payloads))
    await writer.drain()
    decoder = FrameDecoder()
    acks: list[dict] = []
    while not acks or acks[-1]["ack"] < len(payloads):
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, f"EOF before the ack, got {acks}"
        acks.extend(decode_object(p)[0] for p in decoder.feed(data))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return acks


def sample(app: P2App, name: str, **labels: str) -> float:
    value = app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


@pytest.fixture
def log_lines():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


async def test_events_in_metrics_out_status_lines_and_recording(tmp_path: Path, log_lines: list[str]) -> None:
    settings = settings_for(tmp_path, RECORD=True)
    app = P2App(settings, consumers=[Counting, RecorderConsumer])
    await app.start()
    try:
        assert app.port > 0 and app.metrics_port > 0
        assert any(f"tcp://127.0.0.1:{app.port}" in line for line in log_lines)
        await send_and_wait_ack(app.port, [trade(i) for i in range(100)])
        assert await app.wait_drained(10)
        counting = app.consumers[0]
        assert counting.ids == list(range(100))
        assert sample(app, "mercurystream_events_total") == 100
        assert sample(app, "mercurystream_consumer_events_total", consumer="counting") == 100
        assert sample(app, "mercurystream_consumer_events_total", consumer="recorder") == 100
        assert sample(app, "mercurystream_drops_total", consumer="counting") == 0

        text = await asyncio.to_thread(scrape, app.metrics_port)
        for name in SEED_METRICS:
            assert name in text, name
        assert re.search(r"^mercurystream_events_total 100\.0$", text, re.M)

        deadline = time.monotonic() + 10
        while not any(line.startswith("COUNTING   | seen=100") for line in log_lines):
            assert time.monotonic() < deadline, log_lines[-5:]
            await asyncio.sleep(0.02)
        assert any(line.startswith("RECORDER   | file=") for line in log_lines)
        assert sample(app, "mercurystream_subscribers") == 2
        assert sample(app, "mercurystream_queue_depth", consumer="counting") == 0
    finally:
        await app.stop()
    assert len((tmp_path / "rec.jsonl").read_bytes().splitlines()) == 100
    with pytest.raises(OSError):
        await asyncio.to_thread(scrape, app.metrics_port)


async def test_drops_of_a_slow_consumer_are_counted_per_consumer(tmp_path: Path) -> None:
    app = P2App(settings_for(tmp_path, BUS_QUEUE_EVENTS=10), consumers=[Counting, Sleepy])
    await app.start()
    try:
        for k in range(5):
            await send_and_wait_ack(app.port, [trade(k * 20 + i) for i in range(20)])
        sleepy = app.consumers[1]
        assert sleepy.subscription.dropped > 0
        assert sample(app, "mercurystream_drops_total", consumer="sleepy") == sleepy.subscription.dropped
        assert await app.wait_drained(10)
        assert app.consumers[0].ids == list(range(100))
        assert sample(app, "mercurystream_drops_total", consumer="counting") == 0
    finally:
        await app.stop()
    assert len(sleepy.ids) + sleepy.subscription.dropped == 100


async def test_stop_drains_what_was_published(tmp_path: Path) -> None:
    app = P2App(settings_for(tmp_path), consumers=[Sleepy])
    await app.start()
    await send_and_wait_ack(app.port, [trade(i) for i in range(30)])
    await app.stop()
    assert app.consumers[0].ids == list(range(30))


async def test_a_port_in_use_fails_start_and_stop_cleans_up(tmp_path: Path) -> None:
    first = P2App(settings_for(tmp_path), consumers=[Counting])
    await first.start()
    try:
        second = P2App(settings_for(tmp_path, PORT=first.port), consumers=[Counting])
        with pytest.raises(OSError):
            await second.start()
        await second.stop()
        with pytest.raises(OSError):
            await asyncio.to_thread(scrape, second.metrics_port)
    finally:
        await first.stop()


def fake_consumer(name: str) -> type[Consumer]:
    class Fake(Counting):
        pass

    Fake.name = name
    Fake.__name__ = name
    return Fake


@pytest.fixture
def fake_consumers(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in ("VwapConsumer", "VolatilityConsumer", "VolumeConsumer", "HealthConsumer", "SlowConsumer"):
        monkeypatch.setattr(consumer_module, cls, fake_consumer(cls), raising=False)
    forensics = types.ModuleType("mercurystream.p2.forensics")
    forensics.ForensicsConsumer = fake_consumer("ForensicsConsumer")
    monkeypatch.setitem(sys.modules, "mercurystream.p2.forensics", forensics)


@pytest.mark.parametrize(
    ("flags", "extra"),
    [
        ({"FORENSICS": False}, []),
        ({}, ["ForensicsConsumer"]),
        ({"ENABLE_SLOW": True, "RECORD": True}, ["SlowConsumer", "ForensicsConsumer", "RecorderConsumer"]),
    ],
)
def test_default_wiring_follows_the_flags(fake_consumers: None, flags: dict, extra: list[str]) -> None:
    names = [f.__name__ for f in default_consumers(P2Settings(**flags))]
    assert names == ["VwapConsumer", "VolatilityConsumer", "VolumeConsumer", "HealthConsumer", *extra]


async def test_default_wiring_builds_the_app(fake_consumers: None, tmp_path: Path) -> None:
    app = P2App(settings_for(tmp_path, RECORD=True))
    assert [c.name for c in app.consumers][-2:] == ["ForensicsConsumer", "recorder"]
    assert {s.name for s in app.bus.subscriptions} == {c.name for c in app.consumers}
    assert app.sync_consumers.consumers == app.consumers  # the recorder shares the task too


@pytest.mark.parametrize("source", ["tcp", "nats"])
def test_metrics_collect_for_either_source_before_it_starts(tmp_path: Path, source: str) -> None:
    """Every scraped counter reads its source; a NATS shard has no TCP connections to close or evict."""
    from prometheus_client import generate_latest

    app = P2App(settings_for(tmp_path, P2_SOURCE=source))
    text = generate_latest(app.metrics.registry).decode()
    assert 'mercurystream_budget_evictions_total{bound="partial_bytes_total"' in text


# ---------------------------------------------------------------- the real process


def p2_env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORT", "METRICS_PORT", "HOST"))}
    env.update({"HOST": "127.0.0.1", "PORT": "0", "METRICS_PORT": "0", "LOG_LEVEL": "INFO", **kw})
    return env


def test_bad_port_exits_2_with_one_line() -> None:
    proc = subprocess.run([str(BIN / "mercury-p2")], env=p2_env(PORT="abc"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "PORT" in lines[0] and "Traceback" not in proc.stderr


def test_a_pause_bound_at_or_past_the_queue_bound_exits_2_with_one_line_naming_both() -> None:
    env = p2_env(BUS_QUEUE_BYTES="1000000", BUS_PAUSE_BYTES="1000000")
    proc = subprocess.run([str(BIN / "mercury-p2")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "BUS_PAUSE_BYTES" in lines[0] and "BUS_QUEUE_BYTES" in lines[0]


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("HOST", "foo..bar", "host name"),
        ("NATS_URL", "nats://127.0.0.1:99999", "port 1 to 65535"),
        ("NATS_URL", "http://127.0.0.1:4222", "nats://host"),
        ("RECORD_MAX_BYTES", "1000", "RECORD_ROTATE_BYTES"),
        ("LATENCY_EVAL_EVERY", "3001", "LATENCY_BUFFER_SIZE"),
    ],
)
def test_a_setting_p2_cannot_work_with_exits_2_with_one_line(var: str, value: str, says: str) -> None:
    proc = subprocess.run(
        [str(BIN / "mercury-p2")], env=p2_env(**{var: value}), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert var in lines[0] and says in lines[0]


STUB_MAIN = "import mercurystream.p2.app as m; m.default_consumers = lambda settings: []; m.main()"


async def run_until_signal(
    argv: list[str], env: dict[str, str], sig: signal.Signals = signal.SIGTERM
) -> tuple[int, str, list[dict]]:
    """Start P2, send it a few events, signal it; exit code, stderr, the acks it sent."""
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)
    err: list[str] = []
    try:
        port = None
        while port is None:
            raw = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert raw, "P2 exited before listening: " + "".join(err)
            err.append(raw.decode())
            m = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", err[-1])
            port = int(m.group(1)) if m else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_frames([trade(i) for i in range(5)]))
        await writer.drain()
        decoder = FrameDecoder()
        acks: list[dict] = []
        while not acks or acks[-1]["ack"] < 5:
            acks.extend(decode_object(p)[0] for p in decoder.feed(await asyncio.wait_for(reader.read(4096), 30)))
        proc.send_signal(sig)
        while data := await asyncio.wait_for(reader.read(4096), 30):
            acks.extend(decode_object(p)[0] for p in decoder.feed(data))
        writer.close()
        rest = await asyncio.wait_for(proc.stderr.read(), 60)
        err.append(rest.decode())
        code = await asyncio.wait_for(proc.wait(), 60)
        return code, "".join(err), acks
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_gracefully_with_exit_0(sig: signal.Signals) -> None:
    code, err, acks = await run_until_signal([sys.executable, "-c", STUB_MAIN], p2_env(), sig)
    assert code == 0, err
    assert acks[-1] == {"ack": 5, "final": True}
    assert "P2 stopped after 5 events" in err
    assert "Traceback" not in err


def _consumers_available() -> bool:
    try:
        default_consumers(P2Settings(FORENSICS=True))
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _consumers_available(), reason="the analytics/forensics consumers are not in the tree yet")
async def test_mercury_p2_with_every_consumer_stops_on_sigterm(tmp_path: Path) -> None:
    env = p2_env(
        RECORD="true",
        RECORD_FILE=str(tmp_path / "rec.jsonl"),
        INCIDENTS_DIR=str(tmp_path / "incidents"),
        DRIFT_SAMPLE_FILE=str(tmp_path / "drift.jsonl"),
        ENABLE_SLOW="true",
        SLOW_DELAY_MS="1",
    )
    code, err, acks = await run_until_signal([str(BIN / "mercury-p2")], env)
    assert code == 0, err
    assert acks[-1] == {"ack": 5, "final": True}
    assert "Traceback" not in err
    assert len((tmp_path / "rec.jsonl").read_bytes().splitlines()) == 5


def test_module_exposes_main() -> None:
    assert callable(p2_module.main)


def test_tune_runtime_collects_less_often_and_switches_threads_sooner() -> None:
    import gc

    before = gc.get_threshold()
    interval = sys.getswitchinterval()
    try:
        p2_module.tune_runtime()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert sys.getswitchinterval() == pytest.approx(p2_module.SWITCH_INTERVAL_S)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(interval)


def test_loop_factory_is_uvloop_when_installed() -> None:
    factory = p2_module.loop_factory()
    uvloop = pytest.importorskip("uvloop")
    assert factory is uvloop.new_event_loop


# ---------------------------------------------------------------- on-demand dumps


def post_incidents(port: int, body: bytes = b"", query: str = "") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/incidents{query}", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.request.HTTPError as err:
        return err.code, orjson.loads(err.read())


def dup_trade(i: int) -> bytes:
    return orjson.dumps(
        {
            "type": "match",
            "product_id": "BTC-USD",
            "price": 100.0,
            "last_size": 1.0,
            "time": "2024-05-01T12:00:00.000000Z",
            "trade_id": i,
            "ingest_ts_ms": 1,
        }
    )


async def test_post_incidents_dumps_the_forensics_ring_and_honours_the_cooldown_only_when_asked(
    tmp_path: Path,
) -> None:
    from mercurystream.p2.forensics import ForensicsConsumer

    settings = settings_for(
        tmp_path,
        INCIDENTS_DIR=tmp_path / "incidents",
        DRIFT_SAMPLE_FILE=tmp_path / "drift.jsonl",
        INCIDENT_CHARTS=False,
        FLIGHT_PRE_EVENTS=20,
        FLIGHT_POST_EVENTS=0,
        FLIGHT_COOLDOWN_S=600,
    )
    app = P2App(settings, consumers=[ForensicsConsumer])
    await app.start()
    try:
        status, answer = await asyncio.to_thread(post_incidents, app.metrics_port)
        assert (status, answer["refused"]) == (409, "empty")
        await send_and_wait_ack(app.port, [dup_trade(i) for i in (1, 2, 3, 2)])  # a duplicate: a capture
        assert await app.wait_drained(10)
        forensics = app.consumers[0]
        assert forensics.recorder.started == 1
        status, answer = await asyncio.to_thread(post_incidents, app.metrics_port, b'{"respect_cooldown": true}')
        assert status == 409 and answer["refused"] == "cooldown" and "FLIGHT_COOLDOWN_S=600" in answer["error"]
        status, answer = await asyncio.to_thread(post_incidents, app.metrics_port, b'{"reason": "look"}')
        assert status == 202
        assert answer["type"] == "manual" and answer["events"] == 4 and answer["pre_bound"] == "none"
        assert answer["path"] == str(tmp_path / "incidents" / answer["incident_id"])
        assert await asyncio.to_thread(forensics.writer.wait_idle, 30)
        meta = orjson.loads((Path(answer["path"]) / "meta.json").read_bytes())
        assert (meta["type"], meta["reason"], meta["pre_events"]) == ("manual", "look", 4)
        assert sample(app, "mercurystream_incidents_total", type="manual") == 1
        assert sample(app, "mercurystream_incidents_total", type="duplicate") == 1
        assert sample(app, "mercurystream_incident_requests_refused_total", reason="cooldown") == 1
        assert sample(app, "mercurystream_incident_requests_refused_total", reason="empty") == 1
    finally:
        await app.stop()


async def test_without_forensics_a_dump_is_refused_and_so_is_one_while_stopping(tmp_path: Path) -> None:
    from mercurystream.p2.flight_recorder import DumpRefused

    app = P2App(settings_for(tmp_path), consumers=[Counting])
    await app.start()
    try:
        status, answer = await asyncio.to_thread(post_incidents, app.metrics_port)
        assert (status, answer["refused"]) == (503, "disabled")
        app.dump_on_signal()
        assert sample(app, "mercurystream_incident_requests_refused_total", reason="disabled") == 2
    finally:
        await app.stop()
    with pytest.raises(DumpRefused) as refused:
        app.dump("late")
    assert refused.value.reason == "unavailable"


def test_the_memory_budget_and_connection_bounds_come_from_the_settings(tmp_path: Path) -> None:
    from mercurystream.p2.batch import Batch as B

    app = P2App(
        settings_for(
            tmp_path,
            BUS_QUEUE_BYTES=50_000,
            BUS_PAUSE_BYTES=20_000,
            WINDOW_TRADES=1_234,
            FLIGHT_RING_BYTES=40_000,
            DEDUPE_IDS=3_000,
            MAX_CONNECTIONS=7,
            IDLE_TIMEOUT_S=11,
            PARTIAL_TIMEOUT_S=3,
            MAX_PARTIAL_BYTES_TOTAL=99_999,
            FORENSICS=True,
        )
    )
    assert all(s.max_bytes == 50_000 for s in app.bus.subscriptions)
    assert app.bus.pause_bytes == 20_000
    windows = {c.name: c.window for c in app.consumers if c.name in ("vwap", "volume")}
    assert {n: w.max_entries for n, w in windows.items()} == {"vwap": 1_234, "volume": 1_234}
    assert P2App(settings_for(tmp_path, BUS_QUEUE_BYTES=60_000)).bus.pause_bytes == 30_000
    forensics = next(c for c in app.consumers if c.name == "forensics")
    assert forensics.recorder.max_bytes == 40_000
    assert app.dedupe.store.max_ids == 3_000
    src = app.source
    assert (src.max_connections, src.idle_timeout_s, src.partial_timeout_s, src.max_partial_bytes_total) == (
        7,
        11,
        3,
        99_999,
    )
    big = [{"type": "match", "product_id": "BTC-USD", "trade_id": i, "pad": "x" * 1000} for i in range(100)]
    app.bus.publish(B.of_events(big))
    sample_value = app.metrics.registry.get_sample_value
    dropped = sample_value("mercurystream_consumer_dropped_total", {"consumer": "vwap", "reason": "queue_bytes"})
    assert dropped == app.bus.subscriptions[0].dropped_bytes > 0
    assert sample_value("mercurystream_budget_evictions_total", {"bound": "bus_queue_bytes"}) == dropped * len(
        app.bus.subscriptions
    )
    windows["vwap"].trimmed, windows["volume"].trimmed = 5, 7
    assert sample_value("mercurystream_budget_evictions_total", {"bound": "window_trades"}) == 12
