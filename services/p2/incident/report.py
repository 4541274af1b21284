"""The incident report: ``report.md`` rendered from a bundle's ``meta.json`` and ``events.jsonl`` alone.

The bundle writer renders it with every bundle; ``mercury-report data/incidents/`` regenerates all
of them (after a template change, or for bundles copied from elsewhere). Everything taken from the
events is escaped, so a hostile product id or a backtick in a field cannot break the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import stat
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from mercurystream.p2.detectors import DUPLICATE, LATENCY_SPIKE, OUT_OF_ORDER, SEQUENCE_GAP, nearest_rank
from mercurystream.p2.flight_recorder import MANUAL
from mercurystream.p2.incident import reproduce
from mercurystream.p2.incident.marks import STYLES
from mercurystream.shared.clip import clip, join_clipped
from mercurystream.shared.event import latency_ms

REPORT_FILE = "report.md"
META_FILE = "meta.json"
EVENTS_FILE = "events.jsonl"
CHART_FILE = "chart.png"
MAX_SHOWN_CHARS = 2000
"""Longer event lines are cut in the evidence (the bundle keeps them whole)."""

CHART_PENDING = "pending"
CHART_NOT_DRAWN = "not_drawn"
CHART_FAILED = "failed"
_CHART_NOTES = {
    CHART_PENDING: "Not drawn yet: P2 draws it once it has CPU to spare, then rewrites this report.",
    CHART_NOT_DRAWN: "Not drawn: P2 stopped before it had CPU to spare for it.",
    CHART_FAILED: "Not drawn: the renderer failed (P2's log says why).",
}
"""Why a bundle has no chart yet, as its report says it (the bundle writer knows; the files do not)."""
_EVIDENCE_PENDING = "Not rendered yet: P2 adds the evidence and the per-symbol table with the chart."

_MD_SPECIAL = re.compile(r"[\\`*\[\]|<>~&\n\r\t]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
"""What can change Markdown's meaning inside a line. An underscore between two alphanumerics cannot
open or close emphasis, so ``sequence_gap`` stays readable in the raw file."""
_MD_REPLACE = {"&": "&amp;", "\n": " ", "\r": " ", "\t": " "}
_BACKTICKS = re.compile(r"`+")


class ReportError(Exception):
    """A bundle that cannot be reported on (no or unreadable meta.json); ``str()`` is one line."""


def md(value: object) -> str:
    """Text safe inside a Markdown paragraph or table cell: meaningful punctuation escaped, one line."""
    return _MD_SPECIAL.sub(_escape, str(value))


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _MD_REPLACE.get(c) or "\\" + c


def code_block(lines: list[str], lang: str = "") -> str:
    """A fenced block whose fence is longer than any backtick run inside, so nothing can close it."""
    longest = max((len(m) for s in lines for m in _BACKTICKS.findall(s)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([fence + lang, *lines, fence])


def _shown(raw: str) -> str:
    if len(raw) <= MAX_SHOWN_CHARS:
        return raw
    return f"{raw[:MAX_SHOWN_CHARS]}... ({len(raw) - MAX_SHOWN_CHARS} more characters)"


def _num(v: object) -> bool:
    return type(v) is int or type(v) is float


def _fmt_num(v: object) -> str:
    return f"{v:,}" if _num(v) else md(v)


def _fmt_ms(v: object) -> str:
    return f"{v:.3f}" if _num(v) else "n/a"


def _fmt_time(iso: object) -> str:
    if isinstance(iso, str):
        try:
            return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
        except ValueError:
            pass
    return md(iso)


_KEPT = ("type", "product_id", "price", "trade_id", "backfilled")
"""The fields the report filters and sums events by; any other is read from the line when shown."""
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\r|\n)|([^\r\n]+)")
"""One line as ``bytes.splitlines`` cuts them, and its content."""


class _Event:
    """One line of ``events.jsonl``: its number, the :data:`_KEPT` fields and its latency, and where it
    lies in the file's bytes.

    A bundle holds thousands of events and P2 renders its report while the stream runs (at worst while
    it is overloaded, when a latency incident fires): keeping every parsed object and decoded line
    cost about 800 bytes an event on top of the file, a third of that as slots. The few events shown
    are read again from their line.
    """

    __slots__ = ("_data", "_end", "_start", "backfilled", "latency", "line", "price", "product_id", "trade_id", "type")

    def __init__(self, line: int, data: bytes, start: int, end: int, obj: dict[str, Any] | None) -> None:
        self.line = line
        self._data = data
        self._start = start
        self._end = end
        if obj is None:
            self.type = self.product_id = self.price = self.trade_id = self.backfilled = self.latency = None
        else:
            self.type, self.product_id, self.price, self.trade_id, self.backfilled = map(obj.get, _KEPT)
            self.latency = latency_ms(obj)

    @property
    def raw_bytes(self) -> bytes:
        return self._data[self._start : self._end]

    @property
    def raw(self) -> str:
        return self.raw_bytes.decode("utf-8", "replace")

    def get(self, key: str) -> Any:
        if key in _KEPT:
            return getattr(self, key)
        try:
            obj = orjson.loads(self._data[self._start : self._end])
        except orjson.JSONDecodeError:
            return None
        return obj.get(key) if isinstance(obj, dict) else None


_STRING = (lambda v: isinstance(v, str), "a string")
_INTEGER = (lambda v: type(v) is int, "an integer")
_BOOLEAN = (lambda v: type(v) is bool, "true or false")
_LIST = (lambda v: type(v) is list, "a list")
_OBJECT = (lambda v: type(v) is dict, "an object")
_META_FIELDS = {
    "incident_id": _STRING,
    "type": _STRING,
    "reason": _STRING,
    "product_id": _STRING,
    "triggered_at": _STRING,
    "affected_symbols": _LIST,
    "total_events": _INTEGER,
    "pre_events": _INTEGER,
    "post_events": _INTEGER,
    "post_target": _INTEGER,
    "trigger_line": _INTEGER,
    "complete": _BOOLEAN,
    "counters_at_trigger": _OBJECT,
    "config": _OBJECT,
    "suppressed_triggers": _LIST,
    "suppressed_unlisted": _INTEGER,
    "detail": _OBJECT,
    "gaps": _LIST,
    "nats": _OBJECT,
}
"""The type of each field the bundle writer puts in ``meta.json`` (``null`` reads as absent). A bundle
whose meta says otherwise was not written by P2 as it is, and is refused with the field named rather
than reported on from values that mean something else."""
_DETAIL_FIELDS = {"ranges": _LIST, "run_p99_ms": _LIST}
_JSON_NAMES = {dict: "object", list: "list", str: "str", int: "int", float: "float", bool: "bool"}
MAX_META_BYTES = 16 << 20
"""A bigger ``meta.json`` is refused unread: P2 writes a few kB, and the CLI must not load any file it is pointed at."""


def _check_fields(bundle: Path, data: dict[str, Any], fields: dict[str, Any], prefix: str = "") -> None:
    for key, (ok, expected) in fields.items():
        value = data.get(key)
        if value is not None and not ok(value):
            got = _JSON_NAMES.get(type(value), type(value).__name__)
            raise ReportError(f"{bundle}: {META_FILE}: {prefix}{key} must be {expected}, got {got}")


def meta_json(obj: Any) -> bytes:
    """``obj`` as indented JSON: orjson, or the standard library for what orjson refuses.

    A counter of a hostile stream (the sum of the ids missing behind a gap to trade id 2**63 - 1)
    outgrows 64 bits, which orjson cannot write: the whole bundle was lost over it.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str)
    except orjson.JSONEncodeError:
        return json.dumps(obj, indent=2, default=str, ensure_ascii=False).encode()


