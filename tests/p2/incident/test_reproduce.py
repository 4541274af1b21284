"""The reproduction check: a bundle's own lines through fresh detectors, as the Reproduce command sends them."""

from __future__ import annotations

import orjson

from mercurystream.p2.batch import normalize
from mercurystream.p2.detectors import Detectors
from mercurystream.p2.flight_recorder import FlightRecorder
from mercurystream.p2.incident.reproduce import check

BASE_US = 1_700_000_000_000_000
PRE, POST, WINDOW = 500, 100, 50


def line(n: int, product: str, trade_id: int) -> bytes:
    ingest = BASE_US + n * 1000
    return orjson.dumps(
        {
            "type": "match",
            "product_id": product,
            "price": 1.0,
            "last_size": 1.0,
            "time": "2023-11-14T22:13:20.123456Z",
            "trade_id": trade_id,
            "ingest_ts_ms": ingest // 1000,
            "ingest_ts_us": ingest,
            "recv_ts_ms": ingest // 1000 + 1,
            "recv_ts_us": ingest + 1000,
        }
    )


def stream(products: int, rounds: int, skip_at: int) -> list[bytes]:
    """Products trading in turn; P0 skips five ids at its ``skip_at``-th trade."""
    out = []
    for k in range(rounds):
        for p in range(products):
            tid = 1000 + k + (5 if p == 0 and k >= skip_at else 0)
            out.append(line(len(out), f"P{p}-USD", tid))
    return out


def capture(lines: list[bytes], detectors: Detectors | None = None, pre: int = PRE, post: int = POST, step: int = 100):
    """The first bundle a P2 with this test's settings (or ``detectors``) writes from ``lines``,
    read ``step`` lines at a time."""
    detectors = detectors or Detectors(gap_reorder_window=WINDOW)
    recorder = FlightRecorder(pre, post, 60.0, clock=lambda: 0.0, wall_clock=lambda: 1.7e9)
    for i in range(0, len(lines), step):
        batch, _ = normalize(lines[i : i + step], BASE_US)
        done = recorder.feed(batch.lines, detectors.process(batch).triggers(), batch.recv_ts_us).completed
        if done:
            return done[0]
    return recorder.finalize()


def meta_of(cap) -> dict:
    config = {"GAP_REORDER_WINDOW": WINDOW, "FLIGHT_PRE_EVENTS": PRE, "FLIGHT_POST_EVENTS": POST}
    return {"type": cap.type, "trigger_line": cap.trigger_line, "config": config}


def test_a_gap_whose_jump_is_in_the_bundle_is_reproduced_on_its_own_line() -> None:
    cap = capture(stream(products=3, rounds=200, skip_at=40))
    assert cap.type == "sequence_gap"
    result = check(cap.lines(), meta_of(cap))
    assert result.reproduced is True, result.why
    assert (result.type, result.line) == ("sequence_gap", cap.trigger_line)


def test_a_gap_confirmed_after_more_lines_than_the_ring_holds_is_reported_not_reproduced() -> None:
    # 20 products: the gap is confirmed 50 of P0's events (1,000 lines) after its jump; the ring holds 500.
    cap = capture(stream(products=20, rounds=100, skip_at=10))
    assert cap.type == "sequence_gap"
    result = check(cap.lines(), meta_of(cap))
    assert result.reproduced is False
    assert "FLIGHT_PRE_EVENTS" in result.why and "jump" in result.why


def test_another_trigger_first_in_the_replay_is_named() -> None:
    cap = capture(stream(products=3, rounds=200, skip_at=40))
    lines = cap.lines()
    lines.insert(1, lines[0])  # a duplicate before the gap: a fresh P2 would capture it first
    meta = meta_of(cap) | {"trigger_line": cap.trigger_line + 1}
    result = check(lines, meta)
    assert result.reproduced is False
    assert (result.type, result.line) == ("duplicate", 2)
    assert "first triggers duplicate on line 2" in result.why


def test_lines_replay_would_not_send_keep_the_others_on_their_own_line_numbers() -> None:
    cap = capture(stream(products=3, rounds=200, skip_at=40))
    lines = [b"not json", b"", b"[1]", *cap.lines()]
    result = check(lines, meta_of(cap) | {"trigger_line": cap.trigger_line + 3})
    assert result.reproduced is True, result.why
    assert result.line == cap.trigger_line + 3


LATENCY = {"LATENCY_BUFFER_SIZE": 300, "LATENCY_EVAL_EVERY": 100, "LATENCY_SPIKE_CONSECUTIVE": 2}


