"""The normalized trade event, validated at P1's edge from Coinbase ``match`` and ``ticker`` messages.

Coinbase sends prices and sizes as decimal strings; the event carries floats. Unknown fields are
ignored because Coinbase adds fields and message types without notice.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mercurystream.shared.timeparse import IsoTimeParser

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


Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
# Bounded to what orjson can serialize: an out-of-range id would otherwise pass validation and fail at dumps.
Integer = Annotated[int, BeforeValidator(_no_bool), Field(ge=-(1 << 63), le=(1 << 64) - 1)]

_time_parser = IsoTimeParser()


class Trade(BaseModel):
    """One executed trade as P1 forwards it to P2."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["match", "ticker"]
    product_id: Annotated[str, Field(min_length=1)]
    price: Annotated[Number, Field(gt=0)]
    last_size: Annotated[Number, Field(ge=0)]
    time: str
    trade_id: Integer
    sequence: Integer | None = None
    side: Literal["buy", "sell"] | None = None
    best_bid: Number | None = None
    best_ask: Number | None = None

    @model_validator(mode="before")
    @classmethod
    def _size_is_last_size(cls, data: Any) -> Any:
        """A ``match`` carries ``size``; the normalized event calls it ``last_size`` like ``ticker`` does."""
        if isinstance(data, dict) and "last_size" not in data and "size" in data:
            data = dict(data)
            data["last_size"] = data["size"]
        return data

    @field_validator("time")
    @classmethod
    def _iso_time(cls, v: str) -> str:
        if _time_parser.parse(v) is None:
            raise ValueError("expected an ISO-8601 UTC time like 2024-05-01T12:34:56.789012Z")
        return v

    def to_event(self) -> dict[str, Any]:
        """The wire form: only the fields that are set, in a fixed order."""
        event: dict[str, Any] = {
            "type": self.type,
            "product_id": self.product_id,
            "price": self.price,
            "last_size": self.last_size,
            "time": self.time,
            "trade_id": self.trade_id,
        }
        if self.sequence is not None:
            event["sequence"] = self.sequence
        if self.side is not None:
            event["side"] = taker_side(self.type, self.side)
        if self.best_bid is not None:
            event["best_bid"] = self.best_bid
        if self.best_ask is not None:
            event["best_ask"] = self.best_ask
        return event


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
