"""Fuzzing the decoders P2 runs on every byte a producer sends: they never raise, and lose nothing uncounted.

- ``shared.framing.FrameDecoder``: any bytes in any chunking give the frames a whole-stream reference
  finds, or :class:`FrameTooLarge` (its one documented exception) at the first oversize header;
- ``p2.server.IngestDecoder``: never raises; every frame is an event or a counted error, and every
  recorded line is one line;
- ``p2.batch.normalize`` and ``Batch.trades``: never raise; every payload is in the batch or an
  error, every event a trade or a reject with a reason, every latency finite;
- the consumers the batch then meets (analytics, the detectors and their drift samples): none
  raises on any of it, and their status lines and ``/metrics`` can still be written.

Deterministic (``derandomize``, no example database) and bounded in examples, so it runs the same
from a clean clone.
"""

from __future__ import annotations

import json
import math
import struct
from itertools import pairwise

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from mercurystream.p2.batch import normalize
from mercurystream.p2.bus import Bus
from mercurystream.p2.config import P2Settings
from mercurystream.p2.consumers import HealthConsumer, VolatilityConsumer, VolumeConsumer, VwapConsumer
from mercurystream.p2.detectors import Detectors
from mercurystream.p2.forensics import _drift_sample
from mercurystream.p2.metrics import P2Metrics
from mercurystream.p2.server import IngestDecoder
from mercurystream.shared.framing import FrameDecoder, FrameTooLarge

RECV_US = 1_796_515_000_000_000
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# --- payloads ------------------------------------------------------------------------------------

huge_ints = st.integers(min_value=-(10**30), max_value=10**30) | st.sampled_from(
    [10**400, -(10**400), 2**63, -(2**63) - 1, 2**64]
)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0])
texts = st.text(max_size=20) | st.sampled_from(
    ["", "X" * 100, "9999-12-31T23:59:59.999999Z", "\u0000", "\ud800", "AB\udfff-USD", "ÉTH-USD", "\u2028"]
)
scalars = st.none() | st.booleans() | huge_ints | floats | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12
)

TRADE = {
    "type": "match",
    "product_id": "BTC-USD",
    "price": 100.5,
    "last_size": 0.25,
    "time": "2026-12-05T23:50:00.123456Z",
    "trade_id": 7,
    "ingest_ts_ms": RECV_US // 1000 - 3,
    "ingest_ts_us": RECV_US - 3000,
}
KEYS = [*TRADE, "recv_ts_ms", "recv_ts_us", "backfilled", "first_missing", "last_missing", "extra"]


@st.composite
def broken_trades(draw) -> bytes:
    """A trade with some fields replaced by any JSON value, some removed, some added."""
    event = dict(TRADE)
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        if draw(st.booleans()):
            event[key] = draw(json_values)
        else:
            event.pop(key, None)
    if draw(st.booleans()):
        event["type"] = draw(st.sampled_from(["match", "ticker", "gap", "backfill", "", "MATCH"]))
    if draw(st.booleans()):
        event["product_id"] = draw(texts)
    return _dumps(event)


def _dumps(value: object) -> bytes:
    """JSON as the standard library writes it: NaN, Infinity and integers of any size included."""
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{}"


def _nested(depth: int, kind: int) -> bytes:
    if kind == 0:
        return b"[" * depth + b"]" * depth
    if kind == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"type":"match","product_id":' + b"[" * depth + b"]" * depth + b"}"


payloads = st.one_of(
    broken_trades(),
    json_values.map(_dumps),
    st.binary(max_size=64),
    st.builds(_nested, st.integers(0, 3000), st.integers(0, 2)),
    st.just(_dumps(TRADE)),
)


# --- the frame decoder ---------------------------------------------------------------------------


def reference_frames(stream: bytes, limit: int) -> tuple[list[bytes], bool]:
    """Whole frames of ``stream`` read at once, and whether an oversize header stops it."""
    out, pos = [], 0
    while len(stream) - pos >= 4:
        (n,) = struct.unpack_from(">I", stream, pos)
        if n > limit:
            return out, True
        if len(stream) - pos - 4 < n:
            break
        out.append(stream[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out, False


def framed(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in pairwise(points)]


streams = st.one_of(
    st.binary(max_size=300),
    st.lists(payloads, max_size=6).map(framed),
    st.tuples(st.lists(payloads, max_size=4), st.binary(max_size=40)).map(lambda t: framed(t[0]) + t[1]),
)


@FUZZ
@given(stream=streams, cuts=st.lists(st.integers(0, 10**6), max_size=12), limit=st.sampled_from([16, 4096, 1 << 20]))
def test_the_frame_decoder_finds_the_reference_frames_in_any_chunking(stream: bytes, cuts: list[int], limit: int):
    want, oversize = reference_frames(stream, limit)
    decoder = FrameDecoder(limit)
    got: list[bytes] = []
    raised = False
    for chunk in chunked(stream, cuts):
        try:
            got += decoder.feed(chunk)
        except FrameTooLarge as exc:
            got += exc.payloads
            raised = True
            break
    assert got == want
    assert raised == oversize
    assert decoder.frames == len(want)


@FUZZ
@given(stream=streams, cuts=st.lists(st.integers(0, 10**6), max_size=12), limit=st.sampled_from([16, 4096, 1 << 20]))
def test_the_ingest_decoder_never_raises_and_counts_every_frame(stream: bytes, cuts: list[int], limit: int):
    ingest = IngestDecoder(limit, clock_us=lambda: RECV_US)
    seen = 0
    for chunk in chunked(stream, cuts):
        got = ingest.feed(chunk)
        events = len(got.batch) if got.batch is not None else 0
        seen += events + len(got.errors)
        if got.batch is not None:
            assert all(b"\n" not in line and b"\r" not in line for line in got.batch.lines)
        if got.oversize is not None:
            break
    assert seen == ingest.frames


# --- the event decoder, normalizer and what reads its batches ------------------------------------


def analytics() -> tuple[list, P2Metrics]:
    bus, metrics, cfg = Bus(), P2Metrics(), P2Settings()
    makers = (VwapConsumer, VolatilityConsumer, VolumeConsumer, HealthConsumer)
    return [make(bus, cfg, metrics) for make in makers], metrics


@FUZZ
@given(batch_payloads=st.lists(payloads, min_size=1, max_size=12))
def test_normalize_never_raises_and_every_payload_is_an_event_or_an_error(batch_payloads: list[bytes]):
    batch, errors = normalize(batch_payloads, RECV_US)
    events = len(batch) if batch is not None else 0
    assert events + len(errors) == len(batch_payloads)
    assert {reason for reason, _ in errors} <= {"invalid_json", "not_object"}
    if batch is None:
        return
    assert all(map(math.isfinite, batch.latencies))
    trades = batch.trades()
    assert len(trades) + len(trades.rejects) == len(batch)
    assert sorted([*trades.positions, *(i for i, _ in trades.rejects)]) == list(range(len(batch)))
    for i in range(len(batch)):
        assert len(batch.part(i, i + 1)) == 1
    for anomaly in Detectors().process(batch):
        if anomaly.type == "schema_drift":
            orjson.loads(_drift_sample(anomaly.detail, batch.lines[anomaly.index], 0.0))
    consumers, metrics = analytics()
    for consumer in consumers:
        consumer.handle(batch)
        consumer.status_line().encode()
    generate_latest(metrics.registry).decode()