def _load_meta(bundle: Path) -> dict[str, Any]:
    """``meta.json`` as an object with every known field of the right type, else :class:`ReportError`."""
    path = bundle / META_FILE
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ReportError(f"{bundle}: {META_FILE} is not a regular file")
        if info.st_size > MAX_META_BYTES:
            raise ReportError(f"{bundle}: {META_FILE} is larger than {MAX_META_BYTES >> 20} MiB")
        meta = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ReportError(f"{bundle}: no {META_FILE}") from None
    except OSError as exc:
        raise ReportError(f"{bundle}: unreadable {META_FILE}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{bundle}: unreadable {META_FILE}: {exc}") from None
    if not isinstance(meta, dict):
        raise ReportError(f"{bundle}: {META_FILE} is not a JSON object")
    _check_fields(bundle, meta, _META_FIELDS)
    if isinstance(meta.get("detail"), dict):
        _check_fields(bundle, meta["detail"], _DETAIL_FIELDS, "detail.")
    return meta


MAX_REPORT_EVENTS = 100_000
"""At most this many lines of ``events.jsonl`` are read for a report (P2's bundles hold
``FLIGHT_PRE_EVENTS + FLIGHT_POST_EVENTS``, 7,000 by default); the report says what it left out."""
MAX_REPORT_BYTES = 32 << 20
"""At most this many bytes of ``events.jsonl`` are read for a report (P2's bundles hold at most twice
``FLIGHT_RING_BYTES``, 4 MiB by default). A 5 MB file of 2.5 million short lines took 558 MB when
every line was kept; what is read is held as bytes plus a few slots an event, so the two bounds
hold the report near 60 MB whatever the file."""
_READ_CHUNK = 1 << 16


