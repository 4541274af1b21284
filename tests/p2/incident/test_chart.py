"""chart.png from hand-built bundles, including malformed lines and a missing meta.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from mercurystream.p2.incident.chart import (
    DPI,
    WIDTH_IN,
    ChartError,
    chart_command,
    main,
    read_series,
    render_chart,
)

T0_US = 1_714_566_896_000_000


def _event(i: int, sym: str, price: float, latency_us: int) -> dict:
    ingest = T0_US + i * 1000
    return {
        "type": "match",
        "product_id": sym,
        "price": price,
        "last_size": 0.01,
        "time": f"2024-05-01T12:34:{i % 60:02d}.000000Z",
        "trade_id": 1000 + i,
        "ingest_ts_ms": ingest // 1000,
        "ingest_ts_us": ingest,
        "recv_ts_ms": (ingest + latency_us) // 1000,
        "recv_ts_us": ingest + latency_us,
    }


def _bundle(tmp_path: Path, lines: list[str | dict], meta: dict | None) -> Path:
    bundle = tmp_path / "20240501_123456_0badc0de"
    bundle.mkdir()
    body = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    (bundle / "events.jsonl").write_text(body)
    if meta is not None:
        (bundle / "meta.json").write_text(json.dumps(meta))
    return bundle


def _lines() -> list[str | dict]:
    out: list[str | dict] = []
    for i in range(120):
        out.append(_event(i, "BTC-USD", 64000 + 25 * np.sin(i / 7), 400 + (i % 5) * 50))
        if i % 3 == 0:
            out.append(_event(i, "ETH-USD", 3100 + (i % 11), 600))
    out[60]["recv_ts_us"] += 250_000  # the latency spike
    out.insert(10, "{not json")
    out.insert(20, "[1, 2, 3]")
    out.insert(30, "")
    out.insert(40, {"product_id": "BTC-USD", "price": "n/a"})  # drift: no usable price, no stamps
    out.insert(50, {"product_id": "SOL-USD", "price": "145.5"})  # a decimal string still plots
    return out


def _image(path: Path) -> np.ndarray:
    return np.asarray(mpimg.imread(path))


def test_renders_a_non_blank_png_of_the_expected_size(tmp_path: Path) -> None:
    lines = _lines()
    trigger = 65
    bundle = _bundle(tmp_path, lines, {"trigger_line": trigger, "type": "latency_spike", "incident_id": "x1"})

    out = render_chart(bundle)

    assert out == bundle / "chart.png"
    img = _image(out)
    assert img.shape[1] == int(WIDTH_IN * DPI)
    assert img.shape[0] > 400
    rgb = img[..., :3]
    assert rgb.std() > 0.05, "chart looks blank"
    red = (rgb[..., 0] > 0.75) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 100, "trigger marker missing"
    assert not list(bundle.glob(".*.tmp"))


def test_series_skip_and_count_bad_lines(tmp_path: Path) -> None:
    lines = _lines()
    bundle = _bundle(tmp_path, lines, {"trigger_line": 2, "type": "duplicate"})

    s = read_series(bundle)

    assert s.lines == len(lines)
    assert s.skipped == 4
    assert set(s.prices) == {"BTC-USD", "ETH-USD", "SOL-USD"}
    assert s.trigger_line == 2
    assert s.trigger_symbol == "ETH-USD"
    assert max(s.latency[1]) > 250
    assert "duplicate" in s.title


@pytest.mark.parametrize(
    "meta_text",
    [None, "{broken", '"a string"', json.dumps({"trigger_line": "7"}), json.dumps({"trigger_line": 10_000})],
)
def test_meta_is_read_defensively(tmp_path: Path, meta_text: str | None) -> None:
    bundle = _bundle(tmp_path, _lines(), None)
    if meta_text is not None:
        (bundle / "meta.json").write_text(meta_text)

    img = _image(render_chart(bundle))

    assert img[..., :3].std() > 0.05


def test_bundle_without_usable_events_still_gets_a_chart(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, ["garbage", "{}"], {"trigger_line": 1})

    assert render_chart(bundle).is_file()


def test_bad_bundle_is_a_chart_error(tmp_path: Path) -> None:
    with pytest.raises(ChartError, match="not a directory"):
        render_chart(tmp_path / "missing")
    with pytest.raises(ChartError, match=r"events\.jsonl"):
        render_chart(tmp_path)


def test_cli_exits_2_with_one_line_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _bundle(tmp_path, _lines(), {"trigger_line": 3})

    assert main([str(tmp_path / "missing"), str(good)]) == 2

    out, err = capsys.readouterr()
    assert out.strip() == str(good / "chart.png")
    assert len(err.strip().splitlines()) == 1
    assert "missing" in err and "Traceback" not in err


def test_runs_as_a_module_subprocess(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, _lines(), {"trigger_line": 5})
    cmd = chart_command(bundle)
    assert cmd[0] == sys.executable

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == bundle / "chart.png"
    assert (bundle / "chart.png").stat().st_size > 10_000


def test_drifted_text_cannot_break_the_drawing(tmp_path: Path) -> None:
    """``$`` would start matplotlib mathtext; a drifted product_id is also arbitrarily long."""
    lines: list[str | dict] = [_event(i, "BTC-USD", 64000 + i, 500) for i in range(20)]
    lines += [_event(i, "$\\frac{$", 1.0 + i, 500) for i in range(5)]
    lines += [_event(i, "X" * 500, 2.0, 500) for i in range(5)]
    bundle = _bundle(tmp_path, lines, {"trigger_line": 22, "type": "drift $x^", "incident_id": "$$"})

    assert _image(render_chart(bundle))[..., :3].std() > 0.05
