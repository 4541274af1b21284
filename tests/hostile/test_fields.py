"""Hostile field values against a real P2: long ids (D1), huge integers (D3), NaN/Infinity, far-future times."""

from __future__ import annotations

import pytest

from tests.hostile.harness import frame, odd_payloads, payload, trade, wait_until

pytestmark = pytest.mark.e2e


def test_a_900_kb_product_id_keeps_the_log_and_metrics_small_through_many_status_intervals(start_p2):
    """D1: the id was printed in full by three status lines at every interval (46 GB of log a day)."""
    p2 = start_p2(RECORD="true", STATUS_INTERVAL_S="0.1")
    long_id = "X" * 900_000
    sent = 0
    with p2.guard():
        for round_ in range(3):
            events = [trade(round_ * 10 + i, product=long_id) for i in range(5)] + [trade(1000 + round_)]
            sent += p2.send(payload(e) for e in events)
            p2.settle(5)
    m = p2.verdict(frames_sent=sent, log_max=256 * 1024, metrics_max=64 * 1024)
    assert m.total("mercurystream_analytics_skipped_total", consumer="vwap") >= 15
    assert long_id[:1000] not in p2.log_text()


def test_1100_ids_of_100_kb_make_a_small_metrics_response(start_p2):
    """D1: 1,100 distinct 100 KB ids made a 307 MB /metrics; labels are bounded in width and number.

    The output bounds hold already; the memory bound waits for the flight ring's byte budget
    (110 MB of ids sit in a ring bounded in events only).
    """
    p2 = start_p2()
    sent = 0
    with p2.guard():
        for start in range(0, 1100, 50):
            events = [trade(i, product=f"{i:04d}" + "Y" * 100_000) for i in range(start, start + 50)]
            sent += p2.send(payload(e) for e in events)
        # and as many short, valid ids, past the label cap
        sent += p2.send(payload(trade(i, product=f"P{i}-USD")) for i in range(1100))
    p2.verdict(frames_sent=sent, metrics_max=128 * 1024)


def test_a_401_digit_integer_price_loses_only_its_own_trade(start_p2):
    """D3: the price passed the typed decode and failed in the analytics, losing the whole read uncounted."""
    p2 = start_p2(RECORD="true")
    events = [trade(i) for i in range(10)]
    events[4]["price"] = 10**400
    with p2.guard():
        sent = p2.send([*map(payload, events[:4]), _raw_int_price(events[4]), *map(payload, events[5:])])
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_trades_1m", product_id="BTC-USD") == 9
    assert m.total("mercurystream_analytics_skipped_total", consumer="vwap") == 1


def _raw_int_price(event: dict) -> bytes:
    """The event with its price written as a bare integer of any size (orjson refuses to write one)."""
    digits = str(event["price"])
    return payload({**event, "price": 0}).replace(b'"price":0', b'"price":' + digits.encode())


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"]


def test_non_finite_prices_and_sizes_are_counted_not_crashing(start_p2):
    p2 = start_p2(RECORD="true")
    good = [payload(trade(i)) for i in range(5)]
    bad = []
    for k, token in enumerate(NON_FINITE):
        bad.append(payload(trade(100 + k, price=0)).replace(b'"price":0', b'"price":' + token))
        bad.append(payload(trade(200 + k, size=0)).replace(b'"last_size":0', b'"last_size":' + token))
    with p2.guard():
        sent = p2.send([*good[:2], *bad, *good[2:]])
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_trades_1m", product_id="BTC-USD") == 5
    assert m.total("mercurystream_analytics_skipped_total", consumer="vwap") == len(bad)


def test_a_far_future_trade_does_not_zero_other_products_volume(start_p2):
    """One trade timed 9999-12-31 moved every window's clock and zeroed every product's one-minute volume."""
    p2 = start_p2()
    events = [trade(i, product="ETH-USD") for i in range(5)]
    events.append(trade(99, product="BTC-USD", t="9999-12-31T23:59:59.999999Z"))
    events += [trade(i, product="ETH-USD") for i in range(5, 10)]
    with p2.guard():
        sent = p2.send(payload(e) for e in events)
        sent += p2.send(payload(trade(i, product="SOL-USD")) for i in range(3))
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_trades_1m", product_id="ETH-USD") == 10
    assert m.value("mercurystream_trades_1m", product_id="SOL-USD") == 3
    assert m.value("mercurystream_analytics_skipped_total", consumer="volume", reason="invalid_time") == 1