class Cut:
    """Where the report stopped reading ``events.jsonl``: after ``lines`` lines and ``bytes_read`` of
    the file's ``size`` bytes, because of ``bound`` (``events`` or ``bytes``)."""

    __slots__ = ("bound", "bytes_read", "lines", "size")

    def __init__(self, bound: str, lines: int, bytes_read: int, size: int) -> None:
        self.bound = bound
        self.lines = lines
        self.bytes_read = bytes_read
        self.size = size

    def sentence(self) -> str:
        limit = f"{MAX_REPORT_EVENTS:,} lines" if self.bound == "events" else f"{MAX_REPORT_BYTES >> 20} MiB"
        return (
            f"{EVENTS_FILE} is larger than a report reads ({limit}): the evidence, the per-symbol table and "
            f"the line counts are of its first {self.lines:,} lines ({self.bytes_read:,} of {self.size:,} "
            f"bytes); the remaining {self.size - self.bytes_read:,} bytes are left out."
        )


def _load(bundle: Path) -> tuple[dict[str, Any], list[_Event], bool, Cut | None]:
    """``meta.json``, the events read, whether there is an events file, and where reading stopped early.

    The file is read a line at a time, never whole: at most :data:`MAX_REPORT_EVENTS` lines and
    :data:`MAX_REPORT_BYTES` bytes (a longer line is not read past the bound either)."""
    meta = _load_meta(bundle)
    events: list[_Event] = []
    try:
        f = (bundle / EVENTS_FILE).open("rb")
    except OSError:
        return meta, events, False, None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            return (meta, *_read_events(f, size, events))
        except OSError:
            return meta, events, False, None


def _read_events(f: Any, size: int, events: list[_Event]) -> tuple[list[_Event], bool, Cut | None]:
    data = bytearray()
    shared: dict[str, str] = {}
    n = 0
    while True:
        base = len(data)
        room = MAX_REPORT_BYTES - base
        piece = f.readline(min(_READ_CHUNK, room + 1))
        while piece and not piece.endswith(b"\n") and len(piece) <= room:
            more = f.readline(min(_READ_CHUNK, room + 1 - len(piece)))
            if not more:
                break
            piece += more
        if not piece:
            return events, True, None
        if n >= MAX_REPORT_EVENTS:
            return events, True, Cut("events", n, base, max(size, base + len(piece)))
        if len(piece) > room:
            return events, True, Cut("bytes", n, base, max(size, base + len(piece)))
        data += piece
        for m in _LINE.finditer(piece):
            start, end = m.span(1) if m.group(2) is None else m.span(2)
            n += 1
            try:
                obj = orjson.loads(piece[start:end])
            except orjson.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                obj = None
            elif type(obj.get("product_id")) is str:
                obj["product_id"] = shared.setdefault(obj["product_id"], obj["product_id"])
            events.append(_Event(n, data, base + start, base + end, obj))