def latency_stream(calm: int, late: int) -> list[bytes]:
    """One product's trades, ``calm`` of them 1 ms late and then ``late`` of them 300 ms late."""
    out = []
    for n in range(calm + late):
        e = orjson.loads(line(n, "BTC-USD", 1000 + n))
        e["recv_ts_us"] = e["ingest_ts_us"] + (1000 if n < calm else 300_000)
        e["recv_ts_ms"] = e["recv_ts_us"] // 1000
        out.append(orjson.dumps(e))
    return out


def latency_capture(lines: list[bytes], pre: int, post: int = POST):
    detectors = Detectors(latency_buffer_size=300, latency_eval_every=100, latency_consecutive=2)
    return capture(lines, detectors, pre, post, step=64)


def test_a_latency_spike_after_any_length_of_calm_is_reproduced_on_its_own_line() -> None:
    """The cadence starts at the episode's first late sample, wherever the bundle begins."""
    for calm in (1000, 1037, 1063):
        cap = latency_capture(latency_stream(calm, 600), PRE)
        assert cap.type == "latency_spike"
        meta = {"type": cap.type, "trigger_line": cap.trigger_line, "config": {**LATENCY, "FLIGHT_PRE_EVENTS": PRE}}
        got = check(cap.lines(), meta)
        assert got.reproduced is True, (calm, got.why)
        assert got.line == cap.trigger_line


def test_a_latency_bundle_that_starts_inside_its_episode_is_reported_not_reproduced() -> None:
    cap = latency_capture(latency_stream(1037, 600), 150)
    meta = {"type": cap.type, "trigger_line": cap.trigger_line, "config": {**LATENCY, "FLIGHT_PRE_EVENTS": 150}}
    got = check(cap.lines(), meta)
    # The bundle starts 87 samples into the episode: the replay's cadence starts at its first line.
    assert got.reproduced is False
    assert (got.type, got.line) == ("latency_spike", cap.trigger_line + 50)
    short = latency_capture(latency_stream(1037, 600), 150, post=20)
    got = check(short.lines(), meta | {"trigger_line": short.trigger_line})
    assert got.reproduced is False and got.type is None
    assert "the latency episode began before the bundle's first line" in got.why


def test_nothing_to_check_for_a_manual_dump_or_a_trigger_outside_the_file() -> None:
    lines = stream(products=1, rounds=5, skip_at=99)
    assert check(lines, {"type": "manual", "trigger_line": None}).reproduced is None
    assert check(lines, {"type": "duplicate", "trigger_line": 6}).reproduced is None
    assert check(lines, {"type": "duplicate", "trigger_line": "1"}).reproduced is None


def test_a_hostile_config_falls_back_to_the_defaults() -> None:
    cap = capture(stream(products=3, rounds=200, skip_at=40))
    meta = meta_of(cap)
    meta["config"] = {"GAP_REORDER_WINDOW": WINDOW, "FLIGHT_PRE_EVENTS": "lots", "LATENCY_BUFFER_SIZE": [1]}
    assert check(cap.lines(), meta).reproduced is True
    assert check(cap.lines(), {**meta, "config": "nope"}).reproduced is True
    meta["config"] = {"GAP_REORDER_WINDOW": -5, "FLIGHT_POST_EVENTS": 10**30, "FLIGHT_PRE_EVENTS": True}
    assert check(cap.lines(), meta).reproduced is True  # refused values leave the defaults (a window of 50)


def test_a_config_p2_would_refuse_to_run_is_not_checked() -> None:
    cap = capture(stream(products=3, rounds=200, skip_at=40))
    meta = meta_of(cap) | {"config": {"LATENCY_EVAL_EVERY": 1 << 62, "LATENCY_SPIKE_CONSECUTIVE": 4}}
    result = check(cap.lines(), meta)
    assert result.reproduced is None and "config" in result.why


def test_the_report_says_whether_its_replay_command_reproduces_the_incident(tmp_path) -> None:
    from mercurystream.p2.incident.bundle import write_bundle

    good = capture(stream(products=3, rounds=200, skip_at=40))
    bad = capture(stream(products=20, rounds=100, skip_at=10))
    for cap in (good, bad):
        cap.context = {"config": meta_of(cap)["config"]}
    good_report = (write_bundle(tmp_path, good) / "report.md").read_text()
    bad_report = (write_bundle(tmp_path, bad) / "report.md").read_text()
    assert "It reproduces the incident" in good_report
    assert "**It does not reproduce the incident**" in bad_report
    assert "GAP_REORDER_WINDOW" in bad_report