def test_deeply_nested_json_is_a_counted_frame_error_and_the_connection_goes_on(start_p2):
    """msgspec raised RecursionError from normalize, which escaped the read and killed the connection."""
    p2 = start_p2(RECORD="true")
    nested = [
        b"[" * 1000 + b"]" * 1000,
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"type":"match","product_id":' + b"{" * 0 + b"[" * 999 + b"]" * 999 + b"}",
        b'{"a":' + b'{"b":' * 2000 + b"1" + b"}" * 2000 + b"}",
        # deep but within the parsers' limits: parsed, then drift, sampled and recorded like any
        b'{"type":"match","product_id":"BTC-USD","x":' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"type":"match","product_id":' + b"[" * 900 + b"]" * 900 + b"}",
    ]
    good = [payload(trade(i)) for i in range(6)]
    with p2.guard():
        sent = p2.send([good[0], *nested[:2], good[1], *nested[2:], *good[2:]])
        sent += p2.send(nested)
        sent += p2.send([payload(trade(6))])
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_trades_1m", product_id="BTC-USD") == 7
    skipped = m.total("mercurystream_analytics_skipped_total", consumer="vwap")
    assert m.total("mercurystream_frame_errors_total") + skipped == 12


def test_frames_of_garbage_wrong_headers_and_cut_streams_are_counted(start_p2):
    """Garbage, oversize and truncated frames: each counted under its reason, the rest served."""
    p2 = start_p2(RECORD="true")
    garbage = [b"", b"\x00\xff\xfe", b"not json", b"[1,2,3]", b'"string"', b"{", b"\x80" * 100, b"null", b"1e999"]
    with p2.guard():
        sent = p2.send([payload(trade(1)), *garbage, payload(trade(2))])
        # an oversize header closes the connection; the frames before it still count
        with p2.connect() as s:
            s.sendall(frame(payload(trade(3))) + b"\xff\xff\xff\xff" + b"z" * 100)
            assert p2.wait_ack(s, 1) == 1
            assert s.recv(65536) in (b"",) or True
        sent += 2
        # a stream cut inside a frame: the header promises more than arrives
        with p2.connect() as s:
            s.sendall(frame(payload(trade(4))) + frame(payload(trade(5)))[:20])
            assert p2.wait_ack(s, 1) == 1
        sent += 2
        sent += p2.send([payload(trade(6))])
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_frame_errors_total", reason="oversize") == 1
    assert m.value("mercurystream_frame_errors_total", reason="truncated") == 1
    assert m.value("mercurystream_trades_1m", product_id="BTC-USD") == 5


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_odd_values_are_counted_on_one_connection_and_recorded_in_either_format(start_p2, fmt):
    """Each of these raised somewhere between the socket and the file, or was feared to."""
    p2 = start_p2(RECORD="true", RECORD_FORMAT=fmt, RECORD_ROTATE_S="0.5")
    odd = odd_payloads()
    good = [payload(trade(i)) for i in range(10)]
    with p2.guard():
        sent = p2.send([*good[:5], *odd, *good[5:]])
        sent += p2.send([*odd[:3], payload(trade(99))])
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_events_total") == sent
    assert m.value("mercurystream_trades_1m", product_id="BTC-USD") >= 11

    def recorded() -> float:
        m = p2.metrics()
        return m.value("mercurystream_recorded_events_total") + m.total("mercurystream_recorder_rejected_total")

    assert wait_until(lambda: recorded() == sent), f"{recorded()} of {sent} events recorded or rejected"
    assert m.value("mercurystream_recorder_errors_total") == 0


def test_a_sustained_stream_of_bad_input_keeps_the_log_small(start_p2):
    """Every reason is logged as a bounded sample, not once per event: 30,000 bad frames and events."""
    p2 = start_p2(RECORD="true", STATUS_INTERVAL_S="0.1")
    bad = [
        b"not json",
        b"[1]",
        payload(trade(0, product="Q" * 1000)),
        payload(trade(0, price="x")),
        payload({**trade(0), "type": []}),
        payload(trade(0, t="9999-12-31T23:59:59.999999Z")),
        b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}",
    ]
    sent = 0
    with p2.guard():
        for _ in range(6):
            sent += p2.send(bad[k % len(bad)] for k in range(5000))
    p2.verdict(frames_sent=sent, log_max=200 * 1024)
