"""RECORD_FORMAT=parquet: rotating files DuckDB reads whole; rows count as written once their file is closed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

import duckdb
import orjson
import pytest

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.recorder import RecorderConsumer
from mercurystream.p2.recorder_parquet import HEADER, ParquetFiles, ParquetRecordWriter
from mercurystream.shared.framing import FrameDecoder, decode_object, encode_frames
from mercurystream.shared.parquet import COLUMNS
from tests.p2.support import counted, eventually, lines_batch

BIN = Path(sys.executable).parent


def event(i: int) -> dict:
    us = 1_764_940_000_000_000 + i * 997
    return {
        "type": "match",
        "product_id": ("BTC-USD", "ETH-USD", "SOL-USD")[i % 3],
        "price": 60000.25 + i,
        "last_size": 0.5,
        "time": f"2026-12-05T13:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:06d}Z",
        "trade_id": 10_000 + i,
        "sequence": 50_000 + i,
        "side": ("buy", "sell")[i % 2],
        "ingest_ts_ms": us // 1000,
        "ingest_ts_us": us,
    }


def recorded(i: int) -> bytes:
    return orjson.dumps({**event(i), "recv_ts_ms": 1, "recv_ts_us": 1000 + i})


def batch(start: int, n: int) -> Batch:
    lines = [recorded(i) for i in range(start, start + n)]
    return lines_batch(lines)


def rows(pattern: str | Path) -> list[dict]:
    cur = duckdb.connect().execute(f"SELECT * FROM read_parquet('{pattern}') ORDER BY trade_id")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def make(tmp_path: Path, **kw: object) -> tuple[RecorderConsumer, Bus, P2Metrics, Path]:
    base = tmp_path / "rec" / "btcusd.jsonl"
    settings = P2Settings(RECORD=True, RECORD_FILE=base, RECORD_FORMAT="parquet", **kw)
    bus = Bus()
    metrics = P2Metrics()
    return RecorderConsumer(bus, settings, metrics), bus, metrics, base.parent


async def test_every_row_is_in_a_closed_file_after_stop(tmp_path: Path) -> None:
    rec, bus, metrics, folder = make(tmp_path)
    await rec.start()
    for i in range(40):
        bus.publish(batch(i * 25, 25))
        if i % 10 == 0:
            await asyncio.sleep(0)
    await rec.stop()
    files = sorted(folder.iterdir())
    assert len(files) == 1 and re.fullmatch(r"btcusd\.\d{8}T\d{6}Z-1\.parquet", files[0].name)
    got = rows(files[0])
    assert len(got) == 1000
    for row, i in zip(got, range(1000), strict=True):
        expected = orjson.loads(recorded(i))
        assert {n: row[n] for n, _ in COLUMNS} == {n: expected.get(n) for n, _ in COLUMNS}
    assert counted(metrics, "mercurystream_recorded_events_total") == 1000
    status = rec.status()
    assert status.startswith(f"RECORDER   | file={files[0]} written=1000 errors=0 drops=0 format=parquet")
    assert status.endswith("rejected=0 files=1")


async def test_rows_count_as_written_only_when_their_file_is_closed(tmp_path: Path) -> None:
    rec, bus, metrics, folder = make(tmp_path)
    await rec.start()
    bus.publish(batch(0, 10))
    await eventually(lambda: rec.writer.done == 1)
    assert [p.name.endswith(".parquet.part") for p in folder.iterdir()] == [True]
    assert rec.writer.written == 0 and counted(metrics, "mercurystream_recorded_events_total") == 0
    await rec.stop()
    assert rec.writer.written == 10 and not list(folder.glob("*.part"))


async def test_files_roll_by_size(tmp_path: Path) -> None:
    rec, bus, _, folder = make(tmp_path, RECORD_ROTATE_BYTES=1)
    rec.writer._row_group_rows = 50
    await rec.start()
    for i in range(10):
        bus.publish(batch(i * 100, 100))
        await eventually(lambda i=i: rec.writer.done == i + 1)
    await rec.stop()
    files = sorted(folder.glob("*.parquet"))
    assert len(files) == 10 == rec.writer.files
    assert [r["trade_id"] for r in rows(folder / "*.parquet")] == [10_000 + i for i in range(1000)]
    assert not list(folder.glob("*.part"))


async def test_the_oldest_closed_files_go_beyond_record_max_bytes(tmp_path: Path) -> None:
    """After each close the oldest files are removed until the rest leave room for a full open file."""
    rec, bus, metrics, folder = make(tmp_path, RECORD_ROTATE_BYTES=1, RECORD_MAX_BYTES=12_000)
    rec.writer._row_group_rows = 50
    await rec.start()
    for i in range(10):
        bus.publish(batch(i * 100, 100))
        await eventually(lambda i=i: rec.writer.done == i + 1)
        assert sum(f.stat().st_size for f in folder.glob("*.parquet")) <= 12_000 - 1
    await rec.stop()
    kept = sorted(folder.glob("*.parquet"))
    assert 0 < len(kept) < 10 and rec.writer.pruned == 10 - len(kept)
    assert counted(metrics, "mercurystream_recordings_pruned_total") == rec.writer.pruned
    assert counted(metrics, "mercurystream_recorded_events_total") == 1000
    assert [r["trade_id"] for r in rows(folder / "*.parquet")] == [
        10_000 + i for i in range(1000 - 100 * len(kept), 1000)
    ]


async def test_files_roll_by_time_while_idle(tmp_path: Path) -> None:
    rec, bus, _, folder = make(tmp_path, RECORD_ROTATE_S=0.2)
    await rec.start()
    bus.publish(batch(0, 5))
    await eventually(lambda: rec.writer.files == 1)
    assert len(rows(folder / "*.parquet")) == 5 and not list(folder.glob("*.part"))
    bus.publish(batch(5, 5))
    await rec.stop()
    assert rec.writer.files == 2 and len(rows(folder / "*.parquet")) == 10


async def test_lines_with_no_row_are_counted_by_reason(tmp_path: Path) -> None:
    rec, bus, metrics, folder = make(tmp_path)
    drifted = orjson.dumps({**event(99), "price": "60000"})
    lines = [recorded(0), b"not json", drifted, orjson.dumps({"type": "match"}), recorded(1)]
    await rec.start()
    bus.publish(lines_batch(lines))
    await rec.stop()
    assert len(rows(folder / "*.parquet")) == 2
    assert rec.writer.rejected == 3
    for reason in ("invalid_json", "wrong_type", "missing_field"):
        assert counted(metrics, "mercurystream_recorder_rejected_total", reason=reason) == 1
    assert "rejected=3" in rec.status()


async def test_a_failed_open_is_counted_and_recording_resumes(tmp_path: Path) -> None:
    rec, bus, metrics, folder = make(tmp_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_bytes(b"")  # the folder is a file: nothing can be created in it
    await rec.start()
    bus.publish(batch(0, 4))
    await eventually(lambda: rec.writer.errors == 4)
    assert counted(metrics, "mercurystream_recorder_errors_total") == 4
    folder.unlink()
    bus.publish(batch(4, 3))
    await rec.stop()
    assert [r["trade_id"] for r in rows(folder / "*.parquet")] == [10_004, 10_005, 10_006]
    assert rec.writer.written == 3


def test_a_message_with_one_uncommon_line_is_judged_line_by_line(tmp_path: Path) -> None:
    """One decode serves a message of common lines; one null or bad line sends it to the exact path."""
    rejected: dict[str, int] = {}
    files = ParquetFiles(
        tmp_path / "r.jsonl", rotate_bytes=1 << 30, rotate_s=60, on_rejected=lambda r, k: rejected.update({r: k})
    )
    files.write_message(b"".join(recorded(i) for i in range(3)), [len(recorded(i)) for i in range(3)])
    nulled = orjson.dumps({**event(3), "side": None, "recv_ts_ms": 1})
    lines = [recorded(4), nulled, b"[1]", recorded(5)]
    files.write_message(b"".join(lines), list(map(len, lines)))
    files.close()
    got = rows(tmp_path / "*.parquet")
    assert [r["trade_id"] for r in got] == [10_000, 10_001, 10_002, 10_003, 10_004, 10_005]
    assert got[3]["side"] is None and orjson.loads(got[3]["extra"]) == {"side": None}
    assert files.written == 6 and files.rejected == 1 and rejected == {"not_object": 1}


def test_a_failed_close_loses_that_file_counted_and_leaves_no_part(tmp_path: Path) -> None:
    errors: list[int] = []
    files = ParquetFiles(tmp_path / "r.jsonl", rotate_bytes=1 << 30, rotate_s=60, on_error=errors.append)
    files.write([recorded(0), recorded(1)])
    sink = files._sink
    sink.close = lambda: (_ for _ in ()).throw(OSError("disk full"))
    files.close()
    assert files.errors == 2 and errors == [2] and files.written == 0
    assert list(tmp_path.iterdir()) == []


def test_a_dead_writer_process_counts_what_it_held_and_the_next_handoff_starts_another(tmp_path: Path) -> None:
    errors: list[int] = []
    writer = ParquetRecordWriter(tmp_path / "r.jsonl", rotate_bytes=1 << 30, rotate_s=60, on_error=errors.append)
    writer.write([[recorded(0), recorded(1), recorded(2)]])
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("*.part")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first = writer.child_pid
    os.kill(first, signal.SIGKILL)
    while writer.errors < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert errors == [3] and writer.written == 0
    writer.write([[recorded(3)]])
    assert writer.child_pid not in (None, first)
    assert writer.close(30)
    assert [r["trade_id"] for r in rows(tmp_path / "*.parquet")] == [10_003]
    assert writer.written == 1 and writer.errors == 3


def test_the_writer_process_starts_no_idle_blas_threads(tmp_path: Path) -> None:
    """pyarrow imports numpy; its OpenBLAS threads would spin on P2's cores at every start of the writer."""
    writer = ParquetRecordWriter(tmp_path / "r.jsonl", rotate_bytes=1 << 30, rotate_s=60)
    writer.start()
    try:
        pid = writer.child_pid
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"OPENBLAS_NUM_THREADS=1" in environ
        names = [(task / "comm").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir()]
        assert len(names) <= 2, names
    finally:
        assert writer.close(30)


