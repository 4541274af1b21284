"""report.md content for each incident type, Markdown escaping, and the mercury-report CLI."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tracemalloc

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercurystream.p2.batch import Batch
from mercurystream.p2.detectors import Detectors
from mercurystream.p2.flight_recorder import FlightRecorder
from mercurystream.p2.incident import report
from mercurystream.p2.incident.bundle import write_bundle
from mercurystream.p2.incident.marks import STYLES
from mercurystream.p2.incident.report import (
    CHART_FAILED,
    CHART_NOT_DRAWN,
    CHART_PENDING,
    code_block,
    main,
    md,
    render_report,
    write_report,
)


def event(tid: int, pid: str = "BTC-USD", lat_us: int = 400, price: float | None = None, **extra) -> dict:
    ingest = 1_714_564_800_000_000 + tid * 1000
    e = {
        "type": "match",
        "product_id": pid,
        "price": price if price is not None else 60000.0 + tid,
        "last_size": 0.01,
        "time": f"2024-05-01T12:00:{tid // 1000:02d}.{tid % 1000:06d}Z",
        "trade_id": tid,
        "ingest_ts_ms": ingest // 1000,
        "ingest_ts_us": ingest,
        "recv_ts_ms": (ingest + lat_us) // 1000,
        "recv_ts_us": ingest + lat_us,
    }
    e.update(extra)
    return e


def bundle_from(tmp_path, events, pre=50, post=10, **detector_kw):
    """Run the real detectors and recorder over ``events`` and write the first capture."""
    det = Detectors(**detector_kw)
    fr = FlightRecorder(pre, post, 0, wall_clock=lambda: 1_714_564_803.0)
    lines = [orjson.dumps(e) for e in events]
    anomalies = [
        a for a in det.process(Batch.of_events(events)) if a.type in ("duplicate", "sequence_gap", "latency_spike")
    ]
    res = fr.feed(lines, anomalies)
    cap = res.started[0]
    cap.context = {"counters_at_trigger": det.counts, "config": {"GAP_REORDER_WINDOW": 3}}
    if cap not in res.completed:
        fr.finalize()
    return write_bundle(tmp_path / "incidents", cap)


def test_duplicate_report(tmp_path):
    events = [event(k) for k in range(1, 30)]
    events.insert(20, event(12))
    path = bundle_from(tmp_path, events, pre=50, post=5)
    text = (path / "report.md").read_text()
    assert text.startswith(f"# Incident Report: {md(path.name)}\n")
    assert "| **Type** | duplicate |" in text
    assert "| **Triggered** | 2024-05-01 12:00:03 UTC |" in text
    assert "| **Affected Symbols** | BTC-USD |" in text
    assert "| **Total Events** | 26 (21 pre + 5 post) |" in text
    assert "| **Trigger Event** | line 21 of events.jsonl |" in text
    assert "The trade id occurs 2 times in this bundle" in text
    assert "| 12 | BTC-USD | 12 |" in text and "| 21 | BTC-USD | 12 |" in text
    assert text.count('"trade_id":12,') == 2
    assert "## Events by Symbol" in text and "| BTC-USD | 26 | 26 | 0 | 60,001.0 | 60,025.0 | 1 .. 25 |" in text
    assert f"python replay.py --file {path / 'events.jsonl'} --keep-timestamps --rate 0" in text, (
        "the exact replay command with the bundle's path"
    )


def test_gap_report(tmp_path):
    ids = [*range(1, 11), *range(14, 20)]
    path = bundle_from(tmp_path, [event(k) for k in ids], pre=50, post=2, gap_reorder_window=3)
    text = (path / "report.md").read_text()
    assert "| **Type** | sequence_gap |" in text
    assert "3 trade id(s) never arrived" in text
    assert "| 11 .. 13 | 3 |" in text
    assert "#### Trade ids around 11 .. 13" in text
    for line_no, tid in ((8, 8), (9, 9), (10, 10), (11, 14), (12, 15), (13, 16)):
        assert f"| {line_no} | BTC-USD | {tid} |" in text
    assert "| **Total Events** | 16 (14 pre + 2 post) |" in text


def test_latency_report(tmp_path):
    events = [event(k, lat_us=300) for k in range(1, 21)] + [event(k, lat_us=150_000 + k) for k in range(21, 41)]
    path = bundle_from(
        tmp_path,
        events,
        pre=100,
        post=0,
        latency_threshold_ms=100.0,
        latency_buffer_size=10,
        latency_eval_every=10,
        latency_consecutive=2,
    )
    meta = orjson.loads((path / "meta.json").read_bytes())
    assert meta["type"] == "latency_spike" and meta["trigger_line"] == 40
    text = (path / "report.md").read_text()
    assert "| before the run | 0.300 |" in text
    assert "| run 1 | 150.030 |" in text
    assert "| at the trigger | 150.040 |" in text
    assert "#### Worst samples up to the trigger" in text
    assert "| 40 | BTC-USD | 40 | 150.040 |" in text
    assert "| **Total Events** | 40 (40 pre + 0 post) |" in text


def test_event_text_cannot_break_the_markdown(tmp_path):
    evil = "EVIL|`x`|<script>*_[a](b)_*\n# h"
    events = [event(k, pid=evil, side="```\n# not a heading") for k in range(1, 6)] + [event(3, pid=evil)]
    path = bundle_from(tmp_path, events, pre=10, post=0)
    text = (path / "report.md").read_text()
    assert "\n````json\n" in text  # the fence outgrows the backticks inside the events
    prose = re.sub(r"\n(`{3,})[a-z]*\n.*?\n\1\n", "\n", text, flags=re.S)
    assert "```" not in prose
    assert evil not in prose and "<script>" not in prose and "\n# h" not in prose
    assert md(evil) in prose
    table: list[int] = []
    for line in [*prose.splitlines(), ""]:
        if line.startswith("|"):
            table.append(unescaped_pipes(line))
        elif table:
            assert len(set(table)) == 1, table  # every row has the header's cell count
            table = []


def unescaped_pipes(line: str) -> int:
    return line.replace("\\\\", "").replace("\\|", "").count("|")


def test_md_and_code_block():
    assert md("a|b") == "a\\|b"
    assert md("x\ny") == "x y"
    assert md("a & <b>") == "a &amp; \\<b\\>"
    assert md("sequence_gap _x_ *y* [l](u) ~~s~~ `c`") == (
        "sequence_gap \\_x\\_ \\*y\\* \\[l\\](u) \\~\\~s\\~\\~ \\`c\\`"
    )
    block = code_block(['{"s":"```"}'], "json")
    assert block.startswith("````json\n") and block.endswith("\n````")


def test_incomplete_capture_is_reported(tmp_path):
    events = [event(k) for k in range(1, 10)] + [event(5)]
    path = bundle_from(tmp_path, events, pre=20, post=100)
    text = (path / "report.md").read_text()
    assert "incomplete: finalized at shutdown with 0 of 100 post events" in text


def test_missing_events_file_is_said(tmp_path):
    path = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    (path / "events.jsonl").unlink()
    assert "events.jsonl is missing" in render_report(path)


def test_cli_regenerates_every_report(tmp_path, capsys):
    a = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    b = bundle_from(tmp_path, [event(1), event(2), event(2)], pre=5, post=0)
    (a / "report.md").unlink()
    (b / "report.md").write_text("stale")
    (tmp_path / "incidents" / ".tmp_half_written").mkdir()
    assert main([str(tmp_path / "incidents")]) == 0
    assert (a / "report.md").read_text() == render_report(a, str(a / "events.jsonl"))
    assert (b / "report.md").read_text().startswith("# Incident Report: ")
    out, err = capsys.readouterr()
    assert str(a / "report.md") in out and "2 report(s) written" in err


def test_cli_accepts_a_single_bundle(tmp_path):
    a = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    (a / "report.md").unlink()
    assert main([str(a)]) == 0
    assert (a / "report.md").is_file()


def test_cli_missing_directory_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mercurystream.p2.incident.report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"mercury-report: {tmp_path / 'nope'}: no such directory"]
    assert "Traceback" not in proc.stderr


def test_cli_broken_bundle_is_reported_and_others_still_written(tmp_path, capsys):
    good = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    broken = tmp_path / "incidents" / "20240101_000000_00000000"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    (good / "report.md").unlink()
    assert main([str(tmp_path / "incidents")]) == 1
    assert (good / "report.md").is_file()
    err = capsys.readouterr().err
    assert "unreadable meta.json" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"]])
def test_cli_help_exits_zero(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


def test_cli_draws_missing_charts_and_the_report_links_them(tmp_path):
    a = bundle_from(tmp_path, [event(1), event(2), event(2)], pre=5, post=0)
    assert not (a / "chart.png").exists()
    assert main([str(tmp_path / "incidents")]) == 0
    assert (a / "chart.png").stat().st_size > 1000
    assert "chart.png" in (a / "report.md").read_text()


def test_cli_no_charts_writes_reports_only(tmp_path):
    a = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    assert main(["--no-charts", str(tmp_path / "incidents")]) == 0
    assert not (a / "chart.png").exists()
    assert "chart.png" not in (a / "report.md").read_text()


@pytest.mark.parametrize(
    ("note", "says"),
    [
        (CHART_PENDING, "Not drawn yet: P2 draws it once it has CPU to spare"),
        (CHART_NOT_DRAWN, "P2 stopped before it had CPU to spare"),
        (CHART_FAILED, "the renderer failed"),
    ],
)
def test_a_missing_chart_is_explained_until_it_exists(tmp_path, note, says):
    a = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    write_report(a, chart_note=note)
    report = (a / "report.md").read_text()
    assert says in report and f"`mercury-report {a}` draws it now." in report
    assert "](chart.png)" not in report
    (a / "chart.png").write_bytes(b"png")
    write_report(a, chart_note=note)
    report = (a / "report.md").read_text()
    assert "](chart.png)" in report and says not in report
    assert not [p for p in a.iterdir() if p.name.startswith(".")], "the temporary report was renamed"


def test_an_unknown_chart_note_adds_nothing(tmp_path):
    a = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    assert "## Chart" not in render_report(a, chart_note="whatever")


def test_a_summary_only_report_is_rendered_from_meta_without_reading_the_events(tmp_path):
    a = bundle_from(tmp_path, [event(k) for k in range(1, 8)] + [event(3)], pre=5, post=2)
    full = render_report(a, chart_note=CHART_PENDING)
    (a / "events.jsonl").unlink()  # never read: a missing file would be reported otherwise
    summary = render_report(a, chart_note=CHART_PENDING, summary_only=True)
    assert "is missing from this bundle" not in summary
    assert f"Not rendered yet: P2 adds the evidence and the per-symbol table with the chart. `mercury-report {a}`" in (
        summary
    )
    for shared in (
        "## Summary",
        "| **Type** | duplicate |",
        "| **Total Events** | 5 (5 pre + 0 post) |",
        "## Reproduce",
    ):
        assert shared in summary and shared in full
    assert "## Configuration" in summary and "Not drawn yet" in summary
    assert "## Events by Symbol" in full and "## Events by Symbol" not in summary


def evidence_tables(text: str) -> list[tuple[int, list[str]]]:
    """(index of the line after it, the table's lines) for each table from Evidence to Events by Symbol."""
    lines = text.splitlines()
    start = lines.index("## Evidence")
    end = next(
        i for i in range(start + 1, len(lines)) if lines[i].startswith("## ") and "Events by Symbol" not in lines[i]
    )
    tables, current = [], []
    for i in range(start, end + 1):
        if lines[i].startswith("|"):
            current.append(lines[i])
        elif current:
            tables.append((i, current))
            current = []
    return tables


def chart_links_after_each_table(path) -> list[str]:
    """The sentence linking the chart within the few lines after each evidence table."""
    (path / "chart.png").write_bytes(b"png")
    write_report(path)
    text = (path / "report.md").read_text()
    lines = text.splitlines()
    found = []
    tables = evidence_tables(text)
    assert len(tables) >= 2
    for after, table in tables:
        near = [s for s in lines[after : after + 4] if "[chart](chart.png)" in s]
        assert near, f"no chart link after {table[0]}"
        found.append(near[0])
    assert "![Anomalies, price and latency around the trigger](chart.png)" in text
    for style in STYLES.values():
        assert style.words in text
    assert "start cold at line 1" in text
    return found


def test_every_evidence_table_links_the_chart_with_its_marker(tmp_path):
    dup = bundle_from(tmp_path, [event(k) for k in range(1, 30)] + [event(12)], pre=50, post=0)
    links = chart_links_after_each_table(dup)
    assert "each duplicate is an orange diamond on its symbol's price line" in links[0]
    assert "the trigger is the red circle at line 30" in links[0]

    gap = bundle_from(
        tmp_path, [event(k) for k in [*range(1, 11), *range(14, 20)]], pre=50, post=2, gap_reorder_window=3
    )
    links = chart_links_after_each_table(gap)
    assert "each sequence_gap is a brown downward triangle" in links[0]
    assert "these are lines 8 to 13 of the x axis" in links[1]

    lat_events = [event(k, lat_us=300) for k in range(1, 21)] + [event(k, lat_us=150_000) for k in range(21, 41)]
    spike = bundle_from(
        tmp_path,
        lat_events,
        pre=100,
        post=0,
        latency_buffer_size=10,
        latency_eval_every=10,
        latency_consecutive=2,
    )
    links = chart_links_after_each_table(spike)
    assert "dark green step line is this rolling p99" in links[0]
    assert "each latency_spike is a cyan upward triangle" in links[0]
    assert "highest green dots" in links[1]


def test_the_chart_links_are_left_out_while_there_is_no_chart(tmp_path):
    a = bundle_from(tmp_path, [event(k) for k in range(1, 30)] + [event(12)], pre=50, post=0)
    text = render_report(a, chart_note=CHART_PENDING)
    assert "[chart]" not in text and "orange diamond" not in text


def _bad_bundle(root, name: str, meta: bytes):
    bundle = root / name
    bundle.mkdir(parents=True)
    (bundle / "meta.json").write_bytes(meta)
    (bundle / "events.jsonl").write_bytes(orjson.dumps(event(1)) + b"\n")
    return bundle


def _report_lines(err: str) -> list[str]:
    """stderr without the closing count line."""
    return [line for line in err.splitlines() if "report(s) written" not in line]


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        (b'{"pre_events": "x"}', "meta.json: pre_events must be an integer, got str"),
        (b'{"triggered_at": 5}', "meta.json: triggered_at must be a string, got int"),
        (b'{"affected_symbols": 5}', "meta.json: affected_symbols must be a list, got int"),
        (b'{"suppressed_triggers": {"a": 1}}', "meta.json: suppressed_triggers must be a list, got object"),
        (b'{"counters_at_trigger": [1]}', "meta.json: counters_at_trigger must be an object, got list"),
        (b'{"complete": "yes"}', "meta.json: complete must be true or false, got str"),
        (b'{"trigger_line": true}', "meta.json: trigger_line must be an integer, got bool"),
        (b'{"type": "sequence_gap", "detail": {"ranges": 5}}', "meta.json: detail.ranges must be a list, got int"),
        (
            b'{"type": "latency_spike", "detail": {"run_p99_ms": 5}}',
            "meta.json: detail.run_p99_ms must be a list, got int",
        ),
        (b'{"detail": [1, 2]}', "meta.json: detail must be an object, got list"),
        (b"[1, 2]", "meta.json is not a JSON object"),
        (b"\xff\xfe{}", "unreadable meta.json"),
    ],
)
def test_cli_a_bundle_with_a_bad_meta_is_one_line_and_the_next_is_still_written(tmp_path, capsys, meta, says):
    root = tmp_path / "incidents"
    bad = _bad_bundle(root, "20240101_000000_00000000", meta)
    good = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    (good / "report.md").unlink()
    assert main(["--no-charts", str(root)]) == 1
    assert (good / "report.md").is_file()
    assert not (bad / "report.md").exists()
    out, err = capsys.readouterr()
    (line,) = _report_lines(err)
    assert line.startswith(f"mercury-report: {bad}: {says}")
    assert str(good / "report.md") in out


