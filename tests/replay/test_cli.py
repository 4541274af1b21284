from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from mercurystream.replay.cli import main
from mercurystream.shared.framing import FrameDecoder, encode_frame

ROOT = Path(__file__).resolve().parents[2]
RESTAMP_TAIL = re.compile(rb',"ingest_ts_ms":\d+,"ingest_ts_us":\d+\}$')


def recorded_line(i: int) -> bytes:
    """A line as P2's recorder writes it: P1's payload with the receive stamps spliced in."""
    ingest_us = 1_735_000_000_000_000 + i * 1000
    return orjson.dumps(
        {
            "type": "match",
            "product_id": ("BTC-USD", "ETH-USD")[i % 2],
            "price": 87000.5 + i,
            "last_size": 0.125,
            "time": f"2025-12-24T17:{i // 60 % 60:02d}:{i % 60:02d}.000000Z",
            "trade_id": 5000 + i,
            "side": "sell",
            "ingest_ts_ms": ingest_us // 1000,
            "ingest_ts_us": ingest_us,
            "recv_ts_ms": ingest_us // 1000 + 3,
            "recv_ts_us": ingest_us + 3000,
        }
    )


@pytest.fixture
def recording(tmp_path: Path) -> tuple[Path, list[bytes]]:
    lines = [recorded_line(i) for i in range(500)]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


class FakeP2:
    """P2's side of the wire: decodes each connection's frames and acknowledges them as P2 does."""

    def __init__(self, ack: bool = True, close_after: int | None = None) -> None:
        self.ack = ack
        self.close_after = close_after
        self.connections: list[list[bytes]] = []
        self.port = 0

    async def __aenter__(self) -> FakeP2:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames: list[bytes] = []
        self.connections.append(frames)
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                frames += decoder.feed(data)
                if self.close_after is not None and len(frames) >= self.close_after:
                    return
                if self.ack:
                    writer.write(encode_frame(orjson.dumps({"ack": len(frames)})))
        finally:
            writer.close()


