"""A read's payloads as the schema's typed columns, the first thing P2 does with a socket read.

:meth:`Columns.reference` is the specification: every payload decoded by msgspec into
``shared.schema.WireTrade`` (every kind and value rule of the schema but the time's), then the
wanted fields read off as columns. :class:`Columns` gives the same result faster when the C
scanner (``_rowscan.c: scan_objects``) is built and takes the read: it checks each field's kind and
the schema's value rules (``gt``, ``ge``, lengths, choices, passed to it from ``FIELDS``) while it
scans, and makes objects only for the wanted fields. Anything the scanner declines, a value breaking
a rule included, goes to the reference, which decides. A property test holds the two equal
(``tests/shared/test_wire.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import msgspec

from mercurystream.shared.schema import FIELDS, Field, wire_decoder

try:
    from mercurystream.shared import _rowscan
except ImportError:  # built without a C compiler: the reference does all the work
    _rowscan = None

_decode = wire_decoder().decode
SCAN_SPEC = (
    tuple(f.name.encode() for f in FIELDS),
    bytes(("str", "number", "int", "bool").index(f.kind) for f in FIELDS),
    bytes(f.required for f in FIELDS),
)
"""The schema's fields as both of the C scanner's entry points take them: names, kind codes (the
order of ``_rowscan.c``'s ``KIND_*``) and required flags, in wire order."""
_INDEX = {f.name: i for i, f in enumerate(FIELDS)}


def _rule(f: Field) -> tuple[Any, ...]:
    """A field's value rules as the scanner takes them: ``(gt, ge, min_len, max_len, choices, nullable)``."""
    choices = None if f.choices is None else tuple(c.encode() for c in f.choices)
    return (f.gt, f.ge, f.min_length or 0, -1 if f.max_length is None else f.max_length, choices, f.nullable)


def _scannable(f: Field) -> bool:
    """The scanner checks ``gt``/``ge`` on a number field and lengths and choices on a string field only."""
    numeric = f.gt is not None or f.ge is not None
    textual = f.min_length is not None or f.max_length is not None or f.choices is not None
    return not (numeric and f.kind != "number") and not (textual and f.kind != "str")


_RULES = tuple(map(_rule, FIELDS)) if all(map(_scannable, FIELDS)) else None
"""Every field's value rules for the scanner; ``None`` (the reference alone) if the schema gains one it cannot check."""


class Columns:
    """The columns of ``names`` (schema fields) for a read: :meth:`__call__` with the kernel, :meth:`reference` without.

    Either returns one sequence a field, in ``names`` order, with ``None`` where an optional field
    is absent or null (a null only where the field is ``nullable``); or ``None`` when some payload
    does not decode as a valid ``WireTrade``.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._get = attrgetter(*self.names)
        self._at = [_INDEX[name] for name in self.names]
        self._emit = bytes(f.name in self.names for f in FIELDS)

    def row(self, payload: bytes) -> tuple[Any, ...] | None:
        """One payload's values of ``names`` by the reference decode; ``None`` if it is not a valid ``WireTrade``."""
        try:
            return self._get(_decode(payload))
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return None

    def reference(self, payloads: Sequence[bytes]) -> list[Sequence[Any]] | None:
        try:
            rows = list(map(_decode, payloads))
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return None
        if not rows:
            return [() for _ in self.names]
        return list(zip(*map(self._get, rows), strict=True))

    def kernel(self, payloads: Sequence[bytes]) -> list[Sequence[Any]] | None:
        """The scanner's columns; ``None`` when it is not built or declines a payload (a broken value rule too)."""
        if _rowscan is None or _RULES is None or type(payloads) is not list:
            return None
        scanned = _rowscan.scan_objects(payloads, *SCAN_SPEC, self._emit, _RULES)
        return None if scanned is None else [scanned[i] for i in self._at]

    def __call__(self, payloads: Sequence[bytes]) -> list[Sequence[Any]] | None:
        found = self.kernel(payloads)
        return found if found is not None else self.reference(payloads)


NOT_JSON = object()
"""What :func:`parse_payload` returns for a payload P2 does not read as JSON."""
_generic = msgspec.json.decode


def parse_payload(payload: bytes) -> Any:
    """A payload parsed generically as P2 parses it, or :data:`NOT_JSON`: the one rule of what is JSON to P2.

    msgspec keeps integers of any size exactly; a number no float can hold (``1e400``) makes it
    fail, and the standard library then reads it as infinity, which the schema's kind rule rejects.
    The standard library also reads ``NaN``, ``Infinity`` and a lone surrogate escape (``"\\ud800"``),
    which msgspec and orjson refuse. It is given the payload decoded as strict UTF-8: given bytes,
    it would also read UTF-16, UTF-32, a byte-order mark and UTF-8-encoded surrogates, which every
    other reader of a recorded line (orjson, msgspec, the C scanner) rejects. Nesting deeper than
    either parser's recursion limit (about 1,000 levels) raises ``RecursionError``, which is no bug
    but a payload P2 will not read. Replay uses it too, so a line P2 recorded is one replay can send back.
    """
    try:
        return _generic(payload)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        return json.loads(payload.decode())
    except (ValueError, RecursionError):
        return NOT_JSON