def render_report(
    bundle_dir: str | os.PathLike[str],
    replay_path: str | None = None,
    *,
    chart_note: str | None = None,
    summary_only: bool = False,
) -> str:
    """``report.md`` for one bundle. ``replay_path`` is the events file named in the Reproduce command
    (the bundle writer passes the final path while it still writes into a temporary directory).
    ``chart_note`` (``CHART_PENDING``, ``CHART_NOT_DRAWN``, ``CHART_FAILED``) says why the chart is
    missing; it is ignored once the chart exists.

    ``summary_only`` renders from ``meta.json`` alone, without reading the events: what P2 writes
    while the chart waits for spare CPU, since parsing thousands of captured lines for the evidence
    takes the GIL from a loop that is usually at its limit when an incident fires. The full report
    replaces it with the chart."""
    bundle = Path(bundle_dir)
    cut: Cut | None = None
    if summary_only:
        meta, events, have_events = _load_meta(bundle), [], True
    else:
        meta, events, have_events, cut = _load(bundle)
    incident_id = meta.get("incident_id", bundle.name)
    itype = str(meta.get("type", "unknown"))
    pre = meta.get("pre_events", 0)
    post = meta.get("post_events", 0)
    total = len(events) if not summary_only else sum(v for v in (pre, post) if _num(v))
    symbols = meta.get("affected_symbols") or []
    suppressed = meta.get("suppressed_triggers") or []
    unlisted = meta.get("suppressed_unlisted") or 0
    complete = meta.get("complete", True)
    trigger_line = meta.get("trigger_line")

    out: list[str] = [
        f"# Incident Report: {md(incident_id)}",
        "",
        "## Summary",
        "",
        "| Field | Value |",
        "|-------|-------|",
    ]
    out.append(f"| **Type** | {md(itype)} |")
    out.append(f"| **Triggered** | {_fmt_time(meta.get('triggered_at'))} |")
    out.append(f"| **Affected Symbols** | {md(join_clipped(symbols, ', ')) or 'n/a'} |")
    out.append(f"| **Total Events** | {total:,} ({_fmt_num(pre)} pre + {_fmt_num(post)} post) |")
    out.append(f"| **Trigger Event** | line {_fmt_num(trigger_line)} of {EVENTS_FILE} |")
    bound = _pre_bound(meta)
    if bound:
        out.append(f"| **Pre-window Bound** | {bound} |")
    if complete:
        out.append("| **Capture** | complete |")
    else:
        out.append(
            f"| **Capture** | incomplete: finalized at shutdown with {_fmt_num(post)} of "
            f"{_fmt_num(meta.get('post_target', '?'))} post events |"
        )
    out.append(f"| **Suppressed Triggers** | {len(suppressed) + unlisted} |")
    out += ["", f"**Reason:** {md(meta.get('reason', ''))}", ""]
    if not have_events:
        out += [f"> {EVENTS_FILE} is missing from this bundle.", ""]
    elif cut is not None:
        out += [f"> {cut.sentence()}", ""]
    elif total != (pre if _num(pre) else 0) + (post if _num(post) else 0):
        out += [f"> {EVENTS_FILE} has {total:,} lines but meta.json counts {md(pre)} + {md(post)}.", ""]

    out += _gaps_section(meta.get("gaps"))
    out += ["## Evidence", ""]
    if summary_only:
        out += [f"{_EVIDENCE_PENDING} `mercury-report {_final_dir(bundle, replay_path)}` renders it now.", ""]
        out += _tail(bundle, meta, replay_path, chart_note)
        return "\n".join(out)
    detail = meta.get("detail") if isinstance(meta.get("detail"), dict) else {}
    chart = (bundle / CHART_FILE).is_file()
    if itype == DUPLICATE:
        out += _duplicate_evidence(meta, detail, events, chart)
    elif itype == SEQUENCE_GAP:
        out += _gap_evidence(meta, detail, events, chart)
    elif itype == LATENCY_SPIKE:
        out += _latency_evidence(detail, events, trigger_line, chart)
    elif itype == MANUAL:
        out += [
            f"Dumped on demand (source: {md(detail.get('source', 'unknown'))}): the flight recorder's ring as it "
            "stood, with no post events. The trigger line is the last event in the ring.",
            "",
        ]
        out += _chart_ref(chart, _marked(itype) + _trigger_at(trigger_line))
    else:
        out += _chart_ref(chart, _marked(itype) + _trigger_at(trigger_line))
        out += [code_block([meta_json(detail).decode()], "json"), ""]

    out += _symbols_section(events, chart)
    if suppressed:
        out += ["## Suppressed Triggers", "", "| Line | Type | Symbol | At |", "|------|------|--------|----|"]
        for s in suppressed[:50]:
            if isinstance(s, dict):
                out.append(
                    f"| {_fmt_num(s.get('line'))} | {md(s.get('type'))} | {md(clip(s.get('product_id') or ''))} "
                    f"| {md(s.get('at'))} |"
                )
        if len(suppressed) + unlisted > 50:
            out.append(f"| ... | {len(suppressed) + unlisted - 50} more | | |")
        out.append("")
    checked = reproduce.check([e.raw_bytes for e in events], meta) if have_events else None
    out += _tail(bundle, meta, replay_path, chart_note, checked)
    return "\n".join(out)


_PRE_BOUNDS = {
    "events": ("events: the ring was full", "FLIGHT_PRE_EVENTS", ""),
    "bytes": ("bytes: the ring was full in bytes", "FLIGHT_RING_BYTES", " bytes"),
    "age": ("age: older events had left the ring", "FLIGHT_MAX_AGE_S", " s"),
    "none": ("none: every event since P2 started", None, ""),
}


def _pre_bound(meta: dict[str, Any]) -> str:
    """What cut the pre-window, from ``pre_bound`` and the configuration (empty for older bundles)."""
    known = _PRE_BOUNDS.get(meta.get("pre_bound"))  # type: ignore[arg-type]
    if known is None:
        return md(meta["pre_bound"]) if "pre_bound" in meta else ""
    text, setting, unit = known
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    if setting is not None and setting in config:
        text += f" ({setting}={md(config[setting])}{unit})"
    return text


