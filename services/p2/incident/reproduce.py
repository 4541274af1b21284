"""Whether a bundle reproduces its incident: its own lines, replayed through fresh detectors.

The report's Reproduce command sends ``events.jsonl`` with its timestamps into a fresh P2. That P2's
detectors know only the bundle's lines, so an incident whose evidence began before the bundle's
first line is not found again: a gap whose jump came more than ``FLIGHT_PRE_EVENTS`` lines before
its confirmation (``GAP_REORDER_WINDOW`` events *of its product*, which is many more lines when many
products trade), a duplicate whose first copy is older than the ring, or a latency spike whose
episode (where the detector's evaluations are counted from) began before it. :func:`check` runs the
same thing in process (P2's own ``normalize``, :class:`Detectors` and :class:`FlightRecorder`, with
the configuration in ``meta.json``) and says what the replay's first capture would be, so the report
can say whether its command reproduces the incident rather than promise it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from mercurystream.p2.batch import normalize
from mercurystream.p2.config import P2Settings
from mercurystream.p2.detectors import Detectors
from mercurystream.p2.flight_recorder import MANUAL, FlightRecorder
from mercurystream.shared.clock import now_us
from mercurystream.shared.wire import parse_payload

BATCH_LINES = 256
"""Lines per simulated read: detections do not depend on how a stream is cut (property-tested)."""


class Reproduction:
    """The outcome: ``reproduced`` is ``None`` when there is nothing to check (a manual dump)."""

    __slots__ = ("line", "reproduced", "type", "why")

    def __init__(self, reproduced: bool | None, why: str, type_: str | None = None, line: int | None = None) -> None:
        self.reproduced = reproduced
        self.why = why
        self.type = type_
        """The replay's first capture's type, when it has one."""
        self.line = line
        """Its trigger's line in ``events.jsonl`` (1-based)."""


def _settings(config: Mapping[str, Any]) -> SimpleNamespace:
    """P2's defaults, overridden by each value of the bundle's recorded configuration that P2's own
    field rules accept (``meta.json`` may have been edited or come from elsewhere)."""
    fields = P2Settings.model_fields
    values = {name: field.default for name, field in fields.items()}
    for key, value in config.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None or type(value) not in (int, float, bool):
            continue
        try:
            values[key] = TypeAdapter(Annotated[field.annotation, *field.metadata]).validate_python(value, strict=True)
        except ValidationError:
            continue
    return SimpleNamespace(**values)


def check(lines: Sequence[bytes], meta: Mapping[str, Any]) -> Reproduction:
    """What replaying ``lines`` (a bundle's events, in order) into a fresh P2 captures first, against ``meta``."""
    itype = meta.get("type")
    trigger = meta.get("trigger_line")
    if itype == MANUAL:
        return Reproduction(None, "a manual dump has no trigger to reproduce")
    if type(trigger) is not int or not 1 <= trigger <= len(lines):
        return Reproduction(None, "meta.json names no trigger line within events.jsonl")
    raw = meta.get("config")
    s = _settings(raw if isinstance(raw, Mapping) else {})
    try:
        detectors = Detectors.from_settings(s)
        recorder = FlightRecorder(
            s.FLIGHT_PRE_EVENTS,
            s.FLIGHT_POST_EVENTS,
            0.0,
            clock=lambda: 0.0,
            wall_clock=lambda: 0.0,
            new_id=lambda _: "check",
            max_bytes=s.FLIGHT_RING_BYTES,
        )
    except (ValueError, OverflowError, MemoryError) as exc:
        return Reproduction(None, f"meta.json's config cannot be run here ({type(exc).__name__})")
    for start in range(0, len(lines), BATCH_LINES):
        chunk = list(lines[start : start + BATCH_LINES])
        numbers: Sequence[int] = range(start + 1, start + len(chunk) + 1)
        batch, errors = normalize(chunk, now_us())
        if errors:
            # Replay does not send a line P2 would not read (and P2 would not record it): the rest keep
            # their own line numbers.
            numbers = [n for n, line in zip(numbers, chunk, strict=True) if type(parse_payload(line)) is dict]
            batch, _ = normalize([lines[n - 1] for n in numbers], now_us())
        if batch is None:
            continue
        result = recorder.feed(batch.lines, detectors.process(batch).triggers(), batch.recv_ts_us)
        if result.started:
            cap = result.started[0]
            return _judged(cap.type, numbers[cap.anomaly.index], lines, itype, trigger)
    return Reproduction(False, f"replaying events.jsonl triggers nothing: {_missing(itype)}")


def _judged(got_type: str, line: int, lines: Sequence[bytes], itype: object, trigger: int) -> Reproduction:
    if got_type == itype and lines[line - 1] == lines[trigger - 1]:
        why = f"replaying events.jsonl triggers {got_type} on line {line}, as P2 did"
        return Reproduction(True, why, got_type, line)
    return Reproduction(
        False,
        f"replaying events.jsonl first triggers {got_type} on line {line}, not {itype} on line {trigger}",
        got_type,
        line,
    )


def _missing(itype: object) -> str:
    """Why a trigger's evidence may lie before the bundle, and what captures it."""
    if itype == "sequence_gap":
        return (
            "the gap's jump came before the bundle's first line (a gap is confirmed GAP_REORDER_WINDOW events "
            "of its own product after the jump); raise FLIGHT_PRE_EVENTS above products x GAP_REORDER_WINDOW, "
            "or replay the JetStream range"
        )
    if itype == "duplicate":
        return "the duplicate's first copy came before the bundle's first line; raise FLIGHT_PRE_EVENTS"
    if itype == "latency_spike":
        return (
            "the latency episode began before the bundle's first line, or the run's evaluations had fewer "
            "than LATENCY_BUFFER_SIZE samples before them in the bundle (the detector counts its evaluations "
            "from the episode's first sample above the threshold); raise FLIGHT_PRE_EVENTS above "
            "LATENCY_BUFFER_SIZE + LATENCY_EVAL_EVERY x LATENCY_SPIKE_CONSECUTIVE"
        )
    return "the evidence came before the bundle's first line; raise FLIGHT_PRE_EVENTS"