def test_cli_a_meta_that_is_a_directory_is_reported_not_skipped(tmp_path, capsys):
    root = tmp_path / "incidents"
    bad = root / "20240101_000000_00000000"
    (bad / "meta.json").mkdir(parents=True)
    assert main(["--no-charts", str(root)]) == 1
    assert _report_lines(capsys.readouterr().err) == [f"mercury-report: {bad}: meta.json is not a regular file"]


def test_cli_an_unreadable_meta_is_one_line(tmp_path, capsys, monkeypatch):
    root = tmp_path / "incidents"
    bad = _bad_bundle(root, "20240101_000000_00000000", b"{}")
    real = type(bad).read_bytes

    def read_bytes(self):
        if self.name == "meta.json":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(type(bad), "read_bytes", read_bytes)
    assert main(["--no-charts", str(root)]) == 1
    assert _report_lines(capsys.readouterr().err) == [f"mercury-report: {bad}: unreadable meta.json: Permission denied"]


def test_cli_bad_arguments_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--charts", "--no-charts", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mercury-report: ") and "--help" in err[0]


def test_cli_hostile_bundles_in_a_subprocess_end_in_lines_not_a_traceback(tmp_path):
    root = tmp_path / "incidents"
    _bad_bundle(root, "a", b'{"pre_events": "x", "triggered_at": 5, "affected_symbols": 5}')
    _bad_bundle(root, "b", b"\xff\xfe\x00garbage")
    undecodable = os.fsencode(str(root)) + b"/c\xff"
    os.mkdir(undecodable)
    (root / os.fsdecode(b"c\xff") / "meta.json").write_bytes(b'{"type": "duplicate"}')
    good = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    proc = subprocess.run(
        [sys.executable, "-m", "mercurystream.p2.incident.report", "--no-charts", str(root)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err
    assert proc.returncode == 1
    assert len(_report_lines(err)) == 3, err
    assert "c\\udcff: the path is not valid UTF-8" in err
    assert (good / "report.md").is_file()


_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text()
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_META_KEYS = [
    "incident_id", "type", "reason", "detail", "product_id", "triggered_at", "affected_symbols", "total_events",
    "pre_events", "post_events", "post_target", "trigger_line", "complete", "counters_at_trigger", "config",
    "suppressed_triggers",
]  # fmt: skip
_DETAIL_KEYS = ["trade_id", "ranges", "threshold_ms", "p99_before_ms", "run_p99_ms", "window"]
_TYPES = st.sampled_from(["duplicate", "sequence_gap", "latency_spike", "schema_drift", "other"])


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    meta=st.one_of(
        _JSON,
        st.fixed_dictionaries(
            {"type": _TYPES},
            optional={
                **{k: _JSON for k in _META_KEYS if k != "type"},
                "detail": st.fixed_dictionaries({}, optional={k: _JSON for k in _DETAIL_KEYS}) | _JSON,
            },
        ),
    )
)
def test_cli_any_meta_json_value_is_a_report_or_one_line(tmp_path_factory, meta):
    root = tmp_path_factory.mktemp("fuzz") / "incidents"
    bundle = _bad_bundle(root, "20240101_000000_00000000", orjson.dumps(meta, option=orjson.OPT_NON_STR_KEYS))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--no-charts", str(root)])
    lines = _report_lines(err.getvalue())
    if rc == 0:
        assert lines == [] and (bundle / "report.md").is_file()
    else:
        assert rc == 1
        assert len(lines) == 1 and lines[0].startswith(f"mercury-report: {bundle}: "), lines


def test_cli_draws_no_chart_for_a_refused_bundle(tmp_path, capsys):
    root = tmp_path / "incidents"
    bad = _bad_bundle(root, "20240101_000000_00000000", b'{"trigger_line": "x"}')
    assert main([str(root)]) == 1
    assert not (bad / "chart.png").exists()
    assert _report_lines(capsys.readouterr().err) == [
        f"mercury-report: {bad}: meta.json: trigger_line must be an integer, got str"
    ]


def test_cli_an_events_fifo_is_refused_not_waited_on(tmp_path, capsys):
    root = tmp_path / "incidents"
    bad = _bad_bundle(root, "20240101_000000_00000000", b"{}")
    (bad / "events.jsonl").unlink()
    os.mkfifo(bad / "events.jsonl")
    assert main([str(root)]) == 1
    assert _report_lines(capsys.readouterr().err) == [f"mercury-report: {bad}: events.jsonl is not a regular file"]


def test_cli_without_the_chart_renderer_still_writes_the_report(tmp_path, capsys, monkeypatch):
    a = bundle_from(tmp_path, [event(1), event(1)], pre=5, post=0)
    monkeypatch.setitem(sys.modules, "mercurystream.p2.incident.chart", None)
    assert main([str(tmp_path / "incidents")]) == 0
    assert (a / "report.md").is_file() and not (a / "chart.png").exists()
    assert f"mercury-report: {a}: no chart: cannot load the renderer" in capsys.readouterr().err


def test_product_ids_past_the_schema_bound_are_clipped_in_meta_and_report(tmp_path):
    """A 100 KB product id in the ring was copied whole into meta.json's affected_symbols and every report table."""
    fr = FlightRecorder(50, 0, 0, wall_clock=lambda: 1_714_564_803.0)
    events = [event(k, pid=f"{k:03d}" + "X" * 100_000) for k in range(1, 40)] + [event(40)]
    fr.feed([orjson.dumps(e) for e in events])
    cap = fr.dump("hostile ids")
    cap.context = {"counters_at_trigger": {}, "config": {}}
    bundle = write_bundle(tmp_path / "incidents", cap)
    symbols = orjson.loads((bundle / "meta.json").read_bytes())["affected_symbols"]
    assert "BTC-USD" in symbols and len(symbols) == 40 and max(map(len, symbols)) <= 64
    text = render_report(bundle)
    assert "X" * 100 not in text and len(text) < 20_000
    assert max(map(len, text.splitlines())) <= 1200


def test_a_counter_past_64_bits_is_written_and_reported_exactly(tmp_path):
    """The ids missing behind a gap to trade id 2**63 - 1 add up past 64 bits, which orjson cannot write:
    the whole bundle was lost. (orjson reads such a number back as a float.)"""
    fr = FlightRecorder(50, 0, 0, wall_clock=lambda: 1_714_564_803.0)
    fr.feed([orjson.dumps(event(k)) for k in range(1, 5)])
    cap = fr.dump("huge counters")
    cap.context = {"counters_at_trigger": {"gaps": 2**64 + 5}, "config": {}}
    bundle = write_bundle(tmp_path / "incidents", cap)
    assert b'"gaps": 18446744073709551621' in (bundle / "meta.json").read_bytes()
    assert "| gaps | 1.8446744073709552e+19 |" in render_report(bundle)
    assert main(["--no-charts", str(bundle)]) == 0


# --- bounded reading of events.jsonl ---------------------------------------------------------------


def _meta_only_bundle(root, name: str = "b1"):
    bundle = root / name
    bundle.mkdir(parents=True)
    meta = {"incident_id": name, "type": "duplicate", "trigger_line": 1, "pre_events": 1, "post_events": 0}
    (bundle / "meta.json").write_bytes(orjson.dumps(meta))
    return bundle


def _rendered_with_peak_memory(bundle):
    """``render_report(bundle)`` and the peak bytes Python allocated while it ran."""
    tracemalloc.start()
    try:
        text = render_report(bundle)
        return text, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_bundle_of_many_short_lines_is_read_up_to_the_line_bound_and_says_so(tmp_path, monkeypatch):
    """The reviewer's 5 MB of ``1`` lines took 558 MB when every line was kept: now the report reads
    what its bounds allow, in bounded memory, and names what it left out."""
    monkeypatch.setattr(report, "MAX_REPORT_EVENTS", 1000)
    bundle = _meta_only_bundle(tmp_path)
    (bundle / "events.jsonl").write_bytes(b"1\n" * 50_000)
    text, peak = _rendered_with_peak_memory(bundle)
    assert peak < 2 << 20, peak
    assert (
        "> events.jsonl is larger than a report reads (1,000 lines): the evidence, the per-symbol table and "
        "the line counts are of its first 1,000 lines (2,000 of 100,000 bytes); the remaining 98,000 bytes "
        "are left out." in text
    )
    assert "| **Total Events** | 1,000 (1 pre + 0 post) |" in text


def test_a_line_longer_than_the_byte_bound_is_not_read_past_it(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "MAX_REPORT_BYTES", 4096)
    bundle = _meta_only_bundle(tmp_path)
    first = orjson.dumps(event(1)) + b"\n"
    (bundle / "events.jsonl").write_bytes(first + b"x" * 1_000_000)  # no newline: one line of 1 MB
    text, peak = _rendered_with_peak_memory(bundle)
    assert peak < 512 << 10, peak
    size = len(first) + 1_000_000
    assert f"of its first 1 lines ({len(first):,} of {size:,} bytes)" in text
    assert "| BTC-USD | 1 | 1 | 0 |" in text  # the line read is in the per-symbol table


def test_a_bundle_within_the_bounds_is_read_whole_with_no_note(tmp_path, monkeypatch):
    events = [event(k) for k in range(1, 30)]
    events.insert(20, event(12))
    path = bundle_from(tmp_path, events, pre=50, post=5)
    size = (path / "events.jsonl").stat().st_size
    monkeypatch.setattr(report, "MAX_REPORT_EVENTS", 26)
    monkeypatch.setattr(report, "MAX_REPORT_BYTES", size)
    text = render_report(path)
    assert "larger than a report reads" not in text
    assert "| **Total Events** | 26 (21 pre + 5 post) |" in text
    assert "The trade id occurs 2 times in this bundle" in text


def test_cli_a_bundle_past_the_bounds_gets_its_report_and_one_line_instead_of_a_chart(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report, "MAX_REPORT_EVENTS", 100)
    bundle = _meta_only_bundle(tmp_path / "incidents")
    (bundle / "events.jsonl").write_bytes(b"{}\n" * 500)
    assert main([str(tmp_path / "incidents")]) == 0
    err = capsys.readouterr().err
    assert f"mercury-report: {bundle}: no chart: events.jsonl has over 100 lines\n" in err
    assert not (bundle / "chart.png").exists()
    assert "larger than a report reads (100 lines)" in (bundle / "report.md").read_text()
