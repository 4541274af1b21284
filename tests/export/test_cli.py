"""``mercury-export``: DuckDB reads back the recording exactly; bad lines by number; bad input is one line, exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import duckdb
import orjson
import pytest

from mercurystream.export.cli import main
from mercurystream.processes import BIN
from mercurystream.shared.parquet import COLUMNS


def recorded(i: int) -> dict:
    """A line as P2 records it: P1's event plus the receive stamps; every fifth one a ticker with a bid and ask."""
    us = 1_764_940_000_000_000 + i * 1537
    e = {
        "type": "ticker" if i % 5 == 0 else "match",
        "product_id": ("BTC-USD", "ETH-USD", "SOL-USD")[i % 3],
        "price": round(60000 + i * 0.37, 2),
        "last_size": 0.001 * (i % 11 + 1),
        "time": f"2026-12-05T13:{i // 600 % 60:02d}:{i // 10 % 60:02d}.{i % 10 * 100000:06d}Z",
        "trade_id": 7_000_000 + i,
        "sequence": 90_000_000 + 2 * i,
        "side": ("buy", "sell")[i % 2],
    }
    if i % 5 == 0:
        e["best_bid"] = e["price"] - 0.01
        e["best_ask"] = e["price"] + 0.01
    e.update(ingest_ts_ms=us // 1000, ingest_ts_us=us, recv_ts_ms=us // 1000 + 1, recv_ts_us=us + 1234)
    return e


def write_jsonl(path: Path, events: list[dict], extra_lines: dict[int, bytes] | None = None) -> list[bytes]:
    lines = [orjson.dumps(e) for e in events]
    for at, line in sorted((extra_lines or {}).items()):
        lines.insert(at, line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def duckdb_rows(path: Path) -> list[dict]:
    con = duckdb.connect()
    cur = con.execute(f"SELECT * FROM read_parquet('{path}')")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_duckdb_reads_every_row_with_the_recordings_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    events = [recorded(i) for i in range(5000)]
    write_jsonl(tmp_path / "rec.jsonl", events)
    assert main([str(tmp_path / "rec.jsonl"), "--format", "parquet", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "rec.jsonl -> " in out and "5000 rows" in out
    rows = duckdb_rows(tmp_path / "out" / "rec.parquet")
    assert len(rows) == len(events)
    for row, event in zip(rows, events, strict=True):
        assert {name: row[name] for name, _ in COLUMNS} == {name: event.get(name) for name, _ in COLUMNS}
        assert row["extra"] is None
    con = duckdb.connect()
    per_product = con.execute(
        f"SELECT product_id, count(*), sum(price * last_size) / sum(last_size) "
        f"FROM '{tmp_path / 'out' / 'rec.parquet'}' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    for product, n, vwap in per_product:
        mine = [e for e in events if e["product_id"] == product]
        assert n == len(mine)
        assert vwap == pytest.approx(sum(e["price"] * e["last_size"] for e in mine) / sum(e["last_size"] for e in mine))
    first = con.execute(f"SELECT time_ts FROM '{tmp_path / 'out' / 'rec.parquet'}' LIMIT 1").fetchone()[0]
    assert first.isoformat().startswith("2026-12-05T13:00:00")


def test_a_bundle_directory_exports_its_events_and_extra_keys_survive(tmp_path: Path) -> None:
    bundle = tmp_path / "incidents" / "20261205_131400_abcd1234"
    bundle.mkdir(parents=True)
    events = [recorded(i) for i in range(10)]
    events[3] = {**events[3], "maker_order_id": "m-1", "side": None}
    write_jsonl(bundle / "events.jsonl", events)
    (bundle / "meta.json").write_text("{}")
    assert main([str(bundle), "--out", str(tmp_path / "out")]) == 0
    rows = duckdb_rows(tmp_path / "out" / "20261205_131400_abcd1234.parquet")
    assert len(rows) == 10
    assert orjson.loads(rows[3]["extra"]) == {"maker_order_id": "m-1", "side": None}
    assert rows[3]["side"] is None


def test_bad_lines_are_reported_by_line_number_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    events = [recorded(i) for i in range(100)]
    bad = {5: b"{broken", 20: b"42", 50: orjson.dumps({**recorded(0), "price": "NaN"})}
    for k in range(60, 72):
        bad[k] = b"not json either"
    write_jsonl(tmp_path / "rec.jsonl", events, bad)
    assert main([str(tmp_path / "rec.jsonl"), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "skipped 15 bad lines (invalid_json=13, not_object=1, wrong_type=1)" in out
    assert "first at lines 6, 21, 51, 61, 62, 63, 64, 65, 66, 67, ..." in out
    assert len(duckdb_rows(tmp_path / "out" / "rec.parquet")) == 100


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/missing.jsonl", "--out", "{tmp}/o"], "no such file: {tmp}/missing.jsonl"),
        (["{tmp}", "--out", "{tmp}/o"], "is a directory without events.jsonl"),
        (["{tmp}/a.jsonl", "--format", "csv", "--out", "{tmp}/o"], "invalid choice: 'csv'"),
        (["{tmp}/a.jsonl"], "the following arguments are required: --out"),
        (["{tmp}/a.jsonl", "{tmp}/sub/a.jsonl", "--out", "{tmp}/o"], "would both be written to"),
        (["{tmp}/a.jsonl", "--out", "{tmp}/a.jsonl/o"], "cannot create"),
        (["{tmp}/a.jsonl", "--out", "{tmp}/o", "--max-line-bytes", "0"], "expected a positive integer"),
        (["{tmp}/sub/b.parquet", "--out", "{tmp}/o"], "is already Parquet"),
    ],
)
def test_bad_options_and_inputs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "a.jsonl", [recorded(0)])
    write_jsonl(tmp_path / "sub" / "a.jsonl", [recorded(0)])
    (tmp_path / "sub" / "b.parquet").write_bytes(b"PAR1")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mercury-export: error: ")
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "o").exists()


def test_the_console_script_exits_2_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "mercury-export"), str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"mercury-export: error: no such file: {tmp_path / 'nope.jsonl'}"
    assert "Traceback" not in proc.stderr