def _tail(
    bundle: Path,
    meta: dict[str, Any],
    replay_path: str | None,
    chart_note: str | None,
    checked: reproduce.Reproduction | None = None,
) -> list[str]:
    """Counters, configuration, chart and the replay command (with what replaying it finds, when
    ``checked``): what follows the evidence."""
    out = _kv_section("Counters at Trigger", "Counter", meta.get("counters_at_trigger"))
    out += _kv_section("Configuration", "Setting", meta.get("config"))
    path = _events_path(bundle, replay_path)
    if (bundle / CHART_FILE).is_file():
        out += [
            "## Chart",
            "",
            _CHART_CAPTION,
            "",
            f"![Anomalies, price and latency around the trigger]({CHART_FILE})",
            "",
        ]
    elif chart_note in _CHART_NOTES:
        out += [
            "## Chart",
            "",
            f"{_CHART_NOTES[chart_note]} `mercury-report {_final_dir(bundle, replay_path)}` draws it now.",
            "",
        ]
    out += [
        "## Reproduce",
        "",
        "Replay the captured events with their original timestamps into a fresh P2:",
        "",
        code_block([f"python replay.py --file {shlex.quote(path)} --keep-timestamps --rate 0"], "bash"),
        "",
    ]
    if checked is not None and checked.reproduced is not None:
        verdict = "It reproduces the incident" if checked.reproduced else "**It does not reproduce the incident**"
        out += [f"{verdict}, checked in process with this bundle's configuration: {md(checked.why)}.", ""]
    command = nats_replay_command(meta.get("nats"))
    if command:
        out += [
            "Or replay the same stream sequences straight from JetStream into an isolated P2 (port 9002 in the "
            "demo; `--port` for another), restamped at send as P1 would:",
            "",
            code_block([command], "bash"),
            "",
        ]
    return out


def nats_replay_command(nats: object) -> str | None:
    """The ``mercury-replay --from-nats`` command for a bundle's ``nats`` record, or ``None`` without one."""
    if not isinstance(nats, dict) or not all(_num(nats.get(k)) for k in ("first_seq", "last_seq")):
        return None
    words = ["mercury-replay", "--from-nats"]
    if isinstance(nats.get("url"), str) and nats["url"]:
        words += ["--nats-url", nats["url"]]
    if isinstance(nats.get("stream"), str):
        words += ["--stream", nats["stream"]]
    words += ["--start-seq", str(int(nats["first_seq"])), "--end-seq", str(int(nats["last_seq"]))]
    products = nats.get("products")
    if isinstance(products, list) and products and all(isinstance(p, str) for p in products):
        words += ["--products", ",".join(products)]
    words += ["--rate", "0", "--port", "9002"]
    return " ".join(shlex.quote(w) for w in words)


_CHART_LINK = f"[chart]({CHART_FILE})"
_CHART_CAPTION = (
    "The chart marks every anomaly in the bundle as P2's detectors find it again over the bundle's "
    "events, with the settings in meta.json. They start cold at line 1, so what P2 saw before the "
    "bundle is not known to them, and the counts can differ from the counters at the trigger. "
    "The strip at the top has one row of ticks per type. "
    + "; ".join(f"{t}: {STYLES[t].words}" for t in STYLES)
    + f" (dense types, over a few hundred, only in the strip; {OUT_OF_ORDER} usually is one). "
    "The trigger is the red circle on the red dashed line. The x axis is the line in events.jsonl."
)


def _marked(itype: str) -> str:
    """Where the chart marks anomalies of ``itype``, as a sentence starting after "On the chart, "."""
    style = STYLES.get(itype)
    if style is None:
        return ""
    where = "the latency panel's rolling p99" if itype == LATENCY_SPIKE else "its symbol's price line"
    return (
        f"each {md(itype)} is {style.words} on {where} (left out when there are hundreds) "
        f"and a tick in the strip's {md(itype)} row"
    )


def _trigger_at(trigger_line: object) -> str:
    return f"; the trigger is the red circle at line {trigger_line:,}" if type(trigger_line) is int else ""


def _chart_ref(chart: bool, where: str) -> list[str]:
    """One sentence pointing from an evidence table to the chart (nothing while there is no chart)."""
    if not chart or not where:
        return []
    return [f"On the {_CHART_LINK}, {where}.", ""]


def _events_path(bundle: Path, replay_path: str | None) -> str:
    return replay_path if replay_path is not None else str(bundle / EVENTS_FILE)


def _final_dir(bundle: Path, replay_path: str | None) -> str:
    """The bundle's directory once in place, shell-quoted (the writer renders in a temporary one)."""
    return shlex.quote(str(Path(_events_path(bundle, replay_path)).parent))


def _event_row(e: _Event) -> str:
    return (
        f"| {e.line:,} | {md(clip(e.get('product_id')))} | {_fmt_num(e.get('trade_id'))} | {md(e.get('time'))} "
        f"| {_fmt_num(e.get('price'))} | {_fmt_num(e.get('last_size'))} |"
    )


