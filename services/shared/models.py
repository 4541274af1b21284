"""The normalized trade event, validated at P1's edge from Coinbase ``match`` and ``ticker`` messages.

Coinbase sends prices and sizes as decimal strings; the event carries floats. Unknown fields are
ignored because Coinbase adds fields and message types without notice.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic import Field as PydanticField

from mercurystream.shared.schema import FIELDS, INT64_MAX, INT64_MIN, Field, pydantic_annotation

TRADE_TYPES = frozenset({"match", "ticker"})
"""Message types P1 forwards as trades. ``last_match`` (sent once per subscribe) repeats a trade
already delivered before a reconnect, so it is counted but not forwarded."""

CONTROL_TYPES = frozenset({"subscriptions", "heartbeat", "error"})

TAKER_SIDE_OF_MAKER = {"buy": "sell", "sell": "buy"}


def taker_side(message_type: str, side: str) -> str:
    """The taker's (aggressor's) side of a trade: the event's ``side`` means this for every feed.

    Coinbase's ``match`` carries the maker order's side, its ``ticker`` the taker's (Exchange
    WebSocket channel docs), so a match's side is flipped. P1's column path uses the same mapping.
    """
    return TAKER_SIDE_OF_MAKER[side] if message_type == "match" else side


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    return v


Number = Annotated[float, BeforeValidator(_no_bool), PydanticField(allow_inf_nan=False)]
Integer = Annotated[int, BeforeValidator(_no_bool), PydanticField(ge=INT64_MIN, le=INT64_MAX)]


VENUE_FIELDS = tuple(f for f in FIELDS if f.origin == "venue")
"""The fields P1 takes from the venue's message; the stamps (and ``venue``/``feed``) P1 sets itself."""


class _TradeRules(BaseModel):
    """What P1 adds to the schema's fields: Coinbase's names, its time check, the wire form."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _size_is_last_size(cls, data: Any) -> Any:
        """A ``match`` carries ``size``; the normalized event calls it ``last_size`` like ``ticker`` does."""
        if isinstance(data, dict) and "last_size" not in data and "size" in data:
            data = dict(data)
            data["last_size"] = data["size"]
        return data

    def to_event(self) -> dict[str, Any]:
        """The wire form: the fields that are set, in the schema's order."""
        event = {f.name: getattr(self, f.name) for f in VENUE_FIELDS}
        if self.side is not None:
            event["side"] = taker_side(self.type, self.side)
        return {k: v for k, v in event.items() if v is not None}


def _field(f: Field) -> tuple[Any, Any]:
    annotation = pydantic_annotation(f, Number, Integer)
    return (annotation, ...) if f.required else (annotation | None, None)


Trade = create_model(
    "Trade",
    __base__=_TradeRules,
    __module__=__name__,
    __doc__="One executed trade as P1 forwards it to P2: the schema's venue fields (``shared.schema``).",
    **{f.name: _field(f) for f in VENUE_FIELDS},
)


def normalize_trade(message: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Validate a trade message.

    Returns ``(event, None)`` when valid, or ``(message, reason)`` when not, so the caller can
    still forward the message as received and let P2's drift detector see the real drift.
    """
    try:
        return Trade.model_validate(message).to_event(), None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "message"
        return message, f"{field}: {err['msg']}"
