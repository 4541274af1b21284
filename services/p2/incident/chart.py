"""``chart.png`` for an incident bundle: every anomaly in it, price per symbol and P1→P2 latency.

Matplotlib costs ~1 s to import and tens of MB of memory, so P2 never loads it: the bundle writer
runs ``python -m mercurystream.p2.incident.chart <bundle_dir>`` as a subprocess (see
:func:`chart_command`), and matplotlib is imported only inside :func:`render_chart`.

The x axis is the line number in ``events.jsonl``, not exchange time: a bundle exists because
something in it is wrong (drifted, duplicated, reordered), and line order is what P2 saw. The top
axis gives P2's receive time for the same lines. The anomalies are those P2's detectors find again
over the bundle's events (:mod:`.marks`): a strip with one row of ticks per type shows where each
one is, and the sparse types are also marked on the price or latency they concern. The legend sits
below the panels, off the data.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mercurystream.p2.detectors import LATENCY_SPIKE, SEQUENCE_GAP
from mercurystream.p2.incident.marks import MARK_TYPES, STYLES, Marks, find_marks, rolling_p99, window_p99
from mercurystream.shared.event import RECV_US, latency_ms

EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
CHART_FILE = "chart.png"

MAX_SYMBOL_PANELS = 6
WIDTH_IN = 12.0
DPI = 100
TRIGGER_COLOR = "#d62728"
PRICE_COLOR = "#1f77b4"
LATENCY_COLOR = "#2ca02c"
P99_COLOR = "#1a4d1a"
DENSE_MARKS = 300
"""A type with more marks than this is drawn only as ticks in the strip: thousands of markers over
the price line would hide it, and cost render time."""
MAX_LOG_LABELS = 8
RUG_COLUMNS = 2400
"""The strip's ticks are merged to this many columns across the x axis, twice the chart's width in
pixels, so a type with tens of thousands of events costs no more to draw than one with a thousand."""
PRICE_DOTS = 1500
"""A symbol with more trades than this gets a line without a dot per trade (the dots would merge)."""


class ChartError(Exception):
    """The bundle cannot be charted; ``str()`` is the one line to show."""


@dataclass
class Series:
    """What the chart plots, read from one bundle; every unusable line is counted in ``skipped``."""

    prices: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    latency: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    received: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    """Line and P2 receive time (seconds after the first stamped line), for the top axis."""
    price_at: dict[int, tuple[str, float]] = field(default_factory=dict)
    latency_at: dict[int, float] = field(default_factory=dict)
    marks: Marks = field(default_factory=Marks)
    lines: int = 0
    skipped: int = 0
    trigger_line: int | None = None
    trigger_symbol: str | None = None
    trigger_type: str | None = None
    title: str = ""


def chart_command(bundle_dir: str | os.PathLike[str]) -> list[str]:
    """The argv that renders a bundle's chart out of process, with this interpreter."""
    return [sys.executable, "-m", "mercurystream.p2.incident.chart", str(bundle_dir)]


