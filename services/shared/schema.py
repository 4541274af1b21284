"""The normalized trade: every field, its JSON kind, its bounds and who sets it, declared once.

Everything that needs the trade's shape is derived from :data:`FIELDS`:

- P1's pydantic validation (``shared.models.Trade``, :func:`pydantic_annotation`);
- P2's typed decoder (:data:`WireTrade`, a msgspec struct that only decodes a conforming, valid event);
- the per-event checks P2 applies to anything else (:func:`conforms`, :func:`drift_of`, :func:`invalid_reason`);
- the drift detector's required, typed and known keys (:data:`REQUIRED`, :data:`KNOWN_KEYS`);
- SYSTEM.md's event table (:func:`markdown_table`, held to the document by a test).

Two kinds of rule, kept apart on purpose. A value that breaks its field's *kind* (missing when
required, the wrong JSON type, an int outside int64, a number no float can hold, a string past its
length bound) is schema drift: the producer no longer speaks this schema. A value of the right kind
that no trade can have (a price of 0, an empty product id, an unparseable time) is an invalid trade:
the analytics skip it under the field's reason, while the detectors still see what they can use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from mercurystream.shared.timeparse import is_time

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
PRODUCT_ID_MAX = 64
"""Characters in a product id: Coinbase's longest are about 15; anything far longer is not a product."""
NAME_MAX = 32
"""Characters in a venue or feed name."""

DEFAULT_VENUE = "coinbase"


@dataclass(frozen=True, slots=True)
class Field:
    """One key of the normalized trade.

    ``kind`` is the JSON kind (``str``, ``int``: an integer within int64, ``number``: an int or a
    float a float can hold, ``bool``: ``true``/``false``). ``max_length`` bounds a string as part of
    its kind. ``gt``, ``ge``, ``min_length``, ``choices`` and ``time`` are value rules: a value
    breaking one is an invalid trade, counted under ``reason`` where the analytics check it.
    ``nullable``: whether the typed decoder takes a JSON ``null`` in this optional field as absent;
    P2's receive stamps are not, so a payload carrying a null one is taken event by event, where
    P2 replaces it with its own stamps (``p2.batch``).
    """

    name: str
    kind: Literal["str", "int", "number", "bool"]
    required: bool
    origin: Literal["venue", "P1", "P2"]
    doc: str
    max_length: int | None = None
    min_length: int | None = None
    gt: float | None = None
    ge: float | None = None
    choices: tuple[str, ...] | None = None
    time: bool = False
    reason: str | None = None
    nullable: bool = True


FIELDS: tuple[Field, ...] = (
    Field("type", "str", True, "venue", "`match` (matches channel) or `ticker`", choices=("match", "ticker")),
    Field(
        "product_id",
        "str",
        True,
        "venue",
        "`BTC-USD`",
        max_length=PRODUCT_ID_MAX,
        min_length=1,
        reason="missing_product",
    ),
    Field("price", "number", True, "venue", "> 0; the venue's decimal string as a float", gt=0, reason="invalid_price"),
    Field("last_size", "number", True, "venue", ">= 0; a `match`'s `size` maps here", ge=0, reason="invalid_size"),
    Field("time", "str", True, "venue", "exchange time, ISO-8601 UTC as sent", time=True, reason="invalid_time"),
    Field("trade_id", "int", True, "venue", "the venue's trade id, per product", reason="missing_trade_id"),
    Field("sequence", "int", False, "venue", "the venue's message sequence, when sent"),
    Field(
        "side",
        "str",
        False,
        "venue",
        "`buy`/`sell`: always the **taker's** (aggressor's) side; a Coinbase `match` carries the maker's, "
        "so P1 flips it (`shared/models.py: taker_side`)",
        choices=("buy", "sell"),
    ),
    Field("best_bid", "number", False, "venue", "ticker only"),
    Field("best_ask", "number", False, "venue", "ticker only"),
    Field("venue", "str", False, "P1", f"the venue; `{DEFAULT_VENUE}` when absent", max_length=NAME_MAX),
    Field(
        "feed", "str", False, "P1", "the venue API it came from (`exchange` or `advanced-trade`)", max_length=NAME_MAX
    ),
    Field(
        "backfilled",
        "bool",
        False,
        "P1",
        "`true` on a trade P1 fetched from the venue's REST history to fill a gap (`p1/backfill.py`); absent otherwise",
    ),
    Field("ingest_ts_ms", "int", True, "P1", "P1 wall clock at receipt (the seed's field)"),
    Field("ingest_ts_us", "int", False, "P1", "the same in microseconds; latency falls back to ms without it"),
    Field(
        "recv_ts_ms",
        "int",
        False,
        "P2",
        "P2 wall clock at receipt; kept if the frame already has it (a `null` one is replaced)",
        nullable=False,
    ),
    Field("recv_ts_us", "int", False, "P2", "the same in microseconds", nullable=False),
)

