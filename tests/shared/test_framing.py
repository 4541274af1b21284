"""The frame codec: any chunking decodes the same, limits hold before allocation, garbage is classified."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    FrameDecoder,
    FrameTooLarge,
    decode_object,
    encode_event,
    encode_frame,
    encode_frames,
)


def chunks_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (clamped, sorted, duplicates allowed: empty chunks are valid input)."""
    points = sorted(min(c, len(data)) for c in cuts)
    out = []
    start = 0
    for p in points:
        out.append(data[start:p])
        start = p
    out.append(data[start:])
    return out


def decode_all(decoder: FrameDecoder, parts: list[bytes]) -> list[bytes]:
    got: list[bytes] = []
    for part in parts:
        got.extend(decoder.feed(part))
    return got


payloads_st = st.lists(st.binary(max_size=300), max_size=30)


@settings(max_examples=300, deadline=None)
@given(payloads=payloads_st, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_chunking_decodes_to_the_same_payloads(payloads: list[bytes], cuts: list[int]) -> None:
    stream = encode_frames(payloads)
    decoder = FrameDecoder()
    got = decode_all(decoder, chunks_at(stream, cuts))
    assert got == payloads
    assert decoder.frames == len(payloads)
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(payloads=payloads_st)
def test_byte_at_a_time_and_one_blob_agree(payloads: list[bytes]) -> None:
    stream = encode_frames(payloads)
    one = FrameDecoder().feed(stream)
    bytewise = decode_all(FrameDecoder(), [stream[i : i + 1] for i in range(len(stream))])
    assert one == bytewise == payloads


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=10), data=st.data())
def test_truncated_stream_keeps_the_incomplete_frame_buffered(payloads: list[bytes], data: st.DataObject) -> None:
    stream = encode_frames(payloads)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
    decoder = FrameDecoder()
    got = decoder.feed(stream[:cut])
    assert payloads[: len(got)] == got
    assert decoder.buffered == cut - sum(HEADER.size + len(p) for p in got)
    assert got + decoder.feed(stream[cut:]) == payloads


def test_encode_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frames([b"a", b""]) == b"\x00\x00\x00\x01a\x00\x00\x00\x00"
    assert encode_frames([]) == b""
    assert encode_event({"a": 1}) == b"\x00\x00\x00\x07" + b'{"a":1}'


def test_empty_payload_is_a_frame() -> None:
    assert FrameDecoder().feed(encode_frame(b"")) == [b""]


def test_oversize_header_raises_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(HEADER.pack(101))
    assert info.value.length == 101
    assert info.value.limit == 100
    assert info.value.payloads == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"anything after is untrusted")


def test_frames_before_an_oversize_header_in_the_same_read_are_returned() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    good = [b'{"a":1}', b'{"b":2}']
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(encode_frames(good) + HEADER.pack(1 << 31) + b"junk")
    assert info.value.payloads == good
    assert decoder.frames == 2


def test_frame_exactly_at_the_limit_passes() -> None:
    decoder = FrameDecoder(max_frame_bytes=5)
    assert decoder.feed(encode_frame(b"12345")) == [b"12345"]


def test_oversize_header_split_across_reads() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    header = HEADER.pack(0xFFFFFFFF)
    assert decoder.feed(header[:3]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(header[3:])


def test_a_huge_announced_frame_is_never_preallocated() -> None:
    """Even under a generous limit, the decoder only holds what actually arrived."""
    decoder = FrameDecoder(max_frame_bytes=0xFFFFFFFF)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        assert decoder.feed(HEADER.pack(0xFFFFFFF0) + b"x" * 100) == []
        for _ in range(100):
            assert decoder.feed(b"y" * 100) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered == 4 + 100 + 100 * 100
    assert peak < 256 * 1024


def test_large_frame_in_many_chunks_is_joined_once() -> None:
    body = bytes(range(256)) * 4096
    stream = encode_frame(body) + encode_frame(b"next")
    decoder = FrameDecoder(max_frame_bytes=DEFAULT_MAX_FRAME_BYTES)
    got = decode_all(decoder, [stream[i : i + 1000] for i in range(0, len(stream), 1000)])
    assert got == [body, b"next"]


def test_max_frame_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b'{"a":1}{"b":2}', "invalid_json"),
        (b"[1,2]", "not_object"),
        (b"42", "not_object"),
        (b'"text"', "not_object"),
        (b"null", "not_object"),
    ],
)
def test_decode_object_classifies_garbage(payload: bytes, reason: str) -> None:
    assert decode_object(payload) == (None, reason)


def test_decode_object_accepts_objects() -> None:
    assert decode_object(b' {"price": 1.5, "n": [1]} ') == ({"price": 1.5, "n": [1]}, None)
    assert decode_object(b"{}") == ({}, None)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_decode_object_never_raises(garbage: bytes) -> None:
    obj, reason = decode_object(garbage)
    assert (obj is None) != (reason is None)
    assert reason in (None, "invalid_json", "not_object")


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.dictionaries(
            st.text(max_size=8),
            st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=8) | st.floats(allow_nan=False),
        ),
        max_size=10,
    )
)
def test_events_round_trip_through_frames(events: list[dict]) -> None:
    stream = b"".join(encode_event(e) for e in events)
    decoded = [decode_object(p)[0] for p in FrameDecoder().feed(stream)]
    assert decoded == [orjson.loads(orjson.dumps(e)) for e in events]
