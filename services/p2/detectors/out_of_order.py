"""``out_of_order``: an event whose exchange time is strictly earlier than its product's latest."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

from mercurystream.p2.detectors.duplicate import MAX_PRODUCTS
from mercurystream.shared.event import nondecreasing
from mercurystream.shared.timeparse import FIXED_FORM, all_fixed_form, parse_time_us


class OutOfOrderDetector:
    """Per product, an event whose ``time`` is strictly earlier than the latest seen.

    Times in Coinbase's fixed form (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, ASCII digits) order like their
    strings, so two of them are compared as strings without parsing. Any other string is parsed
    to integer microseconds (``shared.timeparse.parse_time_us``, exact, unlike float seconds); a
    string that is not a time is counted in ``unparsed`` and neither checked nor remembered. An
    equal time is not out of order. An out-of-order event does not move the latest time back.

    Which strings are times is ``shared.timeparse.is_time``'s rule alone: ``parse_time_us`` refuses
    exactly what it refuses, and :class:`~mercurystream.p2.detectors.Detectors` gives this rule no
    event in ``Trades.off_clock`` (not a time, a fixed-form string with a calendar error among them,
    or past the batch's future bound), so no such time becomes a product's latest.
    """

    def __init__(self) -> None:
        self.count = 0
        self.unparsed = 0
        self.untracked = 0
        self._state: dict[str, list[Any]] = {}
        """product -> [latest time string, it is in fixed form, its microseconds or None until needed]"""

    @property
    def products(self) -> int:
        """Products with state (at most :data:`MAX_PRODUCTS`)."""
        return len(self._state)

    def observe(self, product_id: str, time: str) -> str | None:
        """The reference: the latest time ``time`` is earlier than (counted), or ``None``."""
        st = self._state.get(product_id)
        if st is None:
            if len(self._state) >= MAX_PRODUCTS:
                self.untracked += 1
            elif FIXED_FORM(time) is not None:
                self._state[product_id] = [time, True, None]
            else:
                us = parse_time_us(time)
                if us is None:
                    self.unparsed += 1
                else:
                    self._state[product_id] = [time, False, us]
            return None
        latest = st[0]
        if time == latest:
            return None
        if st[1] and FIXED_FORM(time) is not None:
            if time < latest:
                self.count += 1
                return latest
            st[0] = time
            st[2] = None
            return None
        us = parse_time_us(time)
        if us is None:
            self.unparsed += 1
            return None
        latest_us = st[2]
        if latest_us is None:
            latest_us = st[2] = parse_time_us(latest)
        if us < latest_us:
            self.count += 1
            return latest
        if us > latest_us:
            st[0] = time
            st[1] = FIXED_FORM(time) is not None
            st[2] = us
        return None

    def try_batch(self, product_id: str, columns: Sequence[Sequence[str]], hits: list[tuple[int, Any]]) -> bool:
        """Fixed-form times in order from the product's latest: none is late, only the latest moves.

        Or fixed-form times all earlier than the latest (a resent stretch): every one is late, and
        the latest stays."""
        (times,) = columns
        st = self._state.get(product_id)
        if st is None:
            if len(self._state) >= MAX_PRODUCTS:
                return False
        elif not st[1]:
            return False
        elif times[0] < st[0]:
            latest = st[0]
            if not (max(times) < latest and all_fixed_form(times)):
                return False
            self.count += len(times)
            hits.extend(zip(range(len(times)), repeat(latest)))
            return True
        if not (nondecreasing(times) and all_fixed_form(times)):
            return False
        last = times[-1]
        if st is None:
            self._state[product_id] = [last, True, None]
        elif last != st[0]:
            st[0] = last
            st[2] = None
        return True
