"""How every rule of P2 is written and run: a plain per-event reference, and at most one batch kernel.

A rule (a detector, a dedupe, a window) keeps state per key (a product, or ``None`` for a rule of
the whole stream) and reads one or more columns. :meth:`Rule.observe` takes one event's values and
is the specification a reader starts from. :meth:`Rule.try_batch` may take all of one key's values
of a batch at once, in C-level passes, when a cheap test shows they are ordinary; it either does
exactly what the references in a row would have done and returns ``True``, or does nothing and
returns ``False``. :func:`run` is the one driver, and one property-test harness
(``tests/p2/test_rule.py``) holds every kernel equal to its reference.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from operator import itemgetter
from typing import Any, Protocol

_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


class Rule(Protocol):
    """A rule over one key's events, one at a time, with an optional batch kernel."""

    def observe(self, key: Hashable, *values: Any) -> Any:
        """The reference: one event's values; a hit (anything but ``None``) or ``None``."""
        ...

    def try_batch(self, key: Hashable, columns: Sequence[Sequence[Any]], hits: list[tuple[int, Any]]) -> bool:
        """All of ``key``'s values of a batch (one sequence per column, in arrival order) at once.

        ``True``: done, with each hit appended to ``hits`` as ``(position in the columns, hit)``,
        exactly as :meth:`observe` in a row would have given them. ``False``: nothing done.
        """
        ...


class Reference:
    """A rule without a kernel: :meth:`try_batch` always declines."""

    def try_batch(self, key: Hashable, columns: Sequence[Sequence[Any]], hits: list[tuple[int, Any]]) -> bool:
        return False


def run(
    rule: Rule,
    key: Hashable,
    columns: Sequence[Sequence[Any]],
    positions: Sequence[int] | None = None,
    reference_only: bool = False,
) -> list[tuple[int, Any]]:
    """Feed one key's values of a batch to ``rule``; its hits as ``(position, hit)`` in arrival order.

    ``positions`` maps each value to its index in the batch (``None``: the values are the batch).
    ``reference_only`` skips the kernel (the property tests compare the two ways).
    """
    hits: list[tuple[int, Any]] = []
    if reference_only or not rule.try_batch(key, columns, hits):
        observe = rule.observe
        if len(columns) == 1:
            for k, v in enumerate(columns[0]):
                hit = observe(key, v)
                if hit is not None:
                    hits.append((k, hit))
        else:
            for k, row in enumerate(zip(*columns, strict=True)):
                hit = observe(key, *row)
                if hit is not None:
                    hits.append((k, hit))
    if positions is None or not hits:
        return hits
    return list(zip(map(positions.__getitem__, map(_FIRST, hits)), map(_SECOND, hits), strict=True))
