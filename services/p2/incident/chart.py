"""``chart.png`` for an incident bundle: price per symbol and P1→P2 latency around the trigger.

Matplotlib costs ~1 s to import and tens of MB of memory, so P2 never loads it: the bundle writer
runs ``python -m mercurystream.p2.incident.chart <bundle_dir>`` as a subprocess (see
:func:`chart_command`), and matplotlib is imported only inside :func:`render_chart`.

The x axis is the line number in ``events.jsonl``, not exchange time: a bundle exists because
something in it is wrong (drifted, duplicated, reordered), and line order is what P2 saw.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from mercurystream.shared.event import latency_ms

EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
CHART_FILE = "chart.png"

MAX_SYMBOL_PANELS = 6
WIDTH_IN = 12.0
DPI = 100
TRIGGER_COLOR = "#d62728"


class ChartError(Exception):
    """The bundle cannot be charted; ``str()`` is the one line to show."""


@dataclass
class Series:
    """What the chart plots, read from one bundle; every unusable line is counted in ``skipped``."""

    prices: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    latency: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    lines: int = 0
    skipped: int = 0
    trigger_line: int | None = None
    trigger_symbol: str | None = None
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
    """Parse ``events.jsonl`` tolerantly: lines that are not JSON objects, or lack a usable field, are skipped."""
    path = bundle_dir / EVENTS_FILE
    meta = read_meta(bundle_dir)
    s = Series()
    trigger = meta.get("trigger_line")
    if type(trigger) is int and trigger > 0:
        s.trigger_line = trigger
    lat_x, lat_y = s.latency
    prices = s.prices
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
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
            used = False
            sym = ev.get("product_id")
            price = _as_float(ev.get("price"))
            if isinstance(sym, str) and price is not None:
                xs_ys = prices.get(sym)
                if xs_ys is None:
                    xs_ys = prices[sym] = ([], [])
                xs_ys[0].append(n)
                xs_ys[1].append(price)
                used = True
                if n == s.trigger_line:
                    s.trigger_symbol = sym
            lat = latency_ms(ev)
            if lat is not None:
                lat_x.append(n)
                lat_y.append(lat)
                used = True
            if not used:
                s.skipped += 1
    s.lines = n
    incident = meta.get("incident_id")
    kind = meta.get("type")
    name = incident if isinstance(incident, str) and incident else bundle_dir.name
    s.title = f"Incident {_label(name, 80)}" + (f" — {_label(kind)}" if isinstance(kind, str) and kind else "")
    return s


def render_chart(bundle_dir: str | os.PathLike[str]) -> Path:
    """Write ``<bundle_dir>/chart.png`` and return its path; raises :class:`ChartError` on a bad bundle."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise ChartError(f"{bundle}: not a directory")
    series = read_series(bundle)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    symbols = sorted(series.prices, key=lambda k: (-len(series.prices[k][0]), k))
    shown = symbols[:MAX_SYMBOL_PANELS]
    price_panels = max(len(shown), 1)
    fig = Figure(figsize=(WIDTH_IN, 2.0 * price_panels + 2.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(price_panels + 1, 1, sharex=True, height_ratios=[1.0] * price_panels + [1.2])
    trigger = series.trigger_line

    subtitle = f"{series.lines:,} lines in {EVENTS_FILE}"
    if series.skipped:
        subtitle += f", {series.skipped:,} unusable (malformed or without price and latency)"
    if len(symbols) > len(shown):
        subtitle += f"; {len(symbols) - len(shown)} less active symbol(s) not shown"
    fig.suptitle(f"{series.title}\n{subtitle}", fontsize=11)

    if not shown:
        axes[0].text(
            0.5, 0.5, "no events with a product_id and price", ha="center", va="center", transform=axes[0].transAxes
        )
        axes[0].set_ylabel("price")
    for ax, sym in zip(axes, shown, strict=False):
        xs, ys = series.prices[sym]
        ax.plot(xs, ys, lw=0.9, marker=".", ms=2.5, color="#1f77b4")
        ax.set_ylabel(f"{_label(sym, 16)}\nprice")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        if trigger is not None and sym == series.trigger_symbol:
            i = xs.index(trigger)
            ax.plot([trigger], [ys[i]], marker="o", ms=9, mfc="none", mew=2, color=TRIGGER_COLOR, label="trigger")
            ax.legend(loc="upper left", fontsize=8)

    lat_ax = axes[-1]
    lx, ly = series.latency
    if lx:
        lat_ax.plot(lx, ly, ".", ms=2.5, color="#2ca02c")
        lat_ax.set_yscale("symlog", linthresh=1.0)
        if trigger is not None and trigger in lx:
            j = lx.index(trigger)
            lat_ax.plot([trigger], [ly[j]], marker="o", ms=9, mfc="none", mew=2, color=TRIGGER_COLOR)
    else:
        lat_ax.text(
            0.5, 0.5, "no events with P1 and P2 timestamps", ha="center", va="center", transform=lat_ax.transAxes
        )
    lat_ax.set_ylabel("P1→P2 latency\nms")
    lat_ax.set_xlabel(f"line in {EVENTS_FILE}")

    for ax in axes:
        ax.grid(True, alpha=0.3)
        if trigger is not None:
            ax.axvline(trigger, color=TRIGGER_COLOR, lw=1.2, ls="--", alpha=0.8)
    if trigger is not None:
        axes[0].annotate(
            f"trigger (line {trigger})",
            xy=(trigger, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12),
            textcoords="offset points",
            color=TRIGGER_COLOR,
            fontsize=9,
        )
    last = max(series.lines, trigger or 0)
    if last:
        axes[0].set_xlim(0.5, last + 0.5)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mercurystream.p2.incident.chart",
        description="Render chart.png (price per symbol, P1→P2 latency, trigger marked) for incident bundles.",
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
