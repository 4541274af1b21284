"""A read's columns: the C scanner with the value rules gives exactly what msgspec's typed decode gives."""

from __future__ import annotations

import math
import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.schema import FIELDS
from mercurystream.shared.wire import Columns, _rowscan
from tests.shared.test_parquet import SPECIAL_BYTES, damaged, edits, texts_holding
from tests.shared.test_parquet import event as recorded_event

NAMES = tuple(f.name for f in FIELDS)
ALL = Columns(NAMES)
needs_scanner = pytest.mark.skipif(_rowscan is None, reason="the C scanner is not built (no C compiler at install)")


def event(i: int, **changes: object) -> dict:
    """P1's payload: a recorded line's event (``test_parquet.event``) without P2's receive stamps."""
    p1 = {"recv_ts_ms": ..., "recv_ts_us": ..., "venue": "coinbase", "feed": "exchange"}
    return recorded_event(i, **{**p1, **changes})


def typed(columns: list | None) -> list | None:
    """Columns as comparable values: each value with its type, -0.0 told from 0.0."""
    if columns is None:
        return None
    return [[(type(v), math.copysign(1, v) if type(v) is float else 0, v) for v in column] for column in columns]


# --- the property: the kernel never disagrees with the reference -----------------------------------------

_KIND_VALUES = {
    "str": st.one_of(
        st.sampled_from(["match", "ticker", "buy", "sell", "coinbase", "BTC-USD", "", "x" * 70]),
        st.text(max_size=6),
    ),
    "number": st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=-1e6, max_value=1e6).map(lambda v: round(v, 4)),
        st.integers(min_value=-(1 << 54), max_value=1 << 54),
    ),
    "int": st.integers(min_value=-(1 << 64), max_value=1 << 64),
    "bool": st.booleans(),
}
_ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=3), st.just([1])
)


def _render(value: object, spelling: int) -> bytes:
    """A JSON value as orjson writes it, or a number spelled another valid way (an exponent, trailing zeros)."""
    text = b"%d" % value if type(value) is int else orjson.dumps(value)
    if type(value) is float and spelling == 1:
        return b"%.17e" % value
    if type(value) is float and spelling == 2 and b"e" not in text and b"." in text:
        return text + b"000"
    return text


@st.composite
def _payloads(draw: st.DrawFn) -> list[bytes]:
    """A read's payloads, mostly valid trades, spelled as any producer might, some breaking a kind or a value rule."""
    out = []
    for i in range(draw(st.integers(1, 4))):
        e: dict = {}
        for f in FIELDS:
            if f.required or draw(st.booleans()):
                roll = draw(st.integers(0, 29))
                if roll == 0:
                    e[f.name] = draw(_ANY)
                elif roll == 1:
                    e[f.name] = draw(_KIND_VALUES[f.kind])
                else:
                    e[f.name] = event(i).get(f.name, draw(_KIND_VALUES[f.kind]))
        if not draw(st.integers(0, 9)):
            e["note"] = draw(_ANY)
        keys = draw(st.permutations(list(e)))
        ws = draw(st.sampled_from([b"", b" ", b"\n\t"]))
        parts = [b'"%s"%s:%s%s' % (k.encode(), ws, ws, _render(e[k], draw(st.integers(0, 2)))) for k in keys]
        out.append(ws + b"{" + (b"," + ws).join(parts) + b"}" + ws)
    return out


@needs_scanner
@settings(max_examples=400, deadline=None)
@given(_payloads())
def test_the_kernel_gives_the_references_columns_whenever_it_takes_a_read(payloads: list[bytes]) -> None:
    """Held equal: what the kernel takes, the reference takes, into equal columns of equal types."""
    found = ALL.kernel(payloads)
    if found is not None:
        assert typed(found) == typed(ALL.reference(payloads))
    assert typed(ALL(payloads)) == typed(ALL.reference(payloads))


@needs_scanner
@settings(max_examples=300, deadline=None)
@given(edits(600))
def test_the_kernel_on_damaged_payloads_declines_or_agrees(changes: list) -> None:
    """Bytes cut, inserted or truncated anywhere: the kernel never reads past a payload and never disagrees."""
    payloads = [orjson.dumps(event(0)), damaged(orjson.dumps(event(1)), changes)]
    found = ALL.kernel(payloads)
    if found is not None:
        assert typed(found) == typed(ALL.reference(payloads))