def test_the_writer_process_closes_its_file_when_p2_is_gone(tmp_path: Path) -> None:
    """P2 killed: the pipe closes, nobody reads the reports, and the rows still end in a closed file."""
    argv = [sys.executable, "-m", "mercurystream.p2.recorder_parquet", str(tmp_path / "r.jsonl")]
    child = subprocess.Popen([*argv, "--rotate-bytes", "1000000000", "--rotate-s", "60"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        lines = [recorded(0), recorded(1)]
        message = HEADER.pack(2, sum(map(len, lines))) + array("Q", map(len, lines)).tobytes() + b"".join(lines)
        child.stdin.write(message)
        child.stdin.flush()
        child.stdout.close()
        child.stdin.close()
        assert child.wait(60) == 0, child.stderr.read().decode()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert [r["trade_id"] for r in rows(tmp_path / "*.parquet")] == [10_000, 10_001]
    assert not list(tmp_path.glob("*.part"))


def test_lines_holding_a_newline_keep_their_bounds(tmp_path: Path) -> None:
    """A JSON object may hold a raw newline between tokens: the message then carries the line lengths."""
    writer = ParquetRecordWriter(tmp_path / "r.jsonl", rotate_bytes=1 << 30, rotate_s=60)
    lines = [recorded(0), recorded(1).replace(b'"type":', b'"type":\n'), recorded(2)]
    writer.write([lines])
    assert writer.close(30)
    assert [r["trade_id"] for r in rows(tmp_path / "*.parquet")] == [10_000, 10_001, 10_002]
    assert writer.written == 3 and writer.rejected == 0


@pytest.mark.parametrize("short", [False, True], ids=["whole", "cut-short"])
def test_many_batches_go_out_whole_and_in_order_past_the_writev_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    """Lines go to the pipe in ``writev`` calls of at most ``IOV_LINES`` buffers, across batches; one
    cut short (a signal) is completed before the next, so every line keeps its bounds and its place."""
    import mercurystream.p2.recorder_parquet as module

    def cut_short(fd: int, parts: list[bytes]) -> int:
        data = b"".join(parts)
        return os.write(fd, data[: max(1, len(data) // 3)])

    if short:
        monkeypatch.setattr(module, "_os_writev", cut_short)
    writer = ParquetRecordWriter(tmp_path / "r.jsonl", rotate_bytes=1 << 30, rotate_s=60)
    n = 2 * module.IOV_LINES + 100
    lines = [recorded(i) for i in range(n)]
    writer.write([lines[i : i + 300] for i in range(0, n, 300)])
    writer.write([[recorded(n)]])
    assert writer.close(30)
    got = rows(tmp_path / "*.parquet")
    assert [r["trade_id"] for r in got] == [10_000 + i for i in range(n + 1)]
    assert [r["recv_ts_us"] for r in got] == [1000 + i for i in range(n + 1)]
    assert writer.written == n + 1 and writer.rejected == 0 and writer.errors == 0


def test_stale_part_files_are_reported_and_names_never_collide(tmp_path: Path) -> None:
    from loguru import logger

    (tmp_path / "r.20261205T000000Z-1.parquet.part").write_bytes(b"junk")
    seen: list[str] = []
    sink_id = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING")
    try:
        writer = ParquetRecordWriter(tmp_path / "r.jsonl", rotate_bytes=1, rotate_s=60)
    finally:
        logger.remove(sink_id)
    assert any("1 unfinished Parquet file" in line for line in seen)
    for i in range(3):
        writer.write([[recorded(i)]])
    assert writer.close(1)
    assert len(list(tmp_path.glob("r.*-*.parquet"))) == 3


async def test_the_handoff_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    """With the writer stuck, long lines stop the handoff at the byte bound and the bus drops, counted."""
    rec, bus, _, folder = make(tmp_path, BUS_QUEUE_EVENTS=100)
    rec.max_pending_bytes = 50_000
    gate = threading.Event()
    real_handle = rec.writer._handle

    def stuck_handle(batches: list[list[bytes]], n: int, handoffs: int, nbytes: int) -> None:
        gate.wait(30)
        real_handle(batches, n, handoffs, nbytes)

    rec.writer._handle = stuck_handle  # the Parquet writer's step (it never calls _write)
    long_lines = [orjson.dumps({**event(i), "pad": "x" * 10_000, "recv_ts_us": 1}) for i in range(40)]
    await rec.start()
    for i in range(40):
        bus.publish(lines_batch([long_lines[i]]))
        await asyncio.sleep(0.002)
    await eventually(lambda: rec.writer.pending_bytes > 0)
    assert rec.writer.pending_bytes < 50_000 + 2 * 10_500
    assert rec.writer.pending < rec.max_pending_batches
    gate.set()
    await rec.stop()
    assert rec.writer.written + rec.subscription.dropped + rec.subscription.depth == 40
    assert rec.writer.written == len(rows(folder / "*.parquet"))


# ---------------------------------------------------------------- the real process


async def test_mercury_p2_records_parquet_and_sigterm_loses_no_row(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORT", "METRICS_PORT", "HOST", "RECORD"))}
    env.update(
        HOST="127.0.0.1",
        PORT="0",
        METRICS_PORT="0",
        LOG_LEVEL="INFO",
        STATUS_INTERVAL_S="0.2",
        RECORD="true",
        RECORD_FORMAT="parquet",
        RECORD_FILE=str(tmp_path / "rec" / "live.jsonl"),
        RECORD_ROTATE_S="0.5",
        INCIDENTS_DIR=str(tmp_path / "incidents"),
        DRIFT_SAMPLE_FILE=str(tmp_path / "drift.jsonl"),
        INCIDENT_CHARTS="false",
        # The whole burst fits the recorder's queue (30,000 events are about 25 MB by Batch.nbytes):
        # this test is about the files and SIGTERM, not the queue's drop-oldest (tests/p2/test_bus.py).
        BUS_QUEUE_BYTES=str(64 << 20),
    )
    n = 30_000
    proc = await asyncio.create_subprocess_exec(str(BIN / "mercury-p2"), env=env, stderr=asyncio.subprocess.PIPE)
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
        for start in range(0, n, 1000):
            writer.write(encode_frames([orjson.dumps(event(i)) for i in range(start, start + 1000)]))
            await writer.drain()
            if start == n // 2:
                await asyncio.sleep(1.0)  # the first file rolls by time meanwhile
        decoder = FrameDecoder()
        acks: list[dict] = []
        while not acks or acks[-1]["ack"] < n:
            acks.extend(decode_object(p)[0] for p in decoder.feed(await asyncio.wait_for(reader.read(65536), 30)))
        proc.send_signal(signal.SIGTERM)
        while await asyncio.wait_for(reader.read(65536), 30):
            pass
        writer.close()
        err.append((await asyncio.wait_for(proc.stderr.read(), 60)).decode())
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = "".join(err)
    assert code == 0, log
    assert "Traceback" not in log
    assert "format=parquet" in log
    folder = tmp_path / "rec"
    assert not list(folder.glob("*.part"))
    assert len(list(folder.glob("live.*.parquet"))) >= 2
    got = rows(folder / "live.*.parquet")
    assert len(got) == n
    for row, i in zip(got, range(n), strict=True):
        assert {name: row[name] for name in event(i)} == event(i)
        assert row["recv_ts_us"] >= row["ingest_ts_us"] - 10_000_000 and row["recv_ts_ms"] == row["recv_ts_us"] // 1000


@pytest.mark.parametrize("value", ["csv", "PARQUET "])
def test_a_bad_record_format_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ValueError, match="RECORD_FORMAT"):
        P2Settings(RECORD_FORMAT=value)


def test_p2_itself_never_loads_pyarrow(tmp_path: Path) -> None:
    """The rows are built in the writer process: P2 records Parquet without pyarrow in its memory."""
    code = f"""
import asyncio, sys
assert "pyarrow" not in sys.modules
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.recorder import RecorderConsumer
from tests.p2.support import lines_batch

async def main():
    settings = P2Settings(RECORD=True, RECORD_FILE={str(tmp_path / "r.jsonl")!r}, RECORD_FORMAT="parquet")
    bus = Bus()
    rec = RecorderConsumer(bus, settings, P2Metrics())
    await rec.start()
    bus.publish(lines_batch({[recorded(i) for i in range(10)]!r}))
    await rec.stop()
    print(rec.writer.written, "pyarrow" in sys.modules)

asyncio.run(main())
"""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["10", "False"]
