"""Missing trade-id ranges: the one rule for a late id arriving inside a gap.

P1's gap tracker (p1/gaps.py) and P2's gap detector (p2/detectors/sequence_gap.py) both keep, per
product, sorted disjoint ranges ``[lo, hi, *payload]`` of ids not seen yet. An id that arrives late
is no longer missing: it shrinks its range, splits it (both halves keep the payload), or removes it.
"""

from __future__ import annotations

from bisect import bisect_right
from operator import itemgetter
from typing import Any

_LO = itemgetter(0)


def fill(ranges: list[list[Any]], trade_id: int) -> bool:
    """Take ``trade_id`` out of ``ranges`` (sorted by ``lo``, disjoint); whether it was missing."""
    i = bisect_right(ranges, trade_id, key=_LO) - 1
    if i < 0:
        return False
    r = ranges[i]
    lo, hi = r[0], r[1]
    if trade_id > hi:
        return False
    if lo == hi:
        del ranges[i]
    elif trade_id == lo:
        r[0] = lo + 1
    elif trade_id == hi:
        r[1] = hi - 1
    else:
        r[1] = trade_id - 1
        ranges.insert(i + 1, [trade_id + 1, hi, *r[2:]])
    return True
