"""Pacing and ack reading of the load generator, without a socket; one run against a local listener."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from benchmarks.loadgen import AckReader, Pacer, send
from benchmarks.stream import FrameStream, generate_pool
from mercurystream.shared.framing import FrameDecoder, encode_frame


def test_pacer_owes_events_linearly_and_caps_catch_up():
    p = Pacer(rate=100_000, total=1_000_000, tick_s=0.001, max_chunk_s=0.01)
    p.start(0.0)
    assert p.due(0.0) == 0
    assert p.due(0.001) == 100
    p.record(100)
    assert p.due(0.0015) == 0  # half a tick's worth: wait for the rest
    assert p.wait(0.0015) == pytest.approx(0.001)
    assert p.due(0.002) == 100
    assert p.due(1.0) == 1_000  # a second behind: one 10 ms chunk at a time
    assert p.max_lag_s == pytest.approx(1.0 - 0.001 - 0.001, abs=1e-3)


def test_pacer_waits_a_tick_at_high_rates_and_until_due_at_low_ones():
    fast = Pacer(rate=1_000_000, total=10)
    fast.start(0.0)
    assert fast.wait(0.0) == fast.tick_s
    slow = Pacer(rate=10, total=10)
    slow.start(0.0)
    assert slow.wait(0.0) == pytest.approx(0.1)
    slow.record(10)
    assert slow.done and slow.due(5.0) == 0


def test_pacer_sends_a_ticks_worth_at_a_time_and_the_last_frames_without_waiting():
    """A loop that asks again microseconds later gets nothing until the next tick: it sleeps, not spins."""
    p = Pacer(rate=150_000, total=1_000, tick_s=0.001)
    p.start(0.0)
    sends = []
    now = 0.0
    while not p.done:
        n = p.due(now)
        if n:
            sends.append(n)
            p.record(n)
        now += 0.00003
    assert sum(sends) == 1_000
    assert all(n >= 150 for n in sends[:-1])
    assert len(sends) == 7


def test_ack_reader_keeps_the_latest_ack_across_split_reads():
    acks = AckReader()
    data = encode_frame(b'{"ack":3}') + encode_frame(b'{"ack":7,"final":true}')
    acks.feed(data[:5])
    assert acks.acked == 0
    acks.feed(data[5:])
    assert acks.acked == 7 and acks.final


def send_to_receiver(pacer: Pacer, sleep_s: float = 0.0) -> tuple[dict, bytes]:
    """``send`` to a local receiver that sleeps ``sleep_s`` before reading; the figures and every byte it got."""
    listener = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            time.sleep(sleep_s)
            while data := conn.recv(1 << 20):
                received.extend(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    stream = FrameStream(generate_pool(500))
    with socket.create_connection(listener.getsockname()) as sock:
        figures, _ = send(sock, stream, pacer)
        sock.shutdown(socket.SHUT_WR)
        t.join(10)
    listener.close()
    return figures, bytes(received)


def test_send_delivers_every_frame_at_the_rate():
    figures, received = send_to_receiver(Pacer(rate=20_000, total=4_000))
    assert figures["sent"] == 4_000 and not figures["receiver_closed"]
    assert figures["elapsed_s"] >= 0.199
    decoder = FrameDecoder()
    assert len(decoder.feed(received)) == 4_000 and decoder.buffered == 0


def test_send_waits_for_a_slow_receiver_and_still_delivers_every_frame():
    # About 24 MB, more than the socket buffers hold while the receiver sleeps.
    figures, received = send_to_receiver(Pacer(rate=400_000, total=100_000), sleep_s=0.5)
    assert figures["sent"] == 100_000 and not figures["receiver_closed"]
    assert figures["blocked_s"] > 0.05
    decoder = FrameDecoder()
    assert len(decoder.feed(received)) == 100_000 and decoder.buffered == 0
