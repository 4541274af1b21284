"""The recorder: exact JSONL off the loop, bounded handoff, counted errors, flushed on stop."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from mercurystream.p2.batch import Batch
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumer import SyncConsumers
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.recorder import JsonlWriter, RecorderConsumer
from mercurystream.shared.recording import closed_files, file_stem
from tests.p2.support import counted, eventually


def batch(start: int, n: int) -> Batch:
    return Batch.of_events([{"i": i, "recv_ts_ms": 1, "recv_ts_us": 1000} for i in range(start, start + n)])


def make(tmp_path: Path, **kw: object) -> tuple[RecorderConsumer, Bus, P2Metrics, Path]:
    path = tmp_path / "deep" / "dir" / "rec.jsonl"
    settings = P2Settings(RECORD=True, RECORD_FILE=path, **kw)
    bus = Bus()
    metrics = P2Metrics()
    return RecorderConsumer(bus, settings, metrics), bus, metrics, path


async def test_every_line_is_written_in_order_and_flushed_on_stop(tmp_path: Path) -> None:
    rec, bus, metrics, path = make(tmp_path)
    await rec.start()
    for i in range(50):
        bus.publish(batch(i * 7, 7))
        if i % 10 == 0:
            await asyncio.sleep(0)
    await rec.stop()
    expected = b"".join(b'{"i":%d,"recv_ts_ms":1,"recv_ts_us":1000}\n' % i for i in range(350))
    assert path.read_bytes() == expected
    assert rec.writer.written == 350
    assert counted(metrics, "mercurystream_recorded_events_total") == 350
    assert rec.status() == f"RECORDER   | file={path} written=350 errors=0 drops=0 format=jsonl"


async def test_lines_reach_the_file_while_running(tmp_path: Path) -> None:
    rec, bus, _, path = make(tmp_path)
    await rec.start()
    bus.publish(batch(0, 3))
    await eventually(lambda: path.exists() and path.read_bytes().count(b"\n") == 3)
    await rec.stop()


async def test_appends_to_an_existing_recording(tmp_path: Path) -> None:
    rec, bus, _, path = make(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"old":1}\n')
    await rec.start()
    bus.publish(batch(0, 1))
    await rec.stop()
    assert path.read_bytes().splitlines()[0] == b'{"old":1}'
    assert len(path.read_bytes().splitlines()) == 2


async def test_a_write_error_is_counted_and_recording_resumes(tmp_path: Path) -> None:
    rec, bus, metrics, path = make(tmp_path)
    path.parent.mkdir(parents=True)
    path.mkdir()  # opening a directory as the file fails
    await rec.start()
    bus.publish(batch(0, 4))
    await eventually(lambda: rec.writer.errors == 4)
    assert counted(metrics, "mercurystream_recorder_errors_total") == 4
    path.rmdir()
    bus.publish(batch(4, 2))
    await eventually(lambda: rec.writer.written == 2)
    await rec.stop()
    assert path.read_bytes().splitlines() == batch(4, 2).lines
    assert "errors=4" in rec.status()


def stuck_recorder(tmp_path: Path, max_pending_batches: int) -> tuple[RecorderConsumer, Bus, Path, threading.Event]:
    """A recorder whose writer thread blocks in every write until the returned gate is set."""
    path = tmp_path / "rec.jsonl"
    settings = P2Settings(RECORD=True, RECORD_FILE=path, BUS_QUEUE_EVENTS=100)
    bus = Bus()
    rec = RecorderConsumer(bus, settings, P2Metrics(), max_pending_batches=max_pending_batches)
    gate = threading.Event()
    real_write = rec.writer._write

    def stuck_write(batches: list[list[bytes]], n: int) -> None:
        gate.wait(30)
        real_write(batches, n)

    rec.writer._write = stuck_write
    return rec, bus, path, gate


async def test_a_stalled_disk_makes_the_bus_drop_oldest_not_the_loop_wait(tmp_path: Path) -> None:
    """With the writer stuck, the handoff stops at its bound and the bus drops on this subscription only."""
    rec, bus, path, gate = stuck_recorder(tmp_path, max_pending_batches=2)
    other = bus.subscribe("other", 1_000_000)
    await rec.start()
    t0 = time.perf_counter()
    for i in range(100):
        bus.publish(batch(i * 10, 10))
        await asyncio.sleep(0)
    assert time.perf_counter() - t0 < 5
    await eventually(lambda: rec.subscription.depth == 100)
    assert rec.subscription.dropped > 0
    assert other.dropped == 0 and other.depth == 1000
    gate.set()
    await rec.stop()
    written = rec.writer.written
    assert written + rec.subscription.dropped == 1000
    lines = path.read_bytes().splitlines()
    assert len(lines) == written
    assert lines[-1] == b'{"i":999,"recv_ts_ms":1,"recv_ts_us":1000}'


async def test_the_recorder_shares_the_consumers_task_and_polls_while_its_writer_is_full(tmp_path: Path) -> None:
    """At the writer's bound the shared task looks again every millisecond instead of spinning."""
    rec, bus, path, gate = stuck_recorder(tmp_path, max_pending_batches=1)
    assert not rec.waits
    calls = 0
    real_process = rec.process_pending

    def counted() -> int:
        nonlocal calls
        calls += 1
        return real_process()

    rec.process_pending = counted
    group = SyncConsumers([rec])
    await group.start()
    for i in range(30):
        bus.publish(batch(i * 10, 10))
        await asyncio.sleep(0)
    await eventually(lambda: rec.writer.pending == 1 and rec.subscription.depth > 0)
    before = calls
    await asyncio.sleep(0.2)
    assert calls - before < 400  # about one look a millisecond, not a busy loop
    gate.set()
    await group.stop()
    assert rec.writer.written + rec.subscription.dropped == 300
    assert path.read_bytes().splitlines()[-1] == b'{"i":299,"recv_ts_ms":1,"recv_ts_us":1000}'


