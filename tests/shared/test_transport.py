"""The ack codec: one format, one size limit, one error type, any chunking."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mercurystream.shared.framing import FrameDecoder, encode_frame, encode_frames
from mercurystream.shared.transport import ACK_MAX_BYTES, Ack, AckDecoder, AckError, decode_ack, encode_ack


def payload_of(frame: bytes) -> bytes:
    (payload,) = FrameDecoder().feed(frame)
    return payload


def test_encoded_acks_are_the_documented_json() -> None:
    assert orjson.loads(payload_of(encode_ack(7))) == {"ack": 7}
    assert orjson.loads(payload_of(encode_ack(0, final=True))) == {"ack": 0, "final": True}


@pytest.mark.parametrize("count", [-1, 1.5, True, "3"])
def test_only_a_non_negative_int_can_be_encoded(count: object) -> None:
    with pytest.raises(ValueError):
        encode_ack(count)  # type: ignore[arg-type]


@given(count=st.integers(0, 2**63 - 1), final=st.booleans())
def test_acks_round_trip(count: int, final: bool) -> None:
    assert decode_ack(payload_of(encode_ack(count, final))) == Ack(count, final)


def test_a_missing_final_is_false_and_unknown_keys_are_ignored() -> None:
    assert decode_ack(b'{"ack":3}') == Ack(3, False)
    assert decode_ack(b'{"ack":3,"final":false,"note":"x"}') == Ack(3, False)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"nope", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"{}", "ack is not"),
        (b'{"ack":-1}', "ack is not"),
        (b'{"ack":true}', "ack is not"),
        (b'{"ack":1.0}', "ack is not"),
        (b'{"ack":"2"}', "ack is not"),
        (b'{"ack":2,"final":1}', "final is not"),
        (b'{"ack":2,"final":null}', "final is not"),
        (b'{"ack":1,"pad":"' + b"x" * ACK_MAX_BYTES + b'"}', "exceeds the limit"),
    ],
)
def test_malformed_acks_raise_the_codec_error(payload: bytes, reason: str) -> None:
    with pytest.raises(AckError, match=reason) as info:
        decode_ack(payload)
    assert not info.value.fatal
    assert info.value.payload == payload[:200]


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_only_the_codec_error(payload: bytes) -> None:
    try:
        ack = decode_ack(payload)
    except AckError:
        return
    assert type(ack.count) is int and ack.count >= 0 and type(ack.final) is bool


def test_the_decoder_returns_acks_and_errors_in_stream_order_in_any_chunking() -> None:
    stream = encode_ack(3) + encode_frames([b"nope", b'{"ack":"x"}']) + encode_ack(9, final=True)
    for step in (1, 2, 5, len(stream)):
        decoder = AckDecoder()
        out = [m for i in range(0, len(stream), step) for m in decoder.feed(stream[i : i + step])]
        assert out[0] == Ack(3) and out[3] == Ack(9, True)
        assert all(isinstance(m, AckError) and not m.fatal for m in out[1:3])


def test_an_oversize_header_is_fatal_after_the_acks_before_it_and_closes_the_decoder() -> None:
    decoder = AckDecoder()
    out = decoder.feed(encode_ack(4) + b"HTTP/1.1 400 Bad Request\r\n")
    assert out[0] == Ack(4)
    assert isinstance(out[1], AckError) and out[1].fatal
    assert decoder.closed
    assert decoder.feed(encode_ack(5)) == []
    assert int.from_bytes(b"HTTP", "big") > ACK_MAX_BYTES


def test_a_frame_at_the_limit_is_decoded_one_byte_over_is_fatal() -> None:
    at_limit = b'{"ack":1,"pad":"' + b"x" * (ACK_MAX_BYTES - 18) + b'"}'
    assert len(at_limit) == ACK_MAX_BYTES
    assert AckDecoder().feed(encode_frame(at_limit)) == [Ack(1)]
    (err,) = AckDecoder().feed(encode_frame(at_limit[:-2] + b'x"}'))
    assert isinstance(err, AckError) and err.fatal


@given(chunks=st.lists(st.binary(max_size=40), max_size=20))
def test_the_decoder_never_raises_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = AckDecoder()
    for chunk in chunks:
        for msg in decoder.feed(chunk):
            assert isinstance(msg, (Ack, AckError))


@given(acks=st.lists(st.tuples(st.integers(0, 2**40), st.booleans()), max_size=10), cut=st.integers(1, 50))
def test_any_sequence_of_acks_survives_any_chunking(acks: list[tuple[int, bool]], cut: int) -> None:
    stream = b"".join(encode_ack(n, f) for n, f in acks)
    decoder = AckDecoder()
    out = [m for i in range(0, len(stream), cut) for m in decoder.feed(stream[i : i + cut])]
    assert out == [Ack(n, f) for n, f in acks]