BY_NAME: Mapping[str, Field] = {f.name: f for f in FIELDS}
REQUIRED: Mapping[str, str] = {f.name: f.kind for f in FIELDS if f.required}
"""Required keys and their kind: a missing or mistyped one is schema drift."""
KNOWN_KEYS = frozenset(BY_NAME)
"""Every key of the normalized event; any other is kept in the recorded line and listed as unexpected."""
TRADE_CHECKS: tuple[Field, ...] = tuple(BY_NAME[n] for n in ("product_id", "trade_id", "price", "last_size", "time"))
"""What makes a trade count in the analytics, in the order the first failing one names the reason."""
REASONS: tuple[str, ...] = tuple(f.reason for f in TRADE_CHECKS if f.reason)
STAMPS = ("ingest_ts_ms", "ingest_ts_us", "recv_ts_ms", "recv_ts_us")


# --- the checks, one value at a time (the reference every faster path is held to) -------------------


def text_ok(value: str) -> bool:
    """Whether a string can be written as UTF-8: a JSON ``\\ud800`` escape makes a lone surrogate, which
    no log line, metric label or bundle can hold (one such product id failed every ``/metrics`` scrape)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _writable(text: str) -> str:
    """``text`` with any lone surrogate written as its escape, so a drift detail can be written as JSON."""
    return text if text_ok(text) else text.encode("utf-8", "backslashreplace").decode()


def kind_ok(field: Field, value: object) -> bool:
    """Whether ``value`` has ``field``'s kind: the schema-drift rule for one value."""
    t = type(value)
    if field.kind == "str":
        return (
            t is str
            and (field.max_length is None or len(value) <= field.max_length)  # type: ignore[arg-type]
            and text_ok(value)  # type: ignore[arg-type]
        )
    if field.kind == "int":
        return t is int and INT64_MIN <= value <= INT64_MAX  # type: ignore[operator]
    if field.kind == "bool":
        return t is bool
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if t is int:
        try:
            float(value)  # type: ignore[arg-type]
        except OverflowError:
            return False
        return True
    return False


def value_ok(field: Field, value: Any) -> bool:
    """Whether a value of the right kind is one a trade can have."""
    if field.gt is not None and not value > field.gt:
        return False
    if field.ge is not None and not value >= field.ge:
        return False
    if field.min_length is not None and len(value) < field.min_length:
        return False
    if field.choices is not None and value not in field.choices:
        return False
    return not field.time or is_time(value)


def conforms(field: Field, value: object) -> bool:
    """Kind and value rules both: what P2's typed decoder lets through for this field."""
    return kind_ok(field, value) and value_ok(field, value)


def json_kind(value: object) -> str:
    """A value's JSON kind as a drift sample names it (``float(inf)``, ``str(900000)`` for the odd ones)."""
    t = type(value)
    if t is float and not math.isfinite(value):  # type: ignore[arg-type]
        return f"float({value})"
    if t is int and not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
        return f"int({len(str(abs(value)))} digits)"  # type: ignore[arg-type]
    if t is str and len(value) > PRODUCT_ID_MAX:  # type: ignore[arg-type]
        return f"str({len(value)})"  # type: ignore[arg-type]
    return _JSON_NAMES.get(t, t.__name__)


_JSON_NAMES = {str: "str", int: "int", float: "float", bool: "bool", type(None): "null", list: "array", dict: "object"}
_UNEXPECTED_LISTED = 20
"""Unexpected keys a drift detail lists, each cut to :data:`PRODUCT_ID_MAX` characters: a sample stays small."""


