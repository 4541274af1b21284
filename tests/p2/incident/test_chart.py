"""chart.png from hand-built bundles (malformed lines, no meta.json) and injected ones with every anomaly type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from mercurystream.p2.detectors import DUPLICATE, LATENCY_SPIKE, OUT_OF_ORDER, SEQUENCE_GAP
from mercurystream.p2.incident.chart import (
    DENSE_MARKS,
    DPI,
    RUG_COLUMNS,
    WIDTH_IN,
    ChartError,
    _rug,
    chart_command,
    draw,
    latency_limits,
    main,
    read_series,
    render_chart,
)
from mercurystream.p2.incident.marks import MARK_TYPES, STYLES
from tests.p2.incident.support import injected_lines, write_bundle

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


def _injected_bundle(tmp_path: Path, n: int = 1500) -> Path:
    return write_bundle(tmp_path / "20240501_123456_1nj3c7ed", injected_lines(n), trigger_line=100)


def _latency_axes(fig) -> object:
    (ax,) = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    return ax


def test_every_anomaly_type_is_marked_with_its_count_in_the_legend(tmp_path: Path) -> None:
    bundle = _injected_bundle(tmp_path)
    series = read_series(bundle)
    marks = series.marks

    fig = draw(series)

    legend = " | ".join(t.get_text() for t in fig.legends[0].get_texts())
    for t in MARK_TYPES:
        found = marks.by_type[t]
        assert found, f"no {t} in the injected bundle"
        shown = f"{t}: {marks.counter(t):,} missing ids" if t == SEQUENCE_GAP else f"{t}: {len(found):,}"
        assert shown in legend
    assert "re-detected" in fig.legends[0].get_title().get_text()
    assert "start cold" in fig.legends[0].get_title().get_text()
    strip = fig.axes[0]
    rows = [c.get_positions() for c in strip.collections]
    assert [len(r) for r in rows] == [len(marks.by_type[t]) for t in MARK_TYPES]
    for row, t in zip(rows, MARK_TYPES, strict=True):
        assert sorted(row) == marks.lines(t)
    assert _image(render_chart(bundle))[..., :3].std() > 0.05


def test_sparse_types_sit_on_the_data_and_dense_ones_only_in_the_strip(tmp_path: Path) -> None:
    series = read_series(_injected_bundle(tmp_path))
    marks = series.marks
    assert len(marks.by_type[OUT_OF_ORDER]) > DENSE_MARKS >= len(marks.by_type[DUPLICATE])

    fig = draw(series)

    price_axes = fig.axes[1:-1]
    on_prices = {t: 0 for t in MARK_TYPES}
    for ax in price_axes:
        for line in ax.lines:
            for t in MARK_TYPES:
                if line.get_marker() == STYLES[t].marker and line.get_color() == STYLES[t].color:
                    on_prices[t] += len(line.get_xdata())
    assert on_prices[OUT_OF_ORDER] == 0
    marked_with_price = [m for m in marks.by_type[DUPLICATE] if m.line in series.price_at]
    assert on_prices[DUPLICATE] == len(marked_with_price) > 0
    spikes = [ln for ln in _latency_axes(fig).lines if ln.get_marker() == STYLES[LATENCY_SPIKE].marker]
    assert sum(len(ln.get_xdata()) for ln in spikes) == len(marks.by_type[LATENCY_SPIKE])


def test_legend_is_off_the_data(tmp_path: Path) -> None:
    fig = draw(read_series(_injected_bundle(tmp_path)))
    fig.canvas.draw()

    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax
    assert not any(ax.get_legend() for ax in fig.axes)


@pytest.mark.parametrize("source", ["injected", "hand_built", "no_latency"])
def test_latency_axis_is_log_with_several_labels(tmp_path: Path, source: str) -> None:
    if source == "injected":
        bundle = _injected_bundle(tmp_path)
    elif source == "hand_built":
        bundle = _bundle(tmp_path, _lines(), {"trigger_line": 3})
    else:
        bundle = _bundle(tmp_path, [{"product_id": "BTC-USD", "price": 1.0 + i} for i in range(5)], None)
    fig = draw(read_series(bundle))
    fig.canvas.draw()

    ax = _latency_axes(fig)
    lo, hi = ax.get_ylim()
    labels = [t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi and t.get_text()]
    assert len(labels) >= 3, labels
    assert "ms" in ax.get_ylabel()
    assert "line in events.jsonl" in ax.get_xlabel()


@pytest.mark.parametrize(
    ("values", "threshold", "decades"),
    [([0.3, 0.9], 100.0, (-1, 3)), ([0.5, 0.6], None, (-2, 0)), ([-1.0, 0.0], None, (-1, 3)), ([5e4], 1.0, (0, 5))],
)
def test_latency_limits_cover_the_samples_and_threshold_over_two_decades(values, threshold, decades) -> None:
    assert latency_limits(values, threshold) == decades


def test_the_strip_is_bounded_however_many_anomalies() -> None:
    assert len(_rug(list(range(1, 100_001)), 100_000)) == RUG_COLUMNS
    assert _rug([3, 7], 10) == [3.0, 7.0]


def test_a_demo_sized_bundle_renders(tmp_path: Path) -> None:
    """7,000 lines, as a latency spike's bundle holds: every type, thousands of them out of order."""
    bundle = _injected_bundle(tmp_path, 6800)
    out = render_chart(bundle)
    assert read_series(bundle).lines > 7000
    assert _image(out)[..., :3].std() > 0.05