_EVENT_HEADER = [
    "| Line | Symbol | Trade ID | Time | Price | Size |",
    "|------|--------|----------|------|-------|------|",
]


def _duplicate_evidence(meta: dict[str, Any], detail: dict[str, Any], events: list[_Event], chart: bool) -> list[str]:
    pid = meta.get("product_id")
    tid = detail.get("trade_id")
    hits = [e for e in events if e.get("product_id") == pid and e.get("trade_id") == tid and type(tid) is int]
    out = [f"### Duplicate trade_id {_fmt_num(tid)} of {md(pid)}", ""]
    if len(hits) < 2:
        out += [
            "The first occurrence is older than the bundle's pre-event window; the duplicate is shown.",
            "",
        ]
    else:
        out += [f"The trade id occurs {len(hits)} times in this bundle:", ""]
    shown = hits[:10]
    if shown:
        out += [*_EVENT_HEADER, *(_event_row(e) for e in shown), ""]
        out += _chart_ref(chart, _marked(DUPLICATE) + _trigger_at(meta.get("trigger_line")))
        out += [code_block([_shown(e.raw) for e in shown], "json"), ""]
    return out


def _gaps_section(gaps: object) -> list[str]:
    """Gaps P1 announced in this bundle and what its backfill recovered (meta.json's ``gaps``)."""
    rows = [g for g in gaps if isinstance(g, dict)] if isinstance(gaps, list) else []
    if not rows:
        return []
    out = [
        "## Gaps and Backfill",
        "",
        "| Product | Missing Ids | Found By | Backfilled Here | Recovered | Unrecoverable | Status |",
        "|---------|-------------|----------|-----------------|-----------|---------------|--------|",
    ]
    for g in rows[:50]:
        lo, hi = g.get("first_missing"), g.get("last_missing")
        span = f"{lo:,} .. {hi:,}" if _num(lo) and _num(hi) else f"{md(lo)} .. {md(hi)}"
        cells = [g.get(k) for k in ("backfilled", "recovered", "unrecoverable")]
        shown = " | ".join(f"{v:,}" if _num(v) else "n/a" for v in cells)
        out.append(f"| {md(g.get('product_id'))} | {span} | {md(g.get('source'))} | {shown} | {md(g.get('status'))} |")
    if len(rows) > 50:
        out.append(f"| ... {len(rows) - 50} more | | | | | | |")
    out += [
        "",
        "Backfilled trades came from the venue's REST history after the gap was announced; they arrive "
        "late by construction and are not counted as duplicates or out of order.",
        "",
    ]
    return out


def _gap_evidence(meta: dict[str, Any], detail: dict[str, Any], events: list[_Event], chart: bool) -> list[str]:
    pid = meta.get("product_id")
    ranges = [r for r in detail.get("ranges", []) if isinstance(r, list) and len(r) == 2 and all(_num(x) for x in r)]
    missing = sum(hi - lo + 1 for lo, hi in ranges)
    out = [f"### Missing trade ids of {md(pid)}", "", f"{missing:,} trade id(s) never arrived within the window:", ""]
    out += ["| Missing Range | Count |", "|---------------|-------|"]
    for lo, hi in ranges[:20]:
        out.append(f"| {lo:,} .. {hi:,} | {hi - lo + 1:,} |")
    if len(ranges) > 20:
        out.append(f"| ... {len(ranges) - 20} more ranges | |")
    out.append("")
    out += _chart_ref(
        chart,
        _marked(SEQUENCE_GAP)
        + ", at the line that confirmed the gap (the window's worth of later match events after the jump)"
        + _trigger_at(meta.get("trigger_line")),
    )
    matches = [
        e for e in events if e.get("product_id") == pid and e.get("type") == "match" and type(e.get("trade_id")) is int
    ]
    for lo, hi in ranges[:5]:
        around = [e for e in matches if lo - 3 <= e.get("trade_id") <= lo - 1 or hi + 1 <= e.get("trade_id") <= hi + 3]
        late = [e for e in matches if lo <= e.get("trade_id") <= hi and e.get("backfilled") is not True]
        out += [f"#### Trade ids around {lo:,} .. {hi:,}", ""]
        if around:
            out += [*_EVENT_HEADER, *(_event_row(e) for e in around[:20]), ""]
            lines = [e.line for e in around[:20]]
            out += _chart_ref(chart, f"these are lines {min(lines):,} to {max(lines):,} of the x axis")
        else:
            out += ["No neighbouring trade ids are in this bundle.", ""]
        if late:
            out += [
                f"{len(late)} of the missing ids arrived after the window (first at line {late[0].line:,}).",
                "",
            ]
    return out