# --- what it takes and what it leaves to the reference --------------------------------------------------


@needs_scanner
def test_the_kernel_takes_p1s_the_seeds_and_replayed_shapes() -> None:
    """The benchmark's shapes: P1's own, no ``ingest_ts_us``, and receive stamps kept with a scalar unknown key."""
    shapes = {
        "p1": [orjson.dumps(event(i)) for i in range(5)],
        "seed": [orjson.dumps(event(i, ingest_ts_us=...)) for i in range(5)],
        "replayed": [orjson.dumps(event(i, recv_ts_ms=1, recv_ts_us=1000, note="x")) for i in range(5)],
        "nulls": [orjson.dumps(event(i, best_bid=None, side=None)) for i in range(5)],
    }
    for shape, payloads in shapes.items():
        found = ALL.kernel(payloads)
        assert found is not None, shape
        assert typed(found) == typed(ALL.reference(payloads)), shape


@needs_scanner
def test_the_kernel_leaves_to_the_reference_what_only_it_may_judge() -> None:
    """Each of these the kernel declines; the reference decides (and rejects the invalid ones)."""
    good = orjson.dumps(event(0))
    declined = {
        "escape": orjson.dumps(event(1, side="b\\u0075y")).replace(b"\\\\", b"\\"),
        "non-ascii": orjson.dumps(event(1, product_id="BTC-€")),
        "nested unknown key": orjson.dumps(event(1, note={"a": 1})),
        "repeated key": orjson.dumps(event(1))[:-1] + b',"price":1.5}',
        "null in a required field": orjson.dumps(event(1, price=None)),
        "null receive stamp": orjson.dumps(event(1, recv_ts_ms=None)),
        "null receive stamp (us)": orjson.dumps(event(1, recv_ts_ms=1, recv_ts_us=None)),
        "huge int in a number": orjson.dumps(event(1, price=(1 << 53) + 1)),
        "int64 overflow": orjson.dumps(event(1, sequence=1 << 63)),
        "float in an int field": orjson.dumps(event(1)).replace(b'"trade_id":1001', b'"trade_id":1001.0'),
        "overflowing float": orjson.dumps(event(1)).replace(b'"price":60001.5', b'"price":1e400'),
        "missing required": orjson.dumps(event(1, price=...)),
        "price of 0": orjson.dumps(event(1, price=0.0)),
        "negative size": orjson.dumps(event(1, last_size=-1.0)),
        "empty product": orjson.dumps(event(1, product_id="")),
        "long venue": orjson.dumps(event(1, venue="v" * 33)),
        "unknown side": orjson.dumps(event(1, side="hold")),
        "trailing garbage": orjson.dumps(event(1)) + b"x",
        "not an object": b"[1]",
    }
    for why, payload in declined.items():
        payloads = [good, payload]
        assert ALL.kernel(payloads) is None, why
        assert typed(ALL(payloads)) == typed(ALL.reference(payloads)), why
    assert ALL.kernel([]) is None
    assert ALL.kernel((good,)) is None, "a tuple: the scanner reads lists only"


@needs_scanner
@pytest.mark.parametrize("special", SPECIAL_BYTES)
def test_the_kernel_finds_a_special_byte_at_any_offset_of_a_word(special: bytes) -> None:
    """In a column's string and in an unknown key's: declined (DEL, which JSON allows, taken) wherever it falls."""
    for text in texts_holding(special):
        for payload in (
            orjson.dumps(event(1, product_id="P")).replace(b'"P"', b'"' + text + b'"'),
            orjson.dumps(event(1, note="N")).replace(b'"N"', b'"' + text + b'"'),
        ):
            found = ALL.kernel([payload])
            if special == b"\x7f":
                assert found is not None and typed(found) == typed(ALL.reference([payload])), text
            else:
                assert found is None, text


@needs_scanner
def test_a_string_one_byte_off_a_recent_one_is_not_taken_for_it() -> None:
    """A column reuses its recent strings when the bytes are equal, compared a word at a time (the last
    word first, overlapping the one before): one byte different anywhere makes a string of its own."""
    for length in range(1, 26):
        base = b"a" * length
        for at in range(length):
            other = base[:at] + b"b" + base[at + 1 :]
            payloads = [orjson.dumps(event(i, product_id=text.decode())) for i, text in enumerate((base, other, base))]
            found = ALL.kernel(payloads)
            assert found is not None, other
            assert typed(found) == typed(ALL.reference(payloads)), other


