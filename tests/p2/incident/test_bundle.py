"""Bundle writing: layout, byte-exact events, meta, atomicity, failures counted, the chart subprocess."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from loguru import logger

from mercurystream.p2.detectors import DUPLICATE, LATENCY_SPIKE, Anomaly
from mercurystream.p2.flight_recorder import Capture, FlightRecorder
from mercurystream.p2.incident import bundle as bundle_mod
from mercurystream.p2.incident.bundle import BundleWriter, build_meta, prune_bundles, write_bundle
from mercurystream.p2.incident.report import bundles_under
from mercurystream.p2.metrics import P2Metrics


def event_line(tid: int, pid: str = "BTC-USD", lat_us: int = 400) -> bytes:
    ingest = 1_714_564_800_000_000 + tid * 1000
    return orjson.dumps(
        {
            "type": "match",
            "product_id": pid,
            "price": 60000.5 + tid,
            "last_size": 0.01,
            "time": f"2024-05-01T12:00:00.{tid:06d}Z",
            "trade_id": tid,
            "ingest_ts_ms": ingest // 1000,
            "ingest_ts_us": ingest,
        }
    )[:-1] + b',"recv_ts_ms":%d,"recv_ts_us":%d}' % ((ingest + lat_us) // 1000, ingest + lat_us)


def make_capture(pre=4, post=2, trigger_at=5, n=10, anomaly=None, complete=True) -> Capture:
    fr = FlightRecorder(pre, post, 0, wall_clock=lambda: 1_714_564_803.25)
    batch = [event_line(k) for k in range(1, n + 1)]
    a = anomaly or Anomaly(DUPLICATE, trigger_at, 1, "BTC-USD", {"trade_id": trigger_at + 1})
    res = fr.feed(batch, [a])
    cap = res.started[0]
    cap.context = {
        "counters_at_trigger": {"processed": trigger_at + 1, DUPLICATE: 1},
        "config": {"FLIGHT_PRE_EVENTS": pre},
    }
    if not complete:
        fr.finalize()
    return cap


def wait_until(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_bundle_layout_bytes_and_meta(tmp_path):
    cap = make_capture()
    path = write_bundle(tmp_path / "incidents", cap)
    assert path == tmp_path / "incidents" / cap.id
    assert sorted(p.name for p in path.iterdir()) == ["events.jsonl", "meta.json", "report.md"]
    expected = b"".join(line + b"\n" for line in [event_line(k) for k in range(3, 9)])
    assert (path / "events.jsonl").read_bytes() == expected
    meta = orjson.loads((path / "meta.json").read_bytes())
    assert meta["incident_id"] == cap.id
    assert meta["type"] == DUPLICATE
    assert (meta["pre_events"], meta["post_events"], meta["total_events"], meta["trigger_line"]) == (4, 2, 6, 4)
    assert meta["complete"] is True
    assert meta["triggered_at"] == "2024-05-01T12:00:03.250000Z"
    assert meta["affected_symbols"] == ["BTC-USD"]
    assert meta["counters_at_trigger"] == {"processed": 6, DUPLICATE: 1}
    assert meta["config"] == {"FLIGHT_PRE_EVENTS": 4}
    assert meta["suppressed_triggers"] == []
    assert "trade_id 6" in meta["reason"]
    trigger = orjson.loads((path / "events.jsonl").read_bytes().splitlines()[meta["trigger_line"] - 1])
    assert trigger["trade_id"] == 6
    report = (path / "report.md").read_text()
    assert f"--file {path / 'events.jsonl'} --keep-timestamps --rate 0" in report
    assert not [p for p in (tmp_path / "incidents").iterdir() if p.name.startswith(".")]


def test_incomplete_capture_is_marked_in_meta(tmp_path):
    cap = make_capture(post=50, complete=False)
    meta = orjson.loads((write_bundle(tmp_path, cap) / "meta.json").read_bytes())
    assert meta["complete"] is False
    assert (meta["post_events"], meta["post_target"]) == (4, 50)


def test_latency_spike_affected_symbols_come_from_slow_events():
    fr = FlightRecorder(10, 0, 0)
    batch = [event_line(1, "BTC-USD"), event_line(2, "ETH-USD", lat_us=250_000), event_line(3, "SOL-USD")]
    a = Anomaly(LATENCY_SPIKE, 2, 1, None, {"threshold_ms": 100.0, "run_p99_ms": [250.0], "p99_ms": 250.0})
    cap = fr.feed(batch, [a]).started[0]
    assert build_meta(cap)["affected_symbols"] == ["ETH-USD"]


def test_failure_mid_write_leaves_no_bundle_and_is_counted(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod, "render_report", boom)
    incidents = tmp_path / "incidents"
    with pytest.raises(OSError):
        write_bundle(incidents, make_capture())
    assert list(incidents.iterdir()) == []

    metrics = P2Metrics()
    writer = BundleWriter(incidents, metrics, chart=False)
    writer.start()
    try:
        assert writer.submit(make_capture())
        assert writer.wait_idle(30)
    finally:
        assert writer.stop(30)
    assert (writer.errors, writer.written) == (1, 0)
    assert metrics.registry.get_sample_value("mercurystream_incident_write_errors_total") == 1.0
    assert list(incidents.iterdir()) == []


def test_rename_failure_leaves_no_final_dir(tmp_path, monkeypatch):
    def no_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(bundle_mod.os, "rename", no_rename)
    cap = make_capture()
    with pytest.raises(OSError):
        write_bundle(tmp_path, cap)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_dirs_are_ignored_by_readers(tmp_path):
    good = write_bundle(tmp_path, make_capture())
    stale = tmp_path / ".tmp_20240501_120000_deadbeef_x1"
    stale.mkdir()
    (stale / "meta.json").write_text("{}")
    assert bundles_under(tmp_path) == [good]


def test_unwritable_incidents_dir_is_counted_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    metrics = P2Metrics()
    writer = BundleWriter(blocker / "incidents", metrics, chart=False)
    writer.start()
    try:
        writer.submit(make_capture())
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
    assert writer.errors == 1
    assert metrics.registry.get_sample_value("mercurystream_incident_write_errors_total") == 1.0


def test_writer_counts_bundles_by_type(tmp_path):
    metrics = P2Metrics()
    writer = BundleWriter(tmp_path, metrics, chart=False)
    try:
        writer.submit(make_capture())
        writer.submit(make_capture())
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
    assert writer.written == 2 and writer.written_by_type == {DUPLICATE: 2}
    assert metrics.registry.get_sample_value("mercurystream_incidents_total", {"type": DUPLICATE}) == 2.0
    assert writer.last_path is not None and writer.last_path.parent == tmp_path


def test_too_many_pending_bundles_are_refused_and_counted(tmp_path, monkeypatch):
    gate = threading.Event()
    real = bundle_mod.write_bundle

    def slow(*args, **kwargs):
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "write_bundle", slow)
    writer = BundleWriter(tmp_path, P2Metrics(), chart=False, max_pending=2)
    try:
        assert writer.submit(make_capture())
        assert writer.submit(make_capture())
        assert not writer.submit(make_capture())
        gate.set()
        assert writer.wait_idle(30)
    finally:
        gate.set()
        writer.stop(30)
    assert (writer.written, writer.errors) == (2, 1)


def fake_chart(script: str):
    def command(bundle_dir: Path) -> list[str]:
        return [sys.executable, "-c", script, str(bundle_dir)]

    return command


def test_chart_renderer_output_is_linked_from_the_report(tmp_path):
    script = (
        "import sys, pathlib; d = pathlib.Path(sys.argv[1]); assert (d / 'meta.json').is_file();"
        "(d / 'chart.png').write_bytes(b'png')"
    )
    path = write_bundle(tmp_path, make_capture(), chart=fake_chart(script))
    assert (path / "chart.png").read_bytes() == b"png"
    assert "![" in (path / "report.md").read_text() and "(chart.png)" in (path / "report.md").read_text()


@pytest.mark.parametrize(
    ("script", "timeout"),
    [("import sys; sys.exit('renderer broke')", 30.0), ("import time; time.sleep(30)", 0.5)],
)
def test_failing_or_slow_chart_still_writes_the_bundle(tmp_path, script, timeout):
    path = write_bundle(tmp_path, make_capture(), chart=fake_chart(script), chart_timeout_s=timeout)
    assert not (path / "chart.png").exists()
    assert "chart.png" not in (path / "report.md").read_text()
    assert (path / "meta.json").is_file()


def test_missing_chart_module_means_no_chart(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "chart_available", lambda: False)
    writer = BundleWriter(tmp_path, None, chart=True)
    try:
        writer.submit(make_capture())
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
    assert writer.written == 1 and not (writer.last_path / "chart.png").exists()


def test_p2_never_imports_matplotlib(tmp_path):
    assert bundle_mod.chart_command(tmp_path) == [sys.executable, "-m", bundle_mod.CHART_MODULE, str(tmp_path)]
    code = (
        "import sys, mercurystream.p2.forensics, mercurystream.p2.incident.bundle;sys.exit('matplotlib' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_drift_samples_are_appended_off_the_loop(tmp_path):
    metrics = P2Metrics()
    target = tmp_path / "sub" / "drift.jsonl"
    writer = BundleWriter(tmp_path / "inc", metrics, drift_file=target, chart=False)
    try:
        writer.append_drift([b'{"a":1}', b'{"a":2}'])
        writer.append_drift([b'{"a":3}'])
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
    assert target.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'
    assert writer.drift_written == 3
    assert metrics.registry.get_sample_value("mercurystream_drift_samples_total") == 3.0


def test_drift_sample_write_failure_is_counted(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    writer = BundleWriter(tmp_path, None, drift_file=blocker / "drift.jsonl", chart=False)
    try:
        writer.append_drift([b"{}"])
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
    assert (writer.drift_written, writer.drift_errors) == (0, 1)


def test_stop_without_start_is_a_no_op(tmp_path):
    assert BundleWriter(tmp_path).stop(1)


DRAW = "import sys, pathlib; (pathlib.Path(sys.argv[1]) / 'chart.png').write_bytes(b'png')"


class Gate:
    """A spare-CPU gate the test opens and closes; counts how often the writer asked."""

    def __init__(self, spare: bool = False) -> None:
        self.value = spare
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.value


def test_chart_waits_for_spare_cpu_and_the_report_says_so(tmp_path):
    gate = Gate(spare=False)
    writer = BundleWriter(tmp_path, P2Metrics(), chart=fake_chart(DRAW), spare=gate, chart_poll_s=0.01)
    try:
        writer.submit(make_capture())
        assert writer.wait_idle(30)
        path = writer.last_path
        assert writer.written == 1 and writer.charts_pending == 1
        assert wait_until(lambda: gate.calls >= 3)
        assert not (path / "chart.png").exists()
        report = (path / "report.md").read_text()
        assert "Not drawn yet" in report and f"mercury-report {path}" in report and "](chart.png)" not in report
        assert "Not rendered yet" in report and "## Events by Symbol" not in report  # the summary from meta.json
        gate.value = True
        assert writer.wait_charts(30)
    finally:
        writer.stop(30)
    assert (path / "chart.png").read_bytes() == b"png"
    report = (path / "report.md").read_text()
    assert "](chart.png)" in report and "Not drawn" not in report
    assert "## Events by Symbol" in report and "Not rendered yet" not in report
    assert writer.charts_drawn == 1 and not [p for p in path.iterdir() if p.name.startswith(".")]


def test_without_a_gate_the_chart_follows_the_bundle(tmp_path):
    writer = BundleWriter(tmp_path, None, chart=fake_chart(DRAW), chart_poll_s=0.01)
    try:
        writer.submit(make_capture())
        assert writer.wait_charts(30)
    finally:
        writer.stop(30)
    assert (writer.last_path / "chart.png").is_file() and "](chart.png)" in (writer.last_path / "report.md").read_text()


def test_a_failed_deferred_chart_is_reported_and_leaves_no_partial_file(tmp_path):
    script = (
        "import sys, pathlib; d = pathlib.Path(sys.argv[1]);"
        "(d / '.chart.png.0badc0de.tmp').write_bytes(b'half'); sys.exit('renderer broke')"
    )
    writer = BundleWriter(tmp_path, None, chart=fake_chart(script), chart_poll_s=0.01)
    try:
        writer.submit(make_capture())
        assert writer.wait_charts(30)
    finally:
        writer.stop(30)
    path = writer.last_path
    assert sorted(p.name for p in path.iterdir()) == ["events.jsonl", "meta.json", "report.md"]
    report = (path / "report.md").read_text()
    assert "renderer failed" in report and "chart.png" not in report
    assert (writer.charts_failed, writer.charts_drawn) == (1, 0)


def test_charts_still_waiting_at_stop_are_not_drawn_and_reports_say_so(tmp_path):
    gate = Gate(spare=False)
    writer = BundleWriter(tmp_path, None, chart=fake_chart(DRAW), spare=gate, chart_poll_s=0.01)
    writer.submit(make_capture())
    writer.submit(make_capture())
    assert writer.wait_idle(30) and writer.charts_pending == 2
    assert writer.stop(30)
    assert writer.charts_not_drawn == 2 and writer.charts_pending == 0
    for bundle in bundles_under(tmp_path):
        assert not (bundle / "chart.png").exists()
        report = (bundle / "report.md").read_text()
        assert "P2 stopped before it had CPU to spare" in report and "Not drawn yet" not in report
        assert "## Events by Symbol" in report and "Not rendered yet" not in report


def test_bundles_queued_at_stop_are_written_without_waiting_for_a_chart(tmp_path, monkeypatch):
    gate = threading.Event()
    real = bundle_mod.write_bundle
    notes = []

    def held(incidents_dir, capture, **kwargs):
        notes.append(kwargs.get("chart_note"))
        gate.wait(30)
        return real(incidents_dir, capture, **kwargs)

    monkeypatch.setattr(bundle_mod, "write_bundle", held)
    writer = BundleWriter(tmp_path, None, chart=fake_chart(DRAW), spare=Gate(spare=True), chart_poll_s=0.01)
    writer.submit(make_capture())
    writer.submit(make_capture())
    assert wait_until(lambda: len(notes) == 1)
    stopper = threading.Thread(target=writer.stop, args=(30,))
    stopper.start()
    assert wait_until(lambda: writer._stopping)
    gate.set()
    stopper.join(30)
    assert notes == ["pending", "not_drawn"]
    assert writer.written == 2 and writer.charts_drawn == 0 and writer.charts_not_drawn == 2
    assert not any((b / "chart.png").exists() for b in bundles_under(tmp_path))


def test_too_many_waiting_charts_give_up_the_oldest(tmp_path):
    writer = BundleWriter(
        tmp_path, None, chart=fake_chart(DRAW), spare=Gate(spare=False), chart_poll_s=0.01, max_pending_charts=1
    )
    try:
        writer.submit(make_capture())
        assert writer.wait_idle(30)
        first = writer.last_path
        writer.submit(make_capture())
        assert writer.wait_idle(30)
        assert writer.charts_pending == 1 and writer.charts_not_drawn == 1
        assert "P2 stopped before" in (first / "report.md").read_text()
    finally:
        writer.stop(30)


def test_a_gate_that_raises_holds_charts_and_the_writer_goes_on(tmp_path):
    def broken() -> bool:
        raise RuntimeError("no load signal")

    writer = BundleWriter(tmp_path, None, chart=fake_chart(DRAW), spare=broken, chart_poll_s=0.01)
    try:
        writer.submit(make_capture())
        assert writer.wait_idle(30)
        time.sleep(0.1)
        writer.submit(make_capture())
        assert writer.wait_idle(30)
        assert writer.written == 2 and writer.charts_pending == 2
    finally:
        writer.stop(30)


def test_drift_samples_do_not_starve_waiting_charts(tmp_path):
    gate = Gate(spare=True)
    writer = BundleWriter(
        tmp_path, None, drift_file=tmp_path / "drift.jsonl", chart=fake_chart(DRAW), spare=gate, chart_poll_s=0.05
    )
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            writer.append_drift([b"{}"])
            time.sleep(0.001)

    flooder = threading.Thread(target=flood)
    try:
        writer.submit(make_capture())
        flooder.start()
        assert wait_until(lambda: writer.charts_drawn == 1)
    finally:
        stop.set()
        flooder.join(30)
        writer.stop(30)


def test_pretty_printed_payloads_stay_one_line_each(tmp_path):
    fr = FlightRecorder(5, 0, 0)
    pretty = b'{\n  "type": "match",\r\n  "trade_id": 2\n}'
    cap = fr.feed([event_line(1), pretty], [Anomaly(DUPLICATE, 1, 1, "BTC-USD", {"trade_id": 2})]).started[0]
    path = write_bundle(tmp_path, cap)
    rows = (path / "events.jsonl").read_bytes().splitlines()
    assert rows[0] == event_line(1)
    assert len(rows) == 2 and orjson.loads(rows[1]) == orjson.loads(pretty)


def _killed_mid_write(incidents: Path) -> Path:
    """A real leftover: a process writing a bundle is SIGKILLed between its files and the rename."""
    code = (
        "import os, signal, sys; from pathlib import Path; "
        "from tests.p2.incident.test_bundle import make_capture; "
        "from mercurystream.p2.incident import bundle; "
        "bundle.render_report = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
        "bundle.write_bundle(Path(sys.argv[1]), make_capture())"
    )
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", code, str(incidents)], cwd=root, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (left,) = [p for p in incidents.iterdir() if p.name.startswith(".tmp_")]
    assert (left / "events.jsonl").is_file() and (left / "meta.json").is_file()
    return left


def test_unfinished_bundles_left_by_a_killed_p2_are_removed_at_start_and_logged_once(tmp_path):
    incidents = tmp_path / "incidents"
    left = _killed_mid_write(incidents)
    good = write_bundle(incidents, make_capture(trigger_at=6))
    (incidents / ".tmp_not_a_dir").write_text("kept: not a directory")
    (incidents / ".tmp_link").symlink_to(good)
    (incidents / ".other").mkdir()
    (incidents / "tmp_no_dot").mkdir()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    writer = BundleWriter(incidents, chart=False)
    try:
        writer.start()
        writer.stop(30)
        writer.start()
    finally:
        writer.stop(30)
        logger.remove(sink)
    assert not left.exists()
    assert writer.leftovers_removed == 1
    assert sorted(p.name for p in incidents.iterdir()) == sorted(
        [good.name, ".tmp_not_a_dir", ".tmp_link", ".other", "tmp_no_dot"]
    )
    assert (good / "meta.json").is_file()
    said = [line for line in lines if ".tmp_" in line]
    assert len(said) == 1 and "removed 1 unfinished bundle" in said[0], lines


def test_a_temporary_dir_another_writer_is_filling_is_left_alone(tmp_path):
    incidents = tmp_path / "incidents"
    busy = incidents / ".tmp_20240501_120003_0000abcd_x"
    busy.mkdir(parents=True)
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        writer = BundleWriter(incidents, chart=False)
        writer.start()
        writer.stop(30)
        assert busy.is_dir() and writer.leftovers_removed == 0
    finally:
        os.close(fd)


def test_a_bundle_being_written_holds_its_temporary_dir_against_cleanup(tmp_path, monkeypatch):
    incidents = tmp_path / "incidents"
    seen: list[bool] = []

    def check_then_render(tmp, *args, **kwargs):
        other = BundleWriter(incidents, chart=False)
        other.start()
        other.stop(30)
        seen.append(Path(tmp).is_dir())
        return "# report"

    monkeypatch.setattr(bundle_mod, "render_report", check_then_render)
    final = write_bundle(incidents, make_capture())
    assert seen == [True] and (final / "events.jsonl").is_file()


_FILL_TO_THE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from mercurystream.p2.incident.bundle import BundleWriter
from mercurystream.p2.metrics import P2Metrics

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
metrics = P2Metrics()
writer = BundleWriter(Path(sys.argv[1]) / "inc", metrics, drift_file=Path(sys.argv[1]) / "drift.jsonl", chart=False)
writer.append_drift([b'{"n":1,"pad":"0123456789"}', b'{"n":2,"pad":"0123456789"}'])
writer.append_drift([b'{"n":3,"pad":"0123456789"}', b'{"n":4,"pad":"0123456789"}'])
writer.wait_idle(30)
writer.stop(30)
dropped = metrics.registry.get_sample_value("mercurystream_drift_samples_dropped_total", {"reason": "efbig"})
print(writer.drift_written, writer.drift_errors, dropped)
"""