async def replay(*argv: str) -> int:
    """The CLI in a worker thread (it runs its own event loop), so the fake P2 can serve meanwhile."""
    return await asyncio.wait_for(asyncio.to_thread(main, list(argv)), timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_send_stamps(frames: list[bytes]) -> list[bytes]:
    out = []
    for f in frames:
        stripped, n = RESTAMP_TAIL.subn(b"}", f)
        assert n == 1, f
        out.append(stripped)
    return out


INJECT_ALL = [
    "--rate=0",
    "--shuffle-window=8",
    "--duplicate-rate=0.05",
    "--drift-rate=0.05",
    "--gap-rate=0.05",
    "--latency-ms=20",
]


async def test_same_seed_sends_the_same_frames(recording, capsys) -> None:
    path, _ = recording
    async with FakeP2() as p2:
        for seed in ("7", "7", "8"):
            assert await replay("--file", str(path), "--port", str(p2.port), "--seed", seed, *INJECT_ALL) == 0
    first, second, other = (without_send_stamps(c) for c in p2.connections)
    assert first == second
    assert first != other
    out = capsys.readouterr().out
    assert re.search(r"injected anomalies: gap=\d+ drift=\d+ duplicate=\d+ shuffle=\d+ latency=\d+ \(\+20 ms\)", out)
    assert f"acknowledged by P2: {len(first)} of {len(first)}" in out


async def test_keep_timestamps_sends_recorded_lines_byte_for_byte(recording, capsys) -> None:
    path, lines = recording
    async with FakeP2() as p2:
        for _ in range(2):
            rc = await replay("--file", str(path), "--port", str(p2.port), "--rate=0", "--keep-timestamps")
            assert rc == 0
    assert p2.connections[0] == lines
    assert p2.connections[1] == lines
    out = capsys.readouterr().out
    assert "sent 500 events (500 read from" in out
    assert "injected" not in out


async def test_keep_timestamps_with_injection_is_fully_deterministic(recording) -> None:
    path, _ = recording
    async with FakeP2() as p2:
        for _ in range(2):
            rc = await replay("--file", str(path), "--port", str(p2.port), "--keep-timestamps", "--seed=3", *INJECT_ALL)
            assert rc == 0
    assert p2.connections[0] == p2.connections[1]


async def test_default_restamps_ingest_and_strips_recv(recording) -> None:
    path, lines = recording
    async with FakeP2() as p2:
        before_us = time.time_ns() // 1000
        assert await replay("--file", str(path), "--port", str(p2.port), "--rate=0", "--limit=50") == 0
        after_us = time.time_ns() // 1000
    (frames,) = p2.connections
    assert len(frames) == 50
    for raw, frame in zip(lines, frames, strict=False):
        ev = orjson.loads(frame)
        assert "recv_ts_ms" not in ev and "recv_ts_us" not in ev
        assert before_us <= ev["ingest_ts_us"] <= after_us
        assert ev["ingest_ts_ms"] == ev["ingest_ts_us"] // 1000
        rec = orjson.loads(raw)
        assert {k: ev[k] for k in ("trade_id", "price", "time")} == {k: rec[k] for k in ("trade_id", "price", "time")}


async def test_malformed_lines_are_skipped_and_reported(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(recorded_line(0) + b"\n\n{oops\n" + recorded_line(1) + b"\n[1]\n\n" + recorded_line(2) + b"\n")
    async with FakeP2() as p2:
        assert await replay("--file", str(path), "--port", str(p2.port), "--rate=0") == 0
    assert len(p2.connections[0]) == 3
    out = capsys.readouterr().out
    assert "skipped 2 malformed lines (invalid_json=1, not_object=1); first at lines 3, 5" in out


async def test_a_file_with_no_valid_event_is_bad_input(tmp_path: Path, capsys) -> None:
    path = tmp_path / "meta.json"
    path.write_text('{\n  "id": 1\n}\n')
    async with FakeP2() as p2:
        assert await replay("--file", str(path), "--port", str(p2.port)) == 2
    err = capsys.readouterr().err
    assert f"no valid event in {path}" in err


async def test_rate_is_honoured(recording, capsys) -> None:
    path, _ = recording
    async with FakeP2() as p2:
        t0 = time.monotonic()
        assert await replay("--file", str(path), "--port", str(p2.port), "--rate=400", "--limit=200") == 0
        elapsed = time.monotonic() - t0
    assert len(p2.connections[0]) == 200
    # 200 events at 400/s: the last is due 199/400 s after the first. Pacing can't be early; under
    # load it may be late, so only the upper bound is loose.
    assert 0.45 <= elapsed < 15
    rate = float(re.search(r"([\d,]+) events/s", capsys.readouterr().out).group(1).replace(",", ""))
    assert 100 <= rate <= 420


async def test_acks_not_waited_for_and_timing_out(recording, capsys) -> None:
    path, _ = recording
    async with FakeP2(ack=False) as p2:
        args = ("--file", str(path), "--port", str(p2.port), "--rate=0", "--limit=10")
        assert await replay(*args, "--no-wait-ack") == 0
        assert "acknowledged by P2: 0 of 10 (not waited for)" in capsys.readouterr().out
        assert await replay(*args, "--ack-timeout=0.3") == 0
        assert "acknowledged by P2: 0 of 10 (not all within 0.3 s)" in capsys.readouterr().out
    assert [len(c) for c in p2.connections] == [10, 10]


async def test_p2_closing_mid_replay_is_exit_3(recording, capsys) -> None:
    path, _ = recording
    async with FakeP2(close_after=100) as p2:
        assert await replay("--file", str(path), "--port", str(p2.port), "--rate=2000") == 3
    captured = capsys.readouterr()
    assert "P2 closed the connection after" in captured.err
    assert "sent " in captured.out


async def test_p2_closing_before_acknowledging_everything_sent_is_exit_3(recording, capsys) -> None:
    """Everything was written, but P2 closed without acknowledging it: the events may be lost, so not exit 0."""
    path, _ = recording
    async with FakeP2(ack=False, close_after=10) as p2:
        assert await replay("--file", str(path), "--port", str(p2.port), "--rate=0", "--limit=10") == 3
    captured = capsys.readouterr()
    assert "acknowledged by P2: 0 of 10 (P2 closed the connection)" in captured.out
    assert "P2 closed the connection after 10 events were sent, 0 acknowledged" in captured.err


async def test_a_line_that_restamping_takes_over_the_frame_limit_is_skipped_not_sent(tmp_path: Path, capsys) -> None:
    """A line just under the 1 MiB limit grew past it when restamped; P2 closed on it and the run
    still exited 0 with a thousand events unsent. Now it is counted oversize and the rest arrive."""
    from mercurystream.p2.app import P2App
    from mercurystream.p2.config import P2Settings
    from mercurystream.p2.recorder import RecorderConsumer

    head = b'{"type":"match","product_id":"BTC-USD","price":1,"last_size":1,"time":"2024-01-01T00:00:00.000000Z",'
    head += b'"trade_id":2,"pad":"'
    big = head + b"x" * ((1 << 20) - 10 - len(head) - 2) + b'"}'
    small = [recorded_line(i) for i in range(300)]
    src = tmp_path / "near_limit.jsonl"
    src.write_bytes(b"\n".join([small[0], big, *small[1:]]) + b"\n")
    settings = P2Settings(HOST="127.0.0.1", PORT=0, METRICS_PORT=0, RECORD=True, RECORD_FILE=tmp_path / "out.jsonl")
    app = P2App(settings, consumers=[RecorderConsumer])
    await app.start()
    try:
        assert await replay("--file", str(src), "--port", str(app.port), "--rate=0") == 0
        assert await app.wait_drained(10)
    finally:
        await app.stop()
    out = capsys.readouterr().out
    assert "sent 300 events (301 read from" in out
    assert "(oversize=1)" in out and "acknowledged by P2: 300 of 300\n" in out
    recorded = [orjson.loads(line)["trade_id"] for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert recorded == [5000 + i for i in range(300)]


@pytest.mark.parametrize("how", ["option", "environment"])
async def test_the_frame_limit_follows_the_receiving_p2s_max_frame_bytes(
    tmp_path: Path, capsys, monkeypatch, how
) -> None:
    """A P2 run with a larger MAX_FRAME_BYTES takes the 2 MiB line, a default one would have closed on it."""
    from mercurystream.p2.app import P2App
    from mercurystream.p2.config import P2Settings
    from mercurystream.p2.recorder import RecorderConsumer

    head = b'{"type":"match","product_id":"BTC-USD","price":1,"last_size":1,"time":"2024-01-01T00:00:00.000000Z",'
    head += b'"trade_id":2,"pad":"'
    big = head + b"x" * (2 << 20) + b'"}'
    src = tmp_path / "big.jsonl"
    src.write_bytes(b"\n".join([recorded_line(0), big, recorded_line(1)]) + b"\n")
    limit = 4 << 20
    settings = P2Settings(
        HOST="127.0.0.1", PORT=0, METRICS_PORT=0, MAX_FRAME_BYTES=limit, RECORD=True, RECORD_FILE=tmp_path / "out.jsonl"
    )
    app = P2App(settings, consumers=[RecorderConsumer])
    await app.start()
    argv = ["--file", str(src), "--port", str(app.port), "--rate=0"]
    if how == "option":
        argv.append(f"--max-frame-bytes={limit}")
    else:
        monkeypatch.setenv("MAX_FRAME_BYTES", str(limit))
    try:
        assert await replay(*argv) == 0
        assert await app.wait_drained(10)
    finally:
        await app.stop()
    out = capsys.readouterr().out
    assert "sent 3 events" in out and "oversize" not in out and "acknowledged by P2: 3 of 3\n" in out
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 3


async def test_missing_file_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert await replay("--file", str(tmp_path / "nope.jsonl")) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "no such file" in captured.err
    assert captured.out == ""


async def test_nothing_listening_is_one_line_exit_3(recording, capsys) -> None:
    path, _ = recording
    assert await replay("--file", str(path), "--port", str(free_port())) == 3
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "not listening" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    "bad",
    [["--rate=-1"], ["--duplicate-rate=1.5"], ["--gap-rate=x"], ["--shuffle-window=-2"], ["--port=70000"], ["--x"]],
)
async def test_invalid_options_are_one_line_exit_2(recording, capsys, bad: list[str]) -> None:
    path, _ = recording
    assert await replay("--file", str(path), *bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("replay: error:")


def run_tool(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


TOOLS = [
    pytest.param([sys.executable, str(ROOT / "replay.py")], id="replay.py"),
    pytest.param([str(Path(sys.executable).parent / "mercury-replay")], id="mercury-replay"),
]


@pytest.mark.parametrize("tool", TOOLS)
def test_tools_missing_file(tool: list[str], tmp_path: Path) -> None:
    if not Path(tool[-1]).exists():
        pytest.skip(f"{tool[-1]} is not installed")
    proc = run_tool([*tool, "--file", str(tmp_path / "nope.jsonl")])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_tools_nothing_listening(tool: list[str], recording) -> None:
    if not Path(tool[-1]).exists():
        pytest.skip(f"{tool[-1]} is not installed")
    path, _ = recording
    proc = run_tool([*tool, "--file", str(path), "--port", str(free_port())])
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "not listening" in proc.stderr


def test_replay_py_without_the_package_says_how_to_install(tmp_path: Path) -> None:
    # -S skips site-packages, where the editable install lives.
    proc = run_tool([sys.executable, "-S", str(ROOT / "replay.py"), "--file", str(tmp_path / "x")])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "make install" in proc.stderr and ".venv/bin/python" in proc.stderr


async def test_interrupt_still_prints_the_summary(recording) -> None:
    path, _ = recording
    # A child started from a non-interactive shell may inherit SIGINT ignored; ask for the default.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from mercurystream.replay.cli import main; sys.exit(main())"
    )
    async with FakeP2() as p2:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            "--file",
            str(path),
            "--port",
            str(p2.port),
            "--rate=100",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not (p2.connections and len(p2.connections[0]) >= 5) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 130, stderr
    assert re.search(rb"replay: interrupted: sent \d+ events", stdout)
    assert b"Traceback" not in stderr


def test_runs_on_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    from mercurystream.replay.cli import _runner

    with _runner() as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)


@pytest.mark.parametrize(
    "bad",
    [
        ["--latency-ms=99999999999999999999999", "--keep-timestamps"],
        ["--latency-ms=99999999999999999999999"],
        ["--latency-ms=86400001"],
        ["--latency-ms=-1"],
        ["--seed=-1"],
        [f"--seed={2**64}"],
        ["--rate=nan"],
        ["--rate=inf"],
        ["--rate=1e400"],
        ["--rate=1e-300"],
        ["--rate=2e9"],
        ["--ack-timeout=nan"],
        ["--ack-timeout=1e308"],
        ["--ack-timeout=-0.5"],
        ["--shuffle-window=99999999999999999999"],
        ["--limit=0"],
        [f"--limit={2**63}"],
        ["--duplicate-rate=nan"],
        ["--drift-rate=inf"],
        ["--gap-rate=-0.1"],
        ["--port=0"],
        ["--seed=" + "9" * 5000],
        ["--host="],
        ["--host=" + "a" * 300],
        ["--host=a\x01b"],
        ["--host=\udcff"],
        ["--nats-url=nats://127.0.0.1:99999"],
        ["--nats-url=http://127.0.0.1:4222"],
        ["--nats-url=nats://foo..bar"],
        ["--max-frame-bytes=0"],
        [f"--max-frame-bytes={2**32}"],
        ["--max-frame-bytes=1MiB"],
    ],
)
async def test_out_of_range_options_are_rejected_at_parse_time(recording, capsys, bad: list[str]) -> None:
    path, _ = recording
    assert await replay("--file", str(path), "--port", str(free_port()), *bad) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("replay: error: argument --"), captured.err
    assert len(captured.err) < 300 and captured.out == ""


async def test_the_bounds_themselves_are_accepted(recording, capsys) -> None:
    path, lines = recording
    async with FakeP2() as p2:
        argv = ["--file", str(path), "--port", str(p2.port), "--rate=1000000000", "--limit=3", "--keep-timestamps"]
        assert await replay(*argv, "--latency-ms=86400000", f"--seed={2**64 - 1}", "--ack-timeout=86400") == 0
    sent = [orjson.loads(f) for f in p2.connections[0]]
    assert [e["ingest_ts_ms"] for e in sent] == [orjson.loads(r)["ingest_ts_ms"] - 86_400_000 for r in lines[:3]]


def _hostile_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "garbage": bytes(range(256)) * 4000,
        "garbage_lines": b"\n".join(bytes([(i * 37 + k) % 256 for k in range(300)]) for i in range(500)),
        "one_huge_line": b'{"a":"' + b"x" * (3 << 20) + b'"}\n' + recorded_line(0) + b"\n",
        "huge_integers": b'{"trade_id":' + b"9" * 40 + b'}\n{"ingest_ts_us":1e999}\n' + recorded_line(1) + b"\n",
        "nan_tokens": b'{"price":NaN}\n{"price":Infinity}\n{"x":-Infinity}\n{"y":nan}\n' + recorded_line(2) + b"\n",
        "deep": b"[" * 100_000 + b"\n" + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"\n",
        "deep_but_readable": b'{"a":' * 300
        + b"1"
        + b"}" * 300
        + b"\n"
        + b'{"b":'
        + b"[" * 1000
        + b"]" * 1000
        + b"}\n"
        + recorded_line(3)
        + b"\n",
        "int64_edge_stamps": b'{"ingest_ts_ms":-9223372036854775808,"ingest_ts_us":-9223372036854775807}\n',
        "u64_stamps": b'{"type":"match","ingest_ts_ms":18446744073709551615,"ingest_ts_us":18446744073709551615}\n',
        "odd_objects": b'{}\n{"ingest_ts_ms":"x","recv_ts_us":null}\n{"":{"":[]}}\n\x00\x00\n',
        "empty": b"",
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.jsonl"
        out[name].write_bytes(data)
    out["directory"] = tmp_path
    return out


HOSTILE_OPTIONS = [
    [],
    ["--keep-timestamps"],
    ["--keep-timestamps", "--latency-ms=1"],
    ["--latency-ms=5", "--drift-rate=1", "--duplicate-rate=0.5", "--shuffle-window=3", "--gap-rate=0.2"],
]


async def test_hostile_files_end_in_a_summary_or_one_line(tmp_path: Path, capsys) -> None:
    """Exit 0 with a summary when something was sent, 2 with one line when nothing valid could be."""
    expected = {"garbage": 2, "garbage_lines": 2, "deep": 2, "directory": 2}
    async with FakeP2() as p2:
        for name, path in _hostile_files(tmp_path).items():
            for opts in HOSTILE_OPTIONS:
                rc = await replay("--file", str(path), "--port", str(p2.port), "--rate=0", *opts)
                captured = capsys.readouterr()
                assert rc == expected.get(name, 0), (name, opts, captured)
                if rc == 2:
                    assert captured.err.count("\n") == 1, (name, opts, captured.err)
                else:
                    assert captured.err == "" and "acknowledged by P2" in captured.out, (name, opts, captured)


async def test_an_object_nested_deeper_than_can_be_written_back_is_skipped_as_too_deep(tmp_path, capsys) -> None:
    """orjson reads 1,024 levels but writes 254: restamping such a line ended in a traceback."""
    path = _hostile_files(tmp_path)["deep_but_readable"]
    async with FakeP2() as p2:
        assert await replay("--file", str(path), "--port", str(p2.port), "--rate=0") == 0
    assert "skipped 2 malformed lines (too_deep=2); first at lines 1, 2" in capsys.readouterr().out
    assert [orjson.loads(f)["trade_id"] for f in p2.connections[0]] == [orjson.loads(recorded_line(3))["trade_id"]]


async def record_with_p2(tmp_path: Path, name: str, *argv: str) -> list[bytes]:
    """The lines a real P2 records from one replay run with ``argv``."""
    from mercurystream.p2.app import P2App
    from mercurystream.p2.config import P2Settings
    from mercurystream.p2.recorder import RecorderConsumer

    out = tmp_path / f"{name}.jsonl"
    settings = P2Settings(HOST="127.0.0.1", PORT=0, METRICS_PORT=0, RECORD=True, RECORD_FILE=out)
    app = P2App(settings, consumers=[RecorderConsumer])
    await app.start()
    try:
        assert await replay(*argv, "--port", str(app.port), "--rate=0") == 0
        assert await app.wait_drained(10)
    finally:
        await app.stop()
    return out.read_bytes().splitlines()


async def test_lines_p2_recorded_as_drift_are_replayed_not_dropped(tmp_path: Path, capsys) -> None:
    """P2 reads NaN, 1e400 and a lone surrogate escape (schema drift) and records them; replay counted
    them invalid_json and dropped them, so a replayed bundle lost lines and every later one moved."""
    src = [recorded_line(i) for i in range(6)]
    src[1] = src[1].replace(b'"price":87001.5', b'"price":NaN')
    src[2] = src[2].replace(b'"price":87002.5', b'"price":1e400')
    src[3] = src[3].replace(b'"ETH-USD"', b'"\\ud800"')
    src[4] = b'{"type":"match","price":-Infinity,"trade_id":1}'  # no stamps: P2 splices its own in
    first = tmp_path / "first.jsonl"
    first.write_bytes(b"\n".join(src) + b"\n")
    recorded = await record_with_p2(tmp_path, "recorded", "--file", str(first), "--keep-timestamps")
    assert len(recorded) == 6 and b'"price":NaN' in recorded[1] and b'"\\ud800"' in recorded[3]
    assert "kept 4 lines only P2's lenient parse reads" in capsys.readouterr().out
    bundle = tmp_path / "bundle.jsonl"
    bundle.write_bytes(b"\n".join(recorded) + b"\n")
    # Deterministic replay of the bundle: P2 records it again byte for byte.
    assert await record_with_p2(tmp_path, "again", "--file", str(bundle), "--keep-timestamps") == recorded
    # Restamped: every line arrives, each value as it was spelt.
    restamped = await record_with_p2(tmp_path, "restamped", "--file", str(bundle))
    stamps = re.compile(rb',"(?:ingest|recv)_ts_(?:ms|us)":\d+')
    assert [stamps.sub(b"", line) for line in restamped] == [stamps.sub(b"", line) for line in recorded]
    out = capsys.readouterr().out
    assert "malformed" not in out and "(lenient=4)" in out and "acknowledged by P2: 6 of 6" in out


async def test_a_stamp_that_cannot_be_aged_is_sent_as_recorded(tmp_path: Path, capsys) -> None:
    line = b'{"type":"match","ingest_ts_ms":-9223372036854775808,"ingest_ts_us":-9223372036854775807}'
    path = tmp_path / "edge.jsonl"
    path.write_bytes(line + b"\n" + recorded_line(0) + b"\n")
    async with FakeP2() as p2:
        args = ("--file", str(path), "--port", str(p2.port), "--keep-timestamps", "--latency-ms=1")
        assert await replay(*args) == 0
    assert p2.connections[0][0] == line
    assert "latency=1 (+1 ms)" in capsys.readouterr().out


async def test_a_file_name_that_is_not_utf8_is_printed_not_a_traceback(tmp_path: Path) -> None:
    path = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/rec\xff.jsonl"))
    path.write_bytes(recorded_line(0) + b"\n")
    async with FakeP2() as p2:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "replay.py"),
            "--file",
            str(path),
            "--port",
            str(p2.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert b"Traceback" not in stderr
    assert proc.returncode == 0, stderr
    assert b"rec\\udcff.jsonl" in stdout


# ---------------------------------------------------------------- Parquet recordings


def export(src: Path, out: Path) -> Path:
    from mercurystream.export.cli import main as export_main

    assert export_main([str(src), "--out", str(out)]) == 0
    return out / f"{src.stem}.parquet"


async def test_an_exported_parquet_file_replays_byte_for_byte(recording, tmp_path: Path, capsys) -> None:
    path, lines = recording
    exported = export(path, tmp_path / "pq")
    async with FakeP2() as p2:
        assert await replay("--file", str(exported), "--port", str(p2.port), "--rate=0", "--keep-timestamps") == 0
        assert await replay("--file", str(exported), "--port", str(p2.port), "--rate=0", "--limit", "7") == 0
    assert p2.connections[0] == lines
    assert [orjson.loads(f)["trade_id"] for f in p2.connections[1]] == [5000 + i for i in range(7)]
    assert "sent 500 events (500 read from" in capsys.readouterr().out


async def test_replaying_an_export_into_p2_records_the_same_events(tmp_path: Path) -> None:
    from mercurystream.p2.app import P2App
    from mercurystream.p2.config import P2Settings
    from mercurystream.p2.recorder import RecorderConsumer

    events = [orjson.loads(recorded_line(i)) for i in range(300)]
    events[10]["maker_order_id"] = "abc"  # extra keys come back from the JSON column
    events[11]["side"] = None
    events[12]["best_bid"] = 87000
    src = tmp_path / "src.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    exported = export(src, tmp_path / "pq")
    settings = P2Settings(HOST="127.0.0.1", PORT=0, METRICS_PORT=0, RECORD=True, RECORD_FILE=tmp_path / "out.jsonl")
    app = P2App(settings, consumers=[RecorderConsumer])
    await app.start()
    try:
        assert await replay("--file", str(exported), "--port", str(app.port), "--rate=0", "--keep-timestamps") == 0
        assert await app.wait_drained(10)
    finally:
        await app.stop()
    assert [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()] == events


async def test_a_file_that_is_not_parquet_inside_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 but nothing else")
    assert await replay("--file", str(bad), "--port", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable Parquet file" in err and "Traceback" not in err


async def test_hostile_parquet_files_end_in_a_summary_or_one_line_never_a_traceback(tmp_path: Path, capsys) -> None:
    """A bad ``extra`` or a column with no JSON value (decimal, binary) ended in a traceback and exit 1."""
    import decimal

    import pyarrow as pa

    from tests.replay.test_source import hostile_parquet

    files = {
        "extra_badjson": (
            {"extra": ["{not json", None, None]},
            0,
            "skipped 1 malformed rows (invalid_json=1); first at rows 1",
        ),
        "extra_array": (
            {"extra": ["[1,2]", None, "[]"]},
            0,
            "skipped 2 malformed rows (not_object=2); first at rows 1, 3",
        ),
        "extra_all_bad": ({"extra": ["5"] * 3}, 2, "no valid event in"),
        "extra_int": ({"extra": pa.array([5] * 3, pa.int64())}, 2, "not a recording: column extra is int64"),
        "price_decimal": (
            {"price": pa.array([decimal.Decimal("1.5")] * 3, pa.decimal128(5, 2))},
            2,
            "not a recording: column price is decimal128(5, 2), not double",
        ),
        "pid_binary": ({"product_id": pa.array([b"\xff\xfe"] * 3, pa.binary())}, 2, "column product_id is binary"),
    }
    async with FakeP2() as p2:
        for name, (columns, expected_rc, message) in files.items():
            path = hostile_parquet(tmp_path, name, **columns)
            for opts in ([], ["--keep-timestamps", "--latency-ms=3"]):
                rc = await replay("--file", str(path), "--port", str(p2.port), "--rate=0", *opts)
                captured = capsys.readouterr()
                assert rc == expected_rc, (name, opts, captured)
                assert "Traceback" not in captured.err and message in captured.out + captured.err, (name, captured)
                if rc == 2:
                    assert captured.err.count("\n") == 1, (name, opts, captured.err)