@needs_scanner
def test_a_key_one_byte_off_a_columns_name_is_another_key() -> None:
    """Every column's name with one byte changed, wherever it falls: an unknown key, passed over as msgspec
    passes over it, never read as the column's value."""
    stamps = {"recv_ts_ms": 1_765_000_000_000, "recv_ts_us": 1_765_000_000_000_000}
    whole = orjson.dumps(event(1, best_bid=60000.0, best_ask=60001.0, backfilled=False, **stamps))
    assert all(b'"%s":' % f.name.encode() in whole for f in FIELDS), "every column's name is in the payload"
    assert ALL.kernel([whole]) is not None
    for f in FIELDS:
        name = f.name.encode()
        for at in range(len(name)):
            key = name[:at] + (b"X" if name[at : at + 1] != b"X" else b"Y") + name[at + 1 :]
            payload = whole.replace(b'"%s":' % name, b'"%s":' % key)
            found = ALL.kernel([payload])
            if found is not None:
                assert typed(found) == typed(ALL.reference([payload])), key
            assert typed(ALL([payload])) == typed(ALL.reference([payload])), key


def test_columns_are_the_named_fields_in_order_with_none_where_absent() -> None:
    payloads = [orjson.dumps(event(0)), orjson.dumps(event(1, side=...))]
    cols = Columns(("price", "side", "trade_id"))
    assert [list(c) for c in cols(payloads)] == [[60000.5, 60001.5], ["buy", None], [1000, 1001]]
    assert [list(c) for c in cols.reference(payloads)] == [[60000.5, 60001.5], ["buy", None], [1000, 1001]]
    assert cols([orjson.dumps(event(0, price=0.0))]) is None
    assert [list(c) for c in cols([])] == [[], [], []]


def test_the_kernel_is_built_where_ci_requires_it() -> None:
    """CI's machine has a C compiler: there the kernel must be built, so its tests above never skip silently."""
    if os.environ.get("MERCURY_REQUIRE_ROWSCAN") == "1":
        assert _rowscan is not None


@needs_scanner
def test_the_scanner_refuses_a_rule_spec_it_cannot_check() -> None:
    """A malformed spec is the caller's bug: an exception, never a silently unchecked rule or a key misread."""
    from mercurystream.shared.schema import Field
    from mercurystream.shared.wire import SCAN_SPEC, _rule, _scannable

    emit = bytes(len(FIELDS))
    rules = tuple(map(_rule, FIELDS))
    payloads = [orjson.dumps(event(0))]
    assert _rowscan.scan_objects(payloads, *SCAN_SPEC, emit, rules) == [None] * len(FIELDS)
    price = NAMES.index("price")
    trade_id = NAMES.index("trade_id")

    def swap(k: int, rule: object) -> tuple:
        return (*rules[:k], rule, *rules[k + 1 :])

    bad = {
        "a gt rule on an int column": swap(trade_id, (1.0, None, 0, -1, None)),
        "a length rule on a number column": swap(price, (None, None, 1, -1, None)),
        "choices not bytes": swap(0, (None, None, 0, -1, ("match",))),
        "a rule not a tuple": swap(0, [None, None, 0, -1, None]),
        "one rule short": rules[:-1],
    }
    for spec in bad.values():
        with pytest.raises((ValueError, TypeError)):
            _rowscan.scan_objects(payloads, *SCAN_SPEC, emit, spec)
    with pytest.raises(ValueError):
        _rowscan.scan_objects(payloads, *SCAN_SPEC, emit[:-1], rules)
    names, kinds, required = SCAN_SPEC
    for name in (b'pri"ce', b"pri\\ce", b"pri\nce", "prïce".encode()):  # keys are matched in place, byte for byte
        with pytest.raises(ValueError, match="plain printable ASCII"):
            _rowscan.scan_objects(payloads, (name, *names[1:]), kinds, required, emit, rules)
        with pytest.raises(ValueError, match="plain printable ASCII"):
            _rowscan.scan(payloads[0], 1, (name, *names[1:]), kinds, required)
    with pytest.raises(ValueError, match="bad column spec"):
        _rowscan.scan(payloads[0], 1, (), b"", b"")
    assert not _scannable(Field("n", "int", True, "venue", "", gt=0))
    assert not _scannable(Field("n", "number", True, "venue", "", max_length=3))
    assert all(map(_scannable, FIELDS))