def read_meta(bundle_dir: Path) -> dict:
    """``meta.json`` as a dict; ``{}`` when missing or unreadable, since the chart is useful without it."""
    try:
        meta = orjson.loads((bundle_dir / META_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _label(text: str, limit: int = 40) -> str:
    """Event text as a plain label: drifted fields can be long, and ``$`` would start mathtext."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _as_float(value: object) -> float | None:
    if type(value) is float or type(value) is int:
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def read_series(bundle_dir: Path) -> Series:
    """Parse ``events.jsonl`` tolerantly (lines that are not JSON objects, or lack a usable field, are
    skipped and counted) and re-detect its anomalies with the settings in ``meta.json``."""
    path = bundle_dir / EVENTS_FILE
    meta = read_meta(bundle_dir)
    s = Series()
    trigger = meta.get("trigger_line")
    if type(trigger) is int and trigger > 0:
        s.trigger_line = trigger
    kind = meta.get("type")
    if isinstance(kind, str) and kind:
        s.trigger_type = kind
    lat_x, lat_y = s.latency
    recv_x, recv_y = s.received
    prices = s.prices
    price_at = s.price_at
    latency_at = s.latency_at
    events: list[tuple[int, dict[str, Any]]] = []
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    first_recv: int | None = None
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ChartError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        n = 0
        for n, raw in enumerate(f, 1):
            try:
                ev = loads(raw)
            except decode_error:
                s.skipped += 1
                continue
            if type(ev) is not dict:
                s.skipped += 1
                continue
            events.append((n, ev))
            used = False
            sym = ev.get("product_id")
            price = _as_float(ev.get("price"))
            if isinstance(sym, str) and price is not None:
                xs_ys = prices.get(sym)
                if xs_ys is None:
                    xs_ys = prices[sym] = ([], [])
                xs_ys[0].append(n)
                xs_ys[1].append(price)
                price_at[n] = (sym, price)
                used = True
                if n == s.trigger_line:
                    s.trigger_symbol = sym
            lat = latency_ms(ev)
            if lat is not None:
                lat_x.append(n)
                lat_y.append(lat)
                latency_at[n] = lat
                used = True
            recv = ev.get(RECV_US)
            if type(recv) is int:
                if first_recv is None:
                    first_recv = recv
                recv_x.append(n)
                recv_y.append((recv - first_recv) / 1e6)
            if not used:
                s.skipped += 1
    s.lines = n
    s.marks = find_marks(events, meta)
    incident = meta.get("incident_id")
    name = incident if isinstance(incident, str) and incident else bundle_dir.name
    s.title = f"Incident {_label(name, 80)}" + (f" — {_label(kind)}" if s.trigger_type else "")
    return s


def _legend_label(anomaly_type: str, marks: Marks) -> str:
    found = marks.by_type[anomaly_type]
    if not found:
        return f"{anomaly_type}: none"
    if anomaly_type == SEQUENCE_GAP:
        text = f"{anomaly_type}: {marks.counter(anomaly_type):,} missing ids, confirmed at {len(found):,} lines"
    elif anomaly_type == LATENCY_SPIKE:
        text = f"{anomaly_type}: {len(found):,}, on the rolling p99"
    else:
        text = f"{anomaly_type}: {len(found):,}"
    if len(found) > DENSE_MARKS:
        text += " (dense: strip only)"
    return text


def _log_ticks(lo_decade: int, hi_decade: int) -> list[float]:
    """One tick per decade, thinned to at most :data:`MAX_LOG_LABELS` labels."""
    step = max(1, math.ceil((hi_decade - lo_decade + 1) / MAX_LOG_LABELS))
    return [10.0**d for d in range(lo_decade, hi_decade + 1, step)]


def _ms_label(value: float, _pos: object = None) -> str:
    return f"{value:,.6g}"


def latency_limits(values: list[float], threshold_ms: float | None) -> tuple[int, int]:
    """The decades the log latency axis spans: every positive sample and the spike threshold, and at
    least two decades so it carries three or more labels."""
    shown = [v for v in values if v > 0]
    if threshold_ms is not None and threshold_ms > 0:
        shown.append(threshold_ms)
    if not shown:
        return -1, 3
    lo = math.floor(math.log10(min(shown)))
    hi = math.ceil(math.log10(max(shown) * 1.5))
    if hi - lo < 2:
        lo = hi - 2
    return lo, hi


def render_chart(bundle_dir: str | os.PathLike[str]) -> Path:
    """Write ``<bundle_dir>/chart.png`` and return its path; raises :class:`ChartError` on a bad bundle."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise ChartError(f"{bundle}: not a directory")
    series = read_series(bundle)
    fig = draw(series)
    out = bundle / CHART_FILE
    tmp = bundle / f".{CHART_FILE}.{secrets.token_hex(4)}.tmp"  # unique: P2 and mercury-report may draw at once
    try:
        with tmp.open("wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ChartError(f"{out}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def draw(series: Series) -> Any:
    """The chart's matplotlib ``Figure`` (laid out on save): the anomaly strip, one price panel per
    symbol (the most active first), the latency panel, and the legend below them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    marks = series.marks
    symbols = sorted(series.prices, key=lambda k: (-len(series.prices[k][0]), k))
    shown = symbols[:MAX_SYMBOL_PANELS]
    price_panels = max(len(shown), 1)
    fig = Figure(figsize=(WIDTH_IN, 1.9 * price_panels + 5.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        price_panels + 2, 1, sharex=True, height_ratios=[0.9] + [1.0] * price_panels + [1.3], squeeze=True
    )
    strip, price_axes, lat_ax = axes[0], axes[1:-1], axes[-1]
    trigger = series.trigger_line

    subtitle = f"{series.lines:,} lines in {EVENTS_FILE}"
    if series.skipped:
        subtitle += f", {series.skipped:,} unusable (malformed or without price and latency)"
    if len(symbols) > len(shown):
        subtitle += f"; {len(symbols) - len(shown)} less active symbol(s) not shown"
    fig.suptitle(f"{series.title}\n{subtitle}", fontsize=11)

    dense = {t for t in MARK_TYPES if len(marks.by_type[t]) > DENSE_MARKS}
    rows = range(len(MARK_TYPES))
    last = max(series.lines, trigger or 0)
    strip.eventplot(
        [_rug(marks.lines(t), last) for t in MARK_TYPES],
        lineoffsets=list(rows),
        linelengths=0.75,
        linewidths=[0.5 if t in dense else 1.4 for t in MARK_TYPES],
        colors=[STYLES[t].color for t in MARK_TYPES],
    )
    strip.set_yticks(list(rows), list(MARK_TYPES), fontsize=8)
    for tick, t in zip(strip.get_yticklabels(), MARK_TYPES, strict=True):
        tick.set_color(STYLES[t].color)
    strip.set_ylim(len(MARK_TYPES) - 0.5, -0.5)
    strip.set_title("anomalies as re-detected over the bundle: one tick per anomalous event", fontsize=9, loc="left")

    if not shown:
        price_axes[0].text(
            0.5,
            0.5,
            "no events with a product_id and price",
            ha="center",
            va="center",
            transform=price_axes[0].transAxes,
        )
        price_axes[0].set_ylabel("price")
    for ax, sym in zip(price_axes, shown, strict=False):
        xs, ys = series.prices[sym]
        dots = len(xs) <= PRICE_DOTS
        ax.plot(xs, ys, lw=0.8, marker="." if dots else "none", ms=2, color=PRICE_COLOR, alpha=0.85)
        ax.set_ylabel(f"{_label(sym, 16)}\nprice (quote ccy)")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    panel_of = {sym: ax for ax, sym in zip(price_axes, shown, strict=False)}
    for t in MARK_TYPES:
        if t in dense or t == LATENCY_SPIKE:
            continue
        style = STYLES[t]
        points: dict[str, tuple[list[int], list[float]]] = {}
        for m in marks.by_type[t]:
            at = series.price_at.get(m.line)
            if at is not None and at[0] in panel_of:
                xs_ys = points.setdefault(at[0], ([], []))
                xs_ys[0].append(m.line)
                xs_ys[1].append(at[1])
        for sym, (xs, ys) in points.items():
            panel_of[sym].plot(
                xs, ys, ls="none", marker=style.marker, ms=5, mfc="none", mew=1.1, color=style.color, zorder=3
            )

    lx, ly = series.latency
    threshold = marks.settings.get("LATENCY_SPIKE_THRESHOLD_MS")
    lo, hi = latency_limits(ly, threshold)
    lat_ax.set_yscale("log")
    lat_ax.set_ylim(10.0**lo, 10.0**hi)
    lat_ax.yaxis.set_major_locator(FixedLocator(_log_ticks(lo, hi)))
    lat_ax.yaxis.set_major_formatter(FuncFormatter(_ms_label))
    lat_ax.yaxis.set_minor_locator(FixedLocator([k * 10.0**d for d in range(lo, hi) for k in (2.0, 5.0)]))
    lat_ax.yaxis.set_minor_formatter(NullFormatter())
    positive = [(x, y) for x, y in zip(lx, ly, strict=True) if y > 0]
    if positive:
        px, py = zip(*positive, strict=True)
        lat_ax.plot(px, py, ".", ms=2, color=LATENCY_COLOR)
    p99_x, p99_y = rolling_p99(lx, ly, marks.settings)
    if any(v > 0 for v in p99_y):
        lat_ax.plot(p99_x, p99_y, drawstyle="steps-post", lw=1.3, color=P99_COLOR, zorder=2)
    spikes = marks.by_type[LATENCY_SPIKE]
    if spikes and len(spikes) <= DENSE_MARKS:
        sample = {line: k for k, line in enumerate(lx, 1)}
        size = marks.settings["LATENCY_BUFFER_SIZE"]
        at = [(m.line, window_p99(ly, sample[m.line], size)) for m in spikes if m.line in sample]
        at = [(x, y) for x, y in at if y > 0]
        if at:
            style = STYLES[LATENCY_SPIKE]
            sx, sy = zip(*at, strict=True)
            lat_ax.plot(sx, sy, ls="none", marker=style.marker, ms=8, mfc="none", mew=1.6, color=style.color, zorder=3)
    notes = []
    if not lx:
        notes.append("no events with P1 and P2 timestamps")
    elif len(positive) < len(lx):
        notes.append(f"{len(lx) - len(positive):,} samples ≤ 0 ms not shown on the log axis")
    if notes:
        lat_ax.text(0.5, 0.5, "; ".join(notes), ha="center", va="center", transform=lat_ax.transAxes, fontsize=9)
    if threshold is not None:
        lat_ax.axhline(threshold, color="#555555", ls=":", lw=1.0)
    lat_ax.set_ylabel("P1→P2 latency\nms (log)")
    lat_ax.set_xlabel(f"event index: line in {EVENTS_FILE} (P2's arrival order)")

    for ax in axes:
        ax.grid(True, alpha=0.3)
        if trigger is not None:
            ax.axvline(trigger, color=TRIGGER_COLOR, lw=1.2, ls="--", alpha=0.8, zorder=1)
    lat_ax.grid(True, which="minor", alpha=0.12)
    if trigger is not None:
        ring = {"marker": "o", "ms": 10, "mfc": "none", "mew": 2, "color": TRIGGER_COLOR, "zorder": 4}
        at = series.price_at.get(trigger)
        if at is not None and at[0] in panel_of:
            panel_of[at[0]].plot([trigger], [at[1]], **ring)
        lat = series.latency_at.get(trigger)
        if lat is not None and lat > 0:
            lat_ax.plot([trigger], [lat], **ring)
    if last:
        strip.set_xlim(0.5, last + 0.5)
    _receive_time_axis(strip, series.received)

    handles = []
    if trigger is not None:
        kind = f"{_label(series.trigger_type)} " if series.trigger_type else ""
        handles.append(
            Line2D(
                [],
                [],
                color=TRIGGER_COLOR,
                ls="--",
                marker="o",
                mfc="none",
                mew=2,
                label=f"trigger: {kind}at line {trigger:,}",
            )
        )
    for t in MARK_TYPES:
        style = STYLES[t]
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker=style.marker,
                mfc="none",
                mew=1.4,
                ms=7,
                color=style.color,
                label=_legend_label(t, marks),
            )
        )
    handles.append(Line2D([], [], color=PRICE_COLOR, lw=0.8, label="trade price"))
    handles.append(Line2D([], [], color=LATENCY_COLOR, marker=".", ls="none", label="P1→P2 latency per event"))
    settings = marks.settings
    handles.append(
        Line2D(
            [],
            [],
            color=P99_COLOR,
            lw=1.3,
            label=f"rolling p99 as the detector evaluates it (last {settings['LATENCY_BUFFER_SIZE']:,} samples, "
            f"every {settings['LATENCY_EVAL_EVERY']:,})",
        )
    )
    if threshold is not None:
        handles.append(
            Line2D([], [], color="#555555", ls=":", label=f"latency spike threshold (p99): {threshold:,.6g} ms")
        )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=3,
        fontsize=8.5,
        frameon=False,
        title=_legend_title(series),
        title_fontsize=8.5,
    )
    return fig


def _rug(lines: list[int], last: int) -> list[float]:
    """``lines`` merged to :data:`RUG_COLUMNS` columns over ``1 .. last``: what a pixel can show."""
    if len(lines) <= RUG_COLUMNS or last <= RUG_COLUMNS:
        return [float(x) for x in lines]
    step = last / RUG_COLUMNS
    return [0.5 + (c + 0.5) * step for c in sorted({int((x - 0.5) // step) for x in lines})]


def _legend_title(series: Series) -> str:
    marks = series.marks
    config = "settings from meta.json" if marks.from_meta else "P2's default settings (meta.json has none)"
    return (
        f"Anomalies as re-detected over the bundle by P2's detectors ({config}), which start cold at line 1: "
        "what P2 saw before the bundle is not known to them"
    )


def _receive_time_axis(ax: Any, received: tuple[list[int], list[float]]) -> None:
    """A top axis giving P2's receive time at the lines the bottom axis labels. Receive times come in
    bursts (one stamp per socket read), so ticks evenly spaced in seconds would crowd; the ticks
    stay on the line grid and only their labels are times."""
    xs, ts = received
    if len(xs) < 2 or ts[-1] <= 0:
        return
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    x = np.asarray(xs, dtype=float)
    t = np.maximum.accumulate(np.asarray(ts, dtype=float))
    decimals = min(3, max(0, 2 - math.floor(math.log10(t[-1]))))
    top = ax.secondary_xaxis("top")
    top.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{float(np.interp(v, x, t)):,.{decimals}f}"))
    top.set_xlabel("P2 receive time at that line, s after the first stamped line", fontsize=9)
    top.tick_params(labelsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mercurystream.p2.incident.chart",
        description="Render chart.png (anomalies, price per symbol, P1→P2 latency, trigger) for incident bundles.",
    )
    parser.add_argument("bundle_dirs", nargs="+", type=Path, metavar="BUNDLE_DIR")
    args = parser.parse_args(argv)
    status = 0
    for bundle in args.bundle_dirs:
        try:
            print(render_chart(bundle))
        except ChartError as exc:
            print(f"chart: {exc}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