def test_a_drift_write_cut_short_by_a_full_file_leaves_no_torn_line_and_is_counted(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _FILL_TO_THE_LIMIT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "2", "2.0"]
    assert (tmp_path / "drift.jsonl").read_bytes() == b'{"n":1,"pad":"0123456789"}\n{"n":2,"pad":"0123456789"}\n'
    assert "drift samples not written" in proc.stderr


def test_a_torn_last_drift_line_is_cut_before_the_next_append(tmp_path):
    target = tmp_path / "drift.jsonl"
    target.write_bytes(b'{"a":1}\n{"a":2}\n{"a":')
    metrics = P2Metrics()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    writer = BundleWriter(tmp_path / "inc", metrics, drift_file=target, chart=False)
    try:
        writer.append_drift([b'{"a":3}'])
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
        logger.remove(sink)
    assert target.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'
    assert any("torn" in line and "5 bytes" in line for line in lines), lines


def test_a_failed_cut_back_is_repaired_by_the_next_append(tmp_path, monkeypatch):
    target = tmp_path / "drift.jsonl"
    metrics = P2Metrics()
    writer = BundleWriter(tmp_path / "inc", metrics, drift_file=target, chart=False)
    real_write, real_truncate = os.write, os.ftruncate
    failing = {"write": True, "truncate": True}

    def half_then_enospc(fd, data):
        if failing.pop("write", False):
            real_write(fd, bytes(data[: len(data) // 2 + 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def truncate_fails_once(fd, length):
        if failing.pop("truncate", False):
            raise OSError(errno.EIO, "Input/output error")
        return real_truncate(fd, length)

    monkeypatch.setattr(bundle_mod, "_os_write", half_then_enospc)
    monkeypatch.setattr(bundle_mod, "_os_ftruncate", truncate_fails_once)
    try:
        writer.append_drift([b'{"a":1}', b'{"a":2}'])
        assert writer.wait_idle(30)
        assert target.read_bytes() == b'{"a":1}\n{"'  # the cut-back failed: torn until the next append
        writer.append_drift([b'{"a":3}'])
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
    assert target.read_bytes() == b'{"a":3}\n'
    assert (writer.drift_written, writer.drift_errors) == (1, 2)
    dropped = metrics.registry.get_sample_value("mercurystream_drift_samples_dropped_total", {"reason": "enospc"})
    assert dropped == 2.0


def test_drift_samples_that_cannot_be_opened_are_counted_by_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    metrics = P2Metrics()
    writer = BundleWriter(tmp_path, metrics, drift_file=blocker / "drift.jsonl", chart=False)
    try:
        writer.append_drift([b"{}", b"{}"])
        assert writer.wait_idle(30)
    finally:
        writer.stop(30)
    dropped = metrics.registry.get_sample_value("mercurystream_drift_samples_dropped_total", {"reason": "eexist"})
    assert dropped == 2.0


def test_a_real_full_filesystem_leaves_no_torn_bundle_or_sample_and_counts_both(small_disk):
    """On a full 256 KiB tmpfs: the bundle that does not fit leaves nothing, the drift samples that do
    not fit are counted and leave whole lines, and both resume once there is space."""
    incidents = small_disk / "incidents"
    drift = small_disk / "drift.jsonl"
    filler = small_disk / "filler"
    metrics = P2Metrics()
    writer = BundleWriter(incidents, metrics, chart=False, drift_file=drift)
    writer.start()
    try:
        writer.append_drift([b'{"sample":%d}' % i for i in range(10)])
        assert writer.wait_idle(30)
        filler.write_bytes(b"f" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - 2048))
        assert writer.submit(make_capture(pre=2000, post=0, trigger_at=1999, n=2000))  # about 400 KB
        writer.append_drift([b'{"sample":%d,"pad":"%s"}' % (i, b"p" * 100) for i in range(10, 100)])
        assert writer.wait_idle(30)
        assert (writer.errors, writer.written) == (1, 0)
        assert [p.name for p in incidents.iterdir()] == []  # neither a bundle nor its .tmp_ directory
        data = drift.read_bytes()
        assert data.endswith(b"\n") and data.count(b"\n") == 10
        dropped = metrics.registry.get_sample_value("mercurystream_drift_samples_dropped_total", {"reason": "enospc"})
        assert dropped == 90
        filler.unlink()
        assert writer.submit(make_capture())
        writer.append_drift([b'{"sample":100}'])
        assert writer.wait_idle(30)
    finally:
        assert writer.stop(30)
    assert writer.written == 1 and len(list(incidents.iterdir())) == 1
    assert drift.read_bytes().count(b"\n") == 11
    assert metrics.registry.get_sample_value("mercurystream_incident_write_errors_total") == 1.0


def _control(kind: str, first: int, last: int, **counts: int) -> bytes:
    return orjson.dumps(
        {
            "type": kind,
            "product_id": "BTC-USD",
            "first_missing": first,
            "last_missing": last,
            "source": "trade_id",
            **counts,
            "ingest_ts_ms": 1,
        }
    )


def test_meta_lists_announced_gaps_with_their_backfill_outcome(tmp_path):
    from mercurystream.p2.incident.bundle import gaps_of

    backfilled = [orjson.loads(event_line(t)) | {"backfilled": True} for t in (7, 8)]
    lines = [
        event_line(6),
        _control("gap", 7, 9),
        *(orjson.dumps(e) for e in backfilled),
        _control("backfill", 7, 9, recovered=2, unrecoverable=1),
        _control("gap", 20, 21),
        _control("gap", 30, 30),
        _control("backfill", 30, 30, recovered=1, unrecoverable=0),
        _control("gap", 0, 3),  # not a control event (ids start at 1): ignored here, drift in P2
    ]
    gaps = gaps_of(lines)
    assert [(g["first_missing"], g["status"], g["backfilled"], g["recovered"], g["unrecoverable"]) for g in gaps] == [
        (7, "partial", 2, 2, 1),
        (20, "pending", 0, None, None),
        (30, "recovered", 0, 1, 0),
    ]
    cap = make_capture()
    cap.post.extend(lines)
    path = write_bundle(tmp_path / "incidents", cap)
    meta = orjson.loads((path / "meta.json").read_bytes())
    assert meta["gaps"] == gaps
    report = (path / "report.md").read_text()
    assert "## Gaps and Backfill" in report
    assert "| BTC-USD | 7 .. 9 | trade_id | 2 | 2 | 1 | partial |" in report
    assert "| BTC-USD | 20 .. 21 | trade_id | 0 | n/a | n/a | pending |" in report


def test_a_bundle_without_gaps_has_an_empty_list_and_no_section(tmp_path):
    path = write_bundle(tmp_path / "incidents", make_capture())
    assert orjson.loads((path / "meta.json").read_bytes())["gaps"] == []
    assert "Gaps and Backfill" not in (path / "report.md").read_text()


def test_the_oldest_bundles_go_once_the_directory_is_over_its_bound(tmp_path: Path) -> None:
    for name, size in (("20260101_000000_a", 400), ("20260102_000000_b", 400), ("20260103_000000_c", 400)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "events.jsonl").write_bytes(b"x" * size)
    (tmp_path / ".tmp_20260104_000000_d_x").mkdir()  # a writer's: never counted, never removed
    (tmp_path / ".tmp_20260104_000000_d_x" / "events.jsonl").write_bytes(b"x" * 5000)
    (tmp_path / "notes.txt").write_bytes(b"x" * 5000)
    assert prune_bundles(tmp_path, 1200) == []
    assert prune_bundles(tmp_path, 900, keep=tmp_path / "20260101_000000_a") == ["20260102_000000_b"]
    assert prune_bundles(tmp_path, 0) == ["20260101_000000_a", "20260103_000000_c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp_20260104_000000_d_x", "notes.txt"]
    assert prune_bundles(tmp_path / "missing", 0) == []


def test_the_writer_keeps_its_directory_under_incidents_max_bytes(tmp_path: Path) -> None:
    metrics = P2Metrics()
    writer = BundleWriter(tmp_path, metrics, chart=False, max_dir_bytes=1)
    writer.start()
    try:
        for _ in range(3):
            assert writer.submit(make_capture())
            assert writer.wait_idle(10)
    finally:
        writer.stop()
    assert writer.written == 3 and writer.pruned == 2
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [writer.last_path.name]
    assert metrics.incidents_pruned_total._value.get() == 2


def test_the_drift_file_moves_aside_before_an_append_would_pass_its_bound(tmp_path: Path) -> None:
    target = tmp_path / "drift.jsonl"
    writer = BundleWriter(tmp_path / "inc", None, drift_file=target, chart=False, drift_max_bytes=20)
    writer.start()
    try:
        for k in range(5):
            writer.append_drift([b'{"k":%d}' % k])  # 8 bytes a line with its newline
        assert writer.wait_idle(10)
    finally:
        writer.stop()
    assert writer.drift_written == 5 and writer.drift_errors == 0 and writer.drift_rotations == 2
    assert target.read_bytes() == b'{"k":4}\n'
    assert Path(f"{target}.1").read_bytes() == b'{"k":2}\n{"k":3}\n'


def test_a_writer_sharing_the_drift_file_follows_the_other_ones_move(tmp_path: Path) -> None:
    target = tmp_path / "drift.jsonl"
    one = BundleWriter(tmp_path / "a", None, drift_file=target, chart=False, drift_max_bytes=20)
    two = BundleWriter(tmp_path / "b", None, drift_file=target, chart=False, drift_max_bytes=20)
    for w in (one, two):
        w.start()
    try:
        for k in range(6):
            w = (one, two)[k % 2]
            w.append_drift([b'{"k":%d}' % k])
            assert w.wait_idle(10)
    finally:
        one.stop()
        two.stop()
    assert one.drift_errors == two.drift_errors == 0
    assert target.read_bytes() == b'{"k":4}\n{"k":5}\n'
    assert Path(f"{target}.1").read_bytes() == b'{"k":2}\n{"k":3}\n'
