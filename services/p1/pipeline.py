"""P1's one processing step: trade messages → validated, stamped, serialized events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat
from operator import contains, itemgetter
from typing import Any

import orjson

from mercurystream.shared.clip import clip
from mercurystream.shared.event import INGEST_MS, INGEST_US
from mercurystream.shared.logger import LogSampler
from mercurystream.shared.models import TAKER_SIDE_OF_MAKER, normalize_trade, taker_side
from mercurystream.shared.schema import DEFAULT_VENUE, INT64_MAX, INT64_MIN, PRODUCT_ID_MAX
from mercurystream.shared.timeparse import IsoTimeParser, all_fixed_form

_MISSING = object()
_INT_MIN = INT64_MIN
_INT_MAX = INT64_MAX
_MATCH_COLUMNS = itemgetter("type", "product_id", "price", "size", "time", "trade_id", "sequence", "side")
_NOT_IN_A_MATCH = ("last_size", "best_bid", "best_ask")
"""Keys the model would use if a ``match`` had them, so a batch carrying any takes the per-event path."""
_SECOND_PREFIX = itemgetter(slice(0, 20))
_SIDES = frozenset({"buy", "sell"})


def _number(v: object) -> float | None:
    """A finite float from a decimal string or a JSON number; ``None`` when the model must decide."""
    tv = type(v)
    if tv is str:
        if not v.isascii():  # type: ignore[attr-defined]
            return None
        try:
            f = float(v)  # type: ignore[arg-type]
        except ValueError:
            return None
    elif tv is float:
        f = v  # type: ignore[assignment]
    elif tv is int:
        try:
            f = float(v)  # type: ignore[arg-type]
        except OverflowError:
            return None
    else:
        return None
    return f if f - f == 0.0 else None


def fast_event(msg: dict[str, Any], parse_time: Callable[[object], float | None]) -> dict[str, Any] | None:
    """The event :func:`normalize_trade` would build, for the well-formed common case.

    The pydantic model costs about 5 µs a message, most of P1's budget; this accepts only what
    the model certainly accepts and builds the identical event, and returns ``None`` for anything
    else so the model (the one authority on what is valid, and on why not) decides. A property
    test holds the two to the same output.
    """
    t = msg.get("type")
    if t != "match" and t != "ticker":
        return None
    product_id = msg.get("product_id")
    if type(product_id) is not str or not product_id or len(product_id) > PRODUCT_ID_MAX:
        return None
    price = _number(msg.get("price"))
    if price is None or not price > 0.0:
        return None
    size = msg.get("last_size", _MISSING)
    if size is _MISSING:
        size = msg.get("size")
    size = _number(size)
    if size is None or not size >= 0.0:
        return None
    time = msg.get("time")
    if type(time) is not str or parse_time(time) is None:
        return None
    trade_id = msg.get("trade_id")
    if type(trade_id) is not int or not _INT_MIN <= trade_id <= _INT_MAX:
        return None
    event = {"type": t, "product_id": product_id, "price": price, "last_size": size, "time": time, "trade_id": trade_id}
    sequence = msg.get("sequence")
    if sequence is not None:
        if type(sequence) is not int or not _INT_MIN <= sequence <= _INT_MAX:
            return None
        event["sequence"] = sequence
    side = msg.get("side")
    if side is not None:
        if side != "buy" and side != "sell":
            return None
        event["side"] = taker_side(t, side)
    for key in ("best_bid", "best_ask"):
        quote = msg.get(key)
        if quote is not None:
            quote = _number(quote)
            if quote is None:
                return None
            event[key] = quote
    return event


def _floats(values: Sequence[object]) -> list[float] | None:
    """:func:`_number` of every value, all decimal strings, in C-level passes; ``None`` if any is not finite."""
    if set(map(type, values)) != {str}:
        return None
    if not "".join(values).isascii():  # type: ignore[arg-type]
        return None
    floats = list(map(float, values))  # type: ignore[arg-type]
    total = sum(floats)
    return floats if total - total == 0.0 else None


def _ints_in_range(values: Sequence[object]) -> bool:
    return set(map(type, values)) == {int} and min(values) >= _INT_MIN and max(values) <= _INT_MAX  # type: ignore[type-var]


class IngestPipeline:
    """Normalize each trade, stamp the batch's receive time, serialize.

    A message that fails validation is forwarded as received (plus the stamps): P2's drift
    detector exists to see exactly that, so P1 counts it rather than hiding it. The clock is read
    once per batch by the caller; every event of a batch arrived together.
    """

    __slots__ = ("_parse_time", "_sampler", "feed", "invalid", "valid", "venue")

    def __init__(self, venue: str = DEFAULT_VENUE, feed: str = "exchange") -> None:
        """``venue`` and ``feed`` are written on every valid event (the schema's ``venue`` and ``feed``)."""
        self.venue = venue
        self.feed = feed
        self.valid = 0
        self.invalid = 0
        self._sampler = LogSampler()
        self._parse_time = IsoTimeParser().parse

    def process(
        self, trades: list[dict[str, Any]], now_us: int, *, backfilled: bool = False
    ) -> tuple[list[bytes], int]:
        """Return the serialized events and how many of them failed validation.

        ``backfilled`` marks every event ``backfilled: true`` (trades P1 fetched to fill a gap,
        ``p1/backfill.py``); they take the per-event path, which is rare enough not to matter.
        """
        ts_ms = now_us // 1000
        if trades and not backfilled:
            try:
                out = self._match_batch(trades, ts_ms, now_us)
            except (KeyError, TypeError, ValueError):
                out = None
            if out is not None:
                self.valid += len(out)
                return out, 0
        fast = fast_event
        parse_time = self._parse_time
        normalize = normalize_trade
        dumps = orjson.dumps
        out: list[bytes] = []
        append = out.append
        invalid = 0
        venue = self.venue
        feed = self.feed
        for msg in trades:
            event = fast(msg, parse_time)
            reason = None
            if event is None:
                event, reason = normalize(msg)
            if reason is None:
                event["venue"] = venue
                event["feed"] = feed
                if backfilled:
                    event["backfilled"] = True
            else:
                invalid += 1
                self._sampler.warning(
                    "validation", "invalid {} forwarded as received: {}", clip(msg.get("type")), clip(reason, 200)
                )
            event[INGEST_MS] = ts_ms
            event[INGEST_US] = now_us
            # orjson's result keeps its 4 KiB work buffer; held payloads get an exact-size copy instead.
            append(bytes(memoryview(dumps(event))))
        self.invalid += invalid
        self.valid += len(trades) - invalid
        return out, invalid

    def _match_batch(self, trades: list[dict[str, Any]], ts_ms: int, now_us: int) -> list[bytes] | None:
        """The events of a batch of ordinary ``match`` messages, checked column by column.

        The same acceptance as :func:`fast_event`, but each check is one C-level pass over a column
        (``map``, ``set``, ``min``, one ``join``) instead of a dozen Python steps per message, and a
        fixed-form time is validated once per distinct second. ``None`` (or an exception from a
        column of the wrong type) sends the whole batch down the per-event path, which decides.
        """
        columns = list(zip(*map(_MATCH_COLUMNS, trades), strict=True))
        types, product_ids, prices, sizes, times, trade_ids, sequences, sides = columns
        if set(types) != {"match"} or not set(sides) <= _SIDES:
            return None
        for key in _NOT_IN_A_MATCH:
            if any(map(contains, trades, repeat(key))):
                return None
        if set(map(type, product_ids)) != {str} or "" in product_ids:
            return None
        if max(map(len, product_ids)) > PRODUCT_ID_MAX:
            return None
        if not _ints_in_range(trade_ids) or not _ints_in_range(sequences):
            return None
        price_values = _floats(prices)
        if price_values is None or not min(price_values) > 0.0:
            return None
        size_values = _floats(sizes)
        if size_values is None or not min(size_values) >= 0.0:
            return None
        if not all_fixed_form(times):
            return None
        parse_time = self._parse_time
        # A fixed-form time is valid exactly when its second is: any six digits are a valid fraction.
        for second in set(map(_SECOND_PREFIX, times)):
            if parse_time(second + "000000Z") is None:
                return None
        dumps = orjson.dumps
        venue = self.venue
        feed = self.feed
        # orjson's result keeps its 4 KiB work buffer; held payloads get an exact-size copy instead.
        return [
            bytes(
                memoryview(
                    dumps(
                        {
                            "type": "match",
                            "product_id": product_id,
                            "price": price,
                            "last_size": size,
                            "time": time,
                            "trade_id": trade_id,
                            "sequence": sequence,
                            "side": side,
                            "venue": venue,
                            "feed": feed,
                            INGEST_MS: ts_ms,
                            INGEST_US: now_us,
                        }
                    )
                )
            )
            for product_id, price, size, time, trade_id, sequence, side in zip(
                product_ids,
                price_values,
                size_values,
                times,
                trade_ids,
                sequences,
                map(TAKER_SIDE_OF_MAKER.__getitem__, sides),
                strict=True,
            )
        ]
