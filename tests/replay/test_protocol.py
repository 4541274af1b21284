from __future__ import annotations

import orjson
import pytest

from mercurystream.replay.protocol import AckTracker, RatePacer
from mercurystream.shared.framing import encode_frame, encode_frames
from mercurystream.shared.transport import ACK_MAX_BYTES


def test_pacer_schedule_is_absolute() -> None:
    p = RatePacer(rate=100, max_batch=1000, tick_s=0.005)
    p.start(10.0)
    assert p.due(10.0, 0) == 1
    assert p.due(10.0, 1) == 0
    assert p.delay(10.0, 1) == pytest.approx(0.01)
    assert p.due(11.0, 1) == 100
    # Late wake-ups catch up: what is overdue goes out at once.
    assert p.due(15.0, 101) == 400


def test_pacer_caps_batches_and_never_sleeps_less_than_a_tick() -> None:
    p = RatePacer(rate=1_000_000, max_batch=256, tick_s=0.005)
    p.start(0.0)
    assert p.due(1.0, 0) == 256
    assert p.delay(0.0, 1) == 0.005


def test_pacer_rate_zero_is_unlimited() -> None:
    p = RatePacer(rate=0, max_batch=64)
    p.start(0.0)
    assert p.due(0.0, 10**9) == 64
    assert p.delay(0.0, 10**9) == 0.0


def test_pacer_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RatePacer(rate=-1, max_batch=1)
    with pytest.raises(ValueError):
        RatePacer(rate=1, max_batch=0)


def ack(n: int, final: bool = False) -> bytes:
    return encode_frame(orjson.dumps({"ack": n, "final": True} if final else {"ack": n}))


def test_acks_in_any_chunking() -> None:
    stream = ack(3) + ack(10) + encode_frames([b'{"hello":1}', b"[1]", b"nope"]) + ack(7) + ack(12, final=True)
    for step in (1, 3, len(stream)):
        t = AckTracker()
        for i in range(0, len(stream), step):
            t.feed(stream[i : i + step])
        assert t.acked == 12
        assert t.final
        assert t.other == 3


def test_ack_values_must_be_ints() -> None:
    t = AckTracker()
    t.feed(encode_frames([b'{"ack":true}', b'{"ack":1.5}', b'{"ack":"2"}']))
    assert t.acked == 0
    assert t.other == 3


def test_a_peer_that_does_not_speak_the_protocol_is_ignored() -> None:
    t = AckTracker()
    t.feed(b"HTTP/1.1 400 Bad Request\r\n")
    assert t.broken
    t.feed(ack(5))
    assert t.acked == 0
    assert int.from_bytes(b"HTTP", "big") > ACK_MAX_BYTES