def _latency_evidence(detail: dict[str, Any], events: list[_Event], trigger_line: object, chart: bool) -> list[str]:
    thr = detail.get("threshold_ms")
    run = detail.get("run_p99_ms") or []
    out = ["### Rolling p99 of P1 -> P2 latency", ""]
    out += ["| Evaluation | p99 (ms) |", "|------------|----------|"]
    out.append(f"| before the run | {_fmt_ms(detail.get('p99_before_ms'))} |")
    for k, v in enumerate(run, 1):
        label = "at the trigger" if k == len(run) else f"run {k}"
        out.append(f"| {label} | {_fmt_ms(v)} |")
    out += ["", f"Threshold: {_fmt_ms(thr)} ms over a window of {_fmt_num(detail.get('window'))} samples.", ""]
    out += _chart_ref(
        chart,
        "the latency panel's dark green step line is this rolling p99 as evaluated over the bundle, the "
        "dotted line the threshold, and " + _marked(LATENCY_SPIKE) + _trigger_at(trigger_line),
    )
    last = trigger_line if type(trigger_line) is int else len(events)
    sampled: list[tuple[float, _Event]] = []
    for e in events[:last]:
        if e.latency is not None:
            sampled.append((e.latency, e))
    if sampled:
        values = [v for v, _ in sampled]
        n = len(values)
        p99 = sorted(values)[nearest_rank(n) - 1]
        out += [f"p99 over the {n:,} pre events up to the trigger: {p99:.3f} ms.", ""]
        worst = sorted(sampled, key=lambda x: -x[0])[:10]
        out += ["#### Worst samples up to the trigger", ""]
        out += ["| Line | Symbol | Trade ID | Latency (ms) |", "|------|--------|----------|--------------|"]
        out += [
            f"| {e.line:,} | {md(clip(e.get('product_id')))} | {_fmt_num(e.get('trade_id'))} | {v:.3f} |"
            for v, e in worst
        ]
        out.append("")
        out += _chart_ref(chart, "these are the highest green dots of the latency panel, at the lines given")
    return out


def _symbols_section(events: list[_Event], chart: bool) -> list[str]:
    stats: dict[str, list[Any]] = {}
    for e in events:
        pid = e.get("product_id")
        if not isinstance(pid, str):
            continue
        pid = clip(pid)
        s = stats.get(pid)
        if s is None:
            s = stats[pid] = [0, 0, 0, None, None, None, None]
        s[0] += 1
        t = e.get("type")
        if t == "match":
            s[1] += 1
        elif t == "ticker":
            s[2] += 1
        price = e.get("price")
        if _num(price):
            s[3] = price if s[3] is None else min(s[3], price)
            s[4] = price if s[4] is None else max(s[4], price)
        tid = e.get("trade_id")
        if type(tid) is int:
            s[5] = tid if s[5] is None else min(s[5], tid)
            s[6] = tid if s[6] is None else max(s[6], tid)
    out = ["## Events by Symbol", ""]
    if not stats:
        return [*out, "No events with a product id.", ""]
    out += [
        "| Symbol | Events | Match | Ticker | Price Min | Price Max | Trade IDs |",
        "|--------|--------|-------|--------|-----------|-----------|-----------|",
    ]
    for pid in sorted(stats):
        n, m, t, pmin, pmax, tmin, tmax = stats[pid]
        ids = f"{tmin:,} .. {tmax:,}" if tmin is not None else "n/a"
        pmin_s = f"{pmin:,}" if pmin is not None else "n/a"
        pmax_s = f"{pmax:,}" if pmax is not None else "n/a"
        out.append(f"| {md(pid)} | {n:,} | {m:,} | {t:,} | {pmin_s} | {pmax_s} | {ids} |")
    out.append("")
    out += _chart_ref(
        chart, "each symbol has a price panel (the six most active), with its anomalies marked on the line"
    )
    return out


def _kv_section(title: str, key_name: str, data: object) -> list[str]:
    if not isinstance(data, dict) or not data:
        return []
    out = [f"## {title}", "", f"| {key_name} | Value |", "|---|---|"]
    out += [f"| {md(k)} | {md(v)} |" for k, v in data.items()]
    out.append("")
    return out


def write_report(
    bundle_dir: str | os.PathLike[str], replay_path: str | None = None, *, chart_note: str | None = None
) -> Path:
    """Render and replace ``report.md`` atomically (a reader never sees half a report). The temporary
    name is unique: P2 and ``mercury-report`` may rewrite the same report at once."""
    bundle = Path(bundle_dir)
    text = render_report(bundle, replay_path, chart_note=chart_note)
    target = bundle / REPORT_FILE
    tmp = bundle / f".{REPORT_FILE}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def bundles_under(directory: Path) -> list[Path]:
    """Bundle directories under ``directory`` (or ``directory`` itself if it is one): those holding a
    ``meta.json`` of any kind, so a broken one is reported rather than passed over. The writer's
    temporary directories (names starting with a dot) are skipped."""
    if _has_meta(directory):
        return [directory]
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".") and p.is_dir() and _has_meta(p))