def test_writer_joins_batches_and_closes_without_a_loop(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    writer = JsonlWriter(path)
    writer.start()
    writer.submit([b"a", b"b"])
    writer.submit([])
    writer.submit([b"c"])
    assert writer.close(timeout_s=10)
    assert path.read_bytes() == b"a\nb\nc\n"
    assert (writer.submitted, writer.done, writer.pending) == (3, 3, 0)
    assert writer.written == 3


def test_an_unexpected_error_is_counted_and_the_thread_survives(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    writer = JsonlWriter(path)
    writer.start()
    writer.submit([b"ok"])
    writer.submit(["not bytes"])  # a bug upstream must cost its batch, not the writer
    assert _wait(lambda: writer.done == 2)
    writer.submit([b"after"])
    assert writer.close(timeout_s=10)
    assert writer.errors in (1, 2)  # the bad batch alone, or with the good one if they shared a write
    assert writer.written + writer.errors == 3
    assert path.read_bytes().endswith(b"after\n")


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_closing_a_writer_that_never_started_is_fine(tmp_path: Path) -> None:
    assert JsonlWriter(tmp_path / "never.jsonl").close(1)
    assert not (tmp_path / "never.jsonl").exists()


def test_write_does_the_threads_step_on_the_callers_thread_and_close_closes(tmp_path: Path) -> None:
    path = tmp_path / "sync.jsonl"
    writer = JsonlWriter(path)
    writer.write([[b"a", b"b"], [], [b"c"]])
    assert writer.written == 3
    assert writer.close(1)
    assert path.read_bytes() == b"a\nb\nc\n"


# --- rolling and the recording's byte budget (RECORD_ROTATE_BYTES, RECORD_MAX_BYTES) ------------------

ROLLED = re.compile(r"rec\.\d{8}T\d{6}Z-\d+\.jsonl")


def recording_lines(path: Path) -> list[bytes]:
    """Every line of the recording: its closed files oldest first, then the open file."""
    files = [Path(e.path) for e in closed_files(file_stem(path))] + ([path] if path.exists() else [])
    return [line for f in files for line in f.read_bytes().splitlines()]


def test_the_file_rolls_once_it_holds_rotate_bytes_and_no_line_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    writer = JsonlWriter(path, rotate_bytes=100, max_bytes=10**9)
    lines = [b'{"i":%d}' % i for i in range(60)]
    for i in range(0, 60, 7):
        writer.write([lines[i : i + 7]])
    assert writer.close(1)
    closed = closed_files(file_stem(path))
    assert len(closed) >= 4 and all(ROLLED.fullmatch(e.name) for e in closed)
    assert all(100 <= os.stat(e.path).st_size < 200 for e in closed)  # a roll follows the write that reached it
    assert recording_lines(path) == lines
    assert writer.written == 60 and writer.pruned == 0


def test_the_oldest_closed_files_go_so_the_recording_fits_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    pruned: list[int] = []
    writer = JsonlWriter(path, rotate_bytes=100, max_bytes=450, on_pruned=pruned.append)
    lines = [b'{"i":%d}' % i for i in range(200)]
    for i in range(0, 200, 10):
        writer.write([lines[i : i + 10]])
        size = sum(os.stat(e.path).st_size for e in closed_files(file_stem(path)))
        assert size <= 450 - 100  # room is left for a full open file
    assert writer.close(1)
    kept = recording_lines(path)
    assert kept == lines[-len(kept) :] and len(kept) >= 30  # the newest lines, in order, nothing between
    assert sum(pruned) == writer.pruned > 0
    assert writer.written == 200


def test_a_roll_that_cannot_rename_keeps_appending_to_the_same_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "rec.jsonl"

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", refuse)
    writer = JsonlWriter(path, rotate_bytes=50, max_bytes=10**9)
    lines = [b'{"i":%d}' % i for i in range(40)]
    for i in range(0, 40, 5):
        writer.write([lines[i : i + 5]])
    assert writer.close(1)
    assert path.read_bytes().splitlines() == lines and closed_files(file_stem(path)) == []
    assert (writer.written, writer.errors) == (40, 0)


async def test_the_recorder_rolls_and_counts_what_it_prunes(tmp_path: Path) -> None:
    rec, bus, metrics, path = make(tmp_path, RECORD_ROTATE_BYTES=2000, RECORD_MAX_BYTES=5000)
    await rec.start()
    for i in range(20):
        bus.publish(batch(i * 50, 50))
        await eventually(lambda i=i: rec.writer.done == i + 1 or rec.writer.written >= (i + 1) * 50)
    await rec.stop()
    assert counted(metrics, "mercurystream_recorded_events_total") == 1000
    assert counted(metrics, "mercurystream_recordings_pruned_total") == rec.writer.pruned > 0
    kept = recording_lines(path)
    assert kept[-1] == b'{"i":999,"recv_ts_ms":1,"recv_ts_us":1000}'
    assert sum(os.stat(e.path).st_size for e in closed_files(file_stem(path))) <= 3000


@pytest.mark.parametrize(("rotate", "limit"), [(100, 199), (128 << 20, 200 << 20)])
def test_a_budget_without_room_for_a_closed_file_is_a_configuration_error(rotate: int, limit: int) -> None:
    with pytest.raises(ValidationError, match="RECORD_MAX_BYTES"):
        P2Settings(RECORD_ROTATE_BYTES=rotate, RECORD_MAX_BYTES=limit)
    assert 2 * rotate == P2Settings(RECORD_ROTATE_BYTES=rotate, RECORD_MAX_BYTES=2 * rotate).RECORD_MAX_BYTES


# --- a full disk: whole lines only, counted exactly, resumed (issue 13, D4) ------------------------


def lines_of(n: int, start: int = 0, width: int = 40) -> list[bytes]:
    return [b'{"i":%d,"pad":"%s"}' % (i, b"x" * width) for i in range(start, start + n)]


class FullDisk:
    """``os.write`` on a disk with ``room`` bytes left: writes short, then fails with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, fd: int, data) -> int:
        import errno
        import os

        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        k = os.write(fd, bytes(data[: self.room]))
        self.room -= k
        return k


def whole_lines(path: Path) -> list[int]:
    import orjson

    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "torn last line"
    return [orjson.loads(line)["i"] for line in data.splitlines()]


def test_a_full_disk_leaves_whole_lines_counts_exactly_and_resumes(tmp_path: Path, monkeypatch) -> None:
    from mercurystream.p2 import recorder as recorder_module

    path = tmp_path / "rec.jsonl"
    metrics = P2Metrics()
    writer = JsonlWriter(path, on_written=metrics.recorded_total.inc, on_error=metrics.recorder_errors_total.inc)
    writer.write([lines_of(10)])
    disk = FullDisk(room=1000)  # about 17 of the next 2,000 lines fit, the 18th is cut mid-line
    monkeypatch.setattr(recorder_module, "_os_write", disk)
    writer.write([lines_of(2000, start=10)])
    kept = whole_lines(path)
    assert kept == list(range(10 + writer.written - 10))
    assert 10 < writer.written < 40 and writer.errors == 2010 - writer.written
    writer.write([lines_of(5, start=3000)])  # still full: nothing written, all five counted
    assert writer.errors == 2015 - writer.written and whole_lines(path) == kept
    disk.room = 10**9  # space returns: the next batch follows the last whole line
    writer.write([lines_of(3, start=5000)])
    assert whole_lines(path) == [*kept, 5000, 5001, 5002]
    assert writer.written + writer.errors == 2018
    assert counted(metrics, "mercurystream_recorder_errors_total") == writer.errors
    assert counted(metrics, "mercurystream_recorded_events_total") == writer.written
    assert writer.close(1)


def test_a_full_disk_on_the_final_line_break_loses_only_the_last_line(tmp_path: Path, monkeypatch) -> None:
    from mercurystream.p2 import recorder as recorder_module

    path = tmp_path / "rec.jsonl"
    writer = JsonlWriter(path)
    lines = lines_of(3)
    monkeypatch.setattr(recorder_module, "_os_write", FullDisk(room=len(b"\n".join(lines))))
    writer.write([lines])
    assert whole_lines(path) == [0, 1] and (writer.written, writer.errors) == (2, 1)


def test_when_the_cut_fails_the_next_open_cuts_or_a_new_file_is_started(tmp_path: Path, monkeypatch) -> None:
    import errno

    from mercurystream.p2 import recorder as recorder_module

    def no_truncate(fd, size):
        raise OSError(errno.EIO, "I/O error")

    path = tmp_path / "rec.jsonl"
    writer = JsonlWriter(path)
    writer.write([lines_of(2)])
    monkeypatch.setattr(recorder_module, "_os_write", FullDisk(room=60))
    monkeypatch.setattr(recorder_module, "_os_ftruncate", no_truncate)
    writer.write([lines_of(3, start=2)])
    assert (writer.written, writer.errors) == (3, 2)  # the cut failed, the file is left torn for now
    assert not path.read_bytes().endswith(b"\n")
    monkeypatch.undo()
    writer.write([lines_of(1, start=9)])  # reopened: the torn line is cut first
    assert whole_lines(path) == [0, 1, 2, 9]

    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"i":1}\n{"i":2,"pa')
    monkeypatch.setattr(recorder_module, "_os_ftruncate", no_truncate)
    other = JsonlWriter(torn)
    other.write([lines_of(1, start=7)])
    assert other.path != torn and other.path.name.startswith("torn.") and other.path.suffix == ".jsonl"
    assert whole_lines(other.path) == [7] and torn.read_bytes() == b'{"i":1}\n{"i":2,"pa'
    assert other.close(1)


def test_a_real_full_filesystem_keeps_whole_lines_and_recording_resumes(small_disk: Path) -> None:
    path = small_disk / "rec.jsonl"
    filler = small_disk / "filler"
    filler.write_bytes(b"f" * 232_000)
    writer = JsonlWriter(path)
    writer.write([lines_of(2000)])  # about 100 KB into the 24 KB left
    first = whole_lines(path)
    assert first == list(range(writer.written)) and 0 < writer.written < 2000
    assert writer.errors == 2000 - writer.written
    filler.unlink()
    writer.write([lines_of(10, start=5000)])
    assert whole_lines(path) == [*first, *range(5000, 5010)]
    assert writer.written + writer.errors == 2010
    assert writer.close(1)
