"""Bounded text: what a log line, a status line or a metric label may print of a value from outside.

A producer decides how long a product id, a message type or an error reason is; nothing it sends
may make a line or a label longer than these bounds. Every place that prints such text goes through
:func:`clip` (one value) or :func:`join_clipped` (a list of parts, as the status lines are).
"""

from __future__ import annotations

from collections.abc import Iterable

ELLIPSIS = "…"
LABEL_MAX = 64
"""Characters of a metric label value or a name in a status line (the schema's product-id bound)."""
SAMPLE_MAX = 200
"""Characters of a sampled value in a log line (an event, a venue's error reason)."""
STATUS_MAX = 1024
"""Characters of one status line."""


def clip(text: object, width: int = LABEL_MAX) -> str:
    """``text`` (``str()`` of it) cut to at most ``width`` characters, the cut marked with ``…``."""
    s = text if type(text) is str else str(text)
    if len(s) <= width:
        return s  # type: ignore[return-value]
    return s[: max(width - 1, 0)] + ELLIPSIS


def preview(value: object, width: int = SAMPLE_MAX) -> str:
    """``repr(value)`` clipped, for a sample in a log line (bytes are cut before ``repr``)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: width + 1])
    return clip(repr(value), width)


def join_clipped(parts: Iterable[object], sep: str = " | ", width: int = STATUS_MAX) -> str:
    """``sep.join(parts)`` with each part clipped to :data:`LABEL_MAX` + 32 and the whole within ``width``.

    Parts that do not fit are left out and counted at the end (``… +N more``), so a status line
    over a thousand products stays one bounded line that says how much it omits.
    """
    out: list[str] = []
    used = 0
    items = list(parts)
    part_max = LABEL_MAX + 32
    for k, part in enumerate(items):
        text = clip(part, part_max)
        cost = len(text) + (len(sep) if out else 0)
        left = len(items) - k
        reserve = 0 if left == 1 else len(sep) + len(f"{ELLIPSIS} +{left} more")
        if used + cost + reserve > width:
            return sep.join([*out, f"{ELLIPSIS} +{left} more"]) if out else f"{ELLIPSIS} +{left} more"
        out.append(text)
        used += cost
    return sep.join(out)
