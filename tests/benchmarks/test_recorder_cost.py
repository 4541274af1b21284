"""``python -m benchmarks.recorder_cost`` runs and reports both formats, so the benchmark cannot rot. Never speed."""

from __future__ import annotations

import json

import pytest

from benchmarks.recorder_cost import main, recorded_lines
from mercurystream.shared.parquet import RowEncoder, _rowscan, scan_columns


def test_it_prints_both_formats_costs_as_json(capsys: pytest.CaptureFixture) -> None:
    # Enough events that the writer process's work (about 1 µs each) spans ten clock ticks of
    # /proc's CPU count, which is read once the process is ready.
    assert main(["--events", "100000", "--runs", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["events"] == 100000
    for fmt in ("jsonl", "parquet"):
        assert set(result[fmt]) == {"us_per_event", "cpu_us_per_event", "child_cpu_us_per_event", "bytes_per_event"}
        assert all(v > 0 for k, v in result[fmt].items() if k != "child_cpu_us_per_event")
    assert result["jsonl"]["child_cpu_us_per_event"] == 0
    assert result["parquet"]["child_cpu_us_per_event"] > 0
    assert result["jsonl"]["bytes_per_event"] == pytest.approx(result["line_bytes"] + 1, abs=1e-3)
    assert result["parquet"]["bytes_per_event"] < result["jsonl"]["bytes_per_event"] / 3
    if _rowscan is not None:
        assert set(result["scanner"]) == {"plain_us_per_event", "scan_us_per_event", "speedup", "pays"}
        assert result["scanner"]["speedup"] > 0


def test_its_lines_are_what_p2_records_and_all_take_the_fast_path() -> None:
    lines = recorded_lines(500)
    assert RowEncoder._fast(lines) is not None
    assert RowEncoder().encode_joined(b"".join(lines), len(lines)) is not None  # the writer process's one decode
    if _rowscan is not None:
        assert scan_columns(b"".join(lines), len(lines)) is not None  # and its scanner takes them
    assert all(line.endswith(b"}") and b'"recv_ts_us":' in line for line in lines)


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--events", "0"])
    assert info.value.code == 2