def _has_meta(path: Path) -> bool:
    """A directory that cannot be looked into counts: the error is then reported for that bundle."""
    try:
        os.lstat(path / META_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


EXIT_OK = 0
EXIT_BUNDLE_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit 2, like every bad input to the CLI, instead of argparse's usage block."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every bundle's report was written, 1 when any failed (one line each on stderr, the
    others still written), 2 for a bad command line or a directory that cannot be listed."""
    parser = _Parser(
        prog="mercury-report",
        description="(Re)generate report.md, and chart.png where missing, for every incident bundle under a directory.",
        epilog="exit status: 0 every report written; 1 some bundle failed (one line each on stderr, "
        "the others still written); 2 bad arguments or no such directory.",
    )
    parser.add_argument("directory", nargs="?", default="data/incidents", help="default: data/incidents")
    charts = parser.add_mutually_exclusive_group()
    charts.add_argument("--charts", action="store_true", help="redraw every chart.png, not only missing ones")
    charts.add_argument("--no-charts", action="store_true", help="write reports only")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"mercury-report: {directory}: no such directory", file=sys.stderr)
        return EXIT_USAGE
    try:
        bundles = bundles_under(directory)
    except OSError as exc:
        print(f"mercury-report: {directory}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    for bundle in bundles:
        reason = _report_one(bundle, args)
        if reason is not None:
            failed += 1
            print(f"mercury-report: {reason}", file=sys.stderr)
    print(f"{len(bundles) - failed} report(s) written under {directory}", file=sys.stderr)
    return EXIT_BUNDLE_FAILED if failed else EXIT_OK


def _report_one(bundle: Path, args: argparse.Namespace) -> str | None:
    """Chart (where asked) and report for one bundle; the line saying why not, or ``None``.

    ``meta.json`` is checked before the chart is drawn, so a bundle refused costs no matplotlib.
    Anything else a hostile bundle provokes is caught here too: one bundle must not stop the rest."""
    try:
        _load_meta(bundle)
        _check_events_file(bundle)
        if not args.no_charts and (args.charts or not (bundle / CHART_FILE).exists()):
            too_large = _over_bounds(bundle)
            if too_large:
                print(f"mercury-report: {bundle}: no chart: {too_large}", file=sys.stderr)
            else:
                _draw_chart(bundle)
        path = write_report(bundle, str(bundle / EVENTS_FILE))
        print(path)
    except ReportError as exc:
        return str(exc)
    except OSError as exc:
        return f"{bundle}: {exc.strerror or exc}"
    except UnicodeEncodeError:
        return f"{bundle}: the path is not valid UTF-8, and the report quotes it"
    except Exception as exc:
        return f"{bundle}: cannot render the report: {type(exc).__name__}: {exc}"
    return None


def _over_bounds(bundle: Path) -> str | None:
    """Why ``events.jsonl`` is too large to chart (the renderer keeps every event), or ``None``.

    Counted a chunk at a time: the report itself reads such a file only up to its bounds and says so."""
    try:
        with (bundle / EVENTS_FILE).open("rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_REPORT_BYTES:
                return f"{EVENTS_FILE} is over {MAX_REPORT_BYTES >> 20} MiB"
            lines = 0
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                if lines > MAX_REPORT_EVENTS:
                    return f"{EVENTS_FILE} has over {MAX_REPORT_EVENTS:,} lines"
    except OSError:
        return None  # the chart says what it cannot read
    return None


def _check_events_file(bundle: Path) -> None:
    """A missing ``events.jsonl`` is said in the report; a FIFO or device there would block the reader."""
    try:
        mode = (bundle / EVENTS_FILE).stat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise ReportError(f"{bundle}: {EVENTS_FILE} is not a regular file")


def _draw_chart(bundle: Path) -> None:
    """A chart is evidence, not the report: failing to draw one (matplotlib missing included) is
    reported and the report still written."""
    try:
        from mercurystream.p2.incident.chart import ChartError, render_chart
    except ImportError as exc:
        print(f"mercury-report: {bundle}: no chart: cannot load the renderer ({exc})", file=sys.stderr)
        return
    try:
        render_chart(bundle)
    except Exception as exc:
        known = isinstance(exc, (ChartError, OSError, ValueError))
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        print(f"mercury-report: {bundle}: no chart: {reason}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