def drift_of(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema drift of a parsed event, or ``None``: missing and mismatched required keys, unexpected keys."""
    missing: list[str] = []
    mismatched: list[dict[str, str]] = []
    for name, kind in REQUIRED.items():
        if name not in event:
            missing.append(name)
            continue
        value = event[name]
        if not kind_ok(BY_NAME[name], value):
            mismatched.append({"key": name, "expected": kind, "got": json_kind(value)})
    if not missing and not mismatched:
        return None
    return {"missing": missing, "mismatched": mismatched, "unexpected": unexpected_keys(event)}


def unexpected_keys(event: Mapping[str, Any]) -> list[str]:
    """Keys outside the schema, sorted, at most :data:`_UNEXPECTED_LISTED` of them, each bounded."""
    keys = sorted(_writable(str(k)[:PRODUCT_ID_MAX]) for k in event if k not in KNOWN_KEYS)
    return keys[:_UNEXPECTED_LISTED]


def invalid_reason(event: Mapping[str, Any]) -> str | None:
    """Why a parsed event is no trade the analytics count (the first failing check), or ``None``."""
    for field in TRADE_CHECKS:
        if not conforms(field, event.get(field.name)):
            return field.reason
    return None


# --- control events -------------------------------------------------------------------------------

GAP = "gap"
"""A control event: P1 knows trade ids ``first_missing..last_missing`` of a product were lost upstream."""
BACKFILL = "backfill"
"""A control event: P1's backfill of that gap is over, with ``recovered`` and ``unrecoverable`` ids."""
CONTROL_TYPES = frozenset({GAP, BACKFILL})
CONTROL = "control"
"""The analytics' skip reason for a control event: evidence for the detectors and bundles, never a trade."""
_CONTROL_INTS = ("first_missing", "last_missing")
_BACKFILL_COUNTS = ("recovered", "unrecoverable")


def control_of(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """A control event's fields, checked, or ``None`` when ``event`` is no valid control event.

    ``{"type": "gap" | "backfill", "product_id", "first_missing", "last_missing", "source"}``, plus
    ``recovered`` and ``unrecoverable`` for ``backfill``. The ids are ints with ``0 < first <= last``,
    the counts ints >= 0 that add up to at most the gap's size, the product id and the source strings
    of their bounded kinds. Anything else (a ``gap`` missing its range, say) is no control event and
    is judged as a trade, so a broken one is schema drift like any other broken event.
    """
    t = event.get("type")
    if type(t) is not str or t not in CONTROL_TYPES:  # a list or an object is unhashable
        return None
    pid = event.get("product_id")
    source = event.get("source")
    if not conforms(BY_NAME["product_id"], pid) or type(source) is not str or not 0 < len(source) <= NAME_MAX:
        return None
    first, last = (event.get(k) for k in _CONTROL_INTS)
    if type(first) is not int or type(last) is not int or not 0 < first <= last <= INT64_MAX:
        return None
    out: dict[str, Any] = {"type": t, "product_id": pid, "first_missing": first, "last_missing": last, "source": source}
    if t == BACKFILL:
        counts = [event.get(k) for k in _BACKFILL_COUNTS]
        if any(type(n) is not int or n < 0 for n in counts) or sum(counts) > last - first + 1:  # type: ignore[misc]
            return None
        out.update(zip(_BACKFILL_COUNTS, counts, strict=True))
    return out


# --- the typed decoder ---------------------------------------------------------------------------


def _msgspec_type(field: Field) -> Any:
    if field.choices is not None:
        base: Any = Literal[field.choices]  # type: ignore[valid-type]
        return base if field.required or not field.nullable else base | None
    meta: dict[str, Any] = {}
    if field.kind == "int":
        base, meta = int, {"ge": INT64_MIN, "le": INT64_MAX}
    elif field.kind == "number":
        base = float
    elif field.kind == "bool":
        base = bool
    else:
        base = str
    for key in ("gt", "ge", "min_length", "max_length"):
        value = getattr(field, key)
        if value is not None:
            meta[key] = value
    typ = Annotated[base, msgspec.Meta(**meta)] if meta else base
    return typ if field.required or not field.nullable else typ | None


WireTrade = msgspec.defstruct(
    "WireTrade",
    [(f.name, _msgspec_type(f)) if f.required else (f.name, _msgspec_type(f), None) for f in FIELDS],
    kw_only=True,
    gc=False,
    module=__name__,
)
"""A conforming, valid event as P2 decodes it: every kind and value rule but the time's (checked per
batch by ``shared.timeparse``). Unknown keys are ignored here and kept in the recorded line. Fields
are declared in the order P1 writes them, which msgspec matches without a lookup."""


def wire_decoder() -> msgspec.json.Decoder:
    """A decoder of one payload to :data:`WireTrade`; it raises ``msgspec.ValidationError`` or ``DecodeError``."""
    return msgspec.json.Decoder(WireTrade)


# --- P1's model and the docs ---------------------------------------------------------------------


def pydantic_annotation(field: Field, number: Any, integer: Any) -> Any:
    """The pydantic annotation of a venue field, with P1's ``number`` and ``integer`` base types."""
    from pydantic import AfterValidator
    from pydantic import Field as PydanticField

    if field.time:
        return Annotated[str, AfterValidator(_pydantic_time)]
    if field.choices is not None:
        return Literal[field.choices]  # type: ignore[valid-type]
    constraints: dict[str, Any] = {}
    for key in ("gt", "ge", "min_length", "max_length"):
        value = getattr(field, key)
        if value is not None:
            constraints[key] = value
    base = {"str": str, "int": integer, "number": number, "bool": bool}[field.kind]
    return Annotated[base, PydanticField(**constraints)] if constraints else base


def _pydantic_time(value: str) -> str:
    if not is_time(value):
        raise ValueError("expected an ISO-8601 UTC time like 2024-05-01T12:34:56.789012Z")
    return value


def markdown_table() -> str:
    """SYSTEM.md's event table, one row per field."""
    rows = ["| field | kind | required | set by | note |", "|---|---|---|---|---|"]
    for f in FIELDS:
        kind = f.kind if f.max_length is None else f"{f.kind} (≤ {f.max_length} chars)"
        rows.append(f"| `{f.name}` | {kind} | {'yes' if f.required else 'no'} | {f.origin} | {f.doc} |")
    return "\n".join(rows)
