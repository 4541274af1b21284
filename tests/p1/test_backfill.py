"""The backfill: token bucket, planner (cursor pagination, bounds, errors) and the shell against the real simulator."""

from __future__ import annotations

import asyncio
import time

import pytest

from mercurystream.exchange.exchange import ExchangeConfig, ExchangeServer
from mercurystream.p1.backfill import (
    Backfiller,
    BackfillPlanner,
    HttpError,
    Outcome,
    TokenBucket,
    http_get,
    rest_url_for,
)
from mercurystream.p1.gaps import Gap


def rest_trade(tid: int) -> dict:
    return {"time": "2026-12-05T16:00:00.1Z", "trade_id": tid, "price": "100.5", "size": "0.1", "side": "buy"}


def page(hi: int, lo: int) -> list[dict]:
    """Trades ``hi`` down to ``lo``, newest first, as Coinbase lists them."""
    return [rest_trade(t) for t in range(hi, lo - 1, -1)]


def test_the_bucket_allows_its_burst_then_its_rate() -> None:
    b = TokenBucket(10.0, 15.0, now=0.0)
    assert sum(b.take(0.0) for _ in range(20)) == 15
    assert b.wait(0.0) == pytest.approx(0.1)
    assert b.take(0.1) and not b.take(0.1)
    assert sum(b.take(10.0) for _ in range(20)) == 15


def test_a_gap_is_fetched_newest_first_with_the_after_cursor_and_comes_out_oldest_first() -> None:
    p = BackfillPlanner()
    assert p.submit(Gap("BTC-USD", 101, 103, "trade_id")) is None
    pid, path = p.next_request()
    assert pid == "BTC-USD" and path == "/products/BTC-USD/trades?after=104&limit=3"
    trades, outcome = p.on_page(page(103, 101), "101")
    assert [t["trade_id"] for t in trades] == [101, 102, 103]
    assert all(t["type"] == "match" and t["backfilled"] is True and t["product_id"] == "BTC-USD" for t in trades)
    assert (outcome.recovered, outcome.unrecoverable) == (3, 0)
    assert p.counts == {"requested": 3, "recovered": 3, "unrecoverable": 0}
    assert p.next_request() is None


def test_a_wide_gap_takes_pages_and_what_the_history_lacks_is_unrecoverable() -> None:
    p = BackfillPlanner()
    p.submit(Gap("ETH-USD", 1, 2500, "heartbeat"))
    _, path = p.next_request()
    assert path.endswith("after=2501&limit=1000")
    trades, outcome = p.on_page(page(2500, 1501), "1501")
    assert len(trades) == 1000 and outcome is None
    _, path = p.next_request()
    assert path.endswith("after=1501&limit=1000")
    trades, outcome = p.on_page(page(1500, 1201), "1201")  # the history ends at 1201
    assert len(trades) == 300 and outcome is None
    trades, outcome = p.on_page([], None)
    assert trades == [] and (outcome.recovered, outcome.unrecoverable) == (1300, 1200)


def test_a_gap_over_max_ids_is_fetched_from_its_newest_end() -> None:
    p = BackfillPlanner(max_ids=10)
    p.submit(Gap("BTC-USD", 1, 100, "trade_id"))
    _, path = p.next_request()
    assert path.endswith("after=101&limit=10")
    trades, outcome = p.on_page(page(100, 91), "91")
    assert len(trades) == 10 and (outcome.recovered, outcome.unrecoverable) == (10, 90)


def test_ids_outside_the_gap_and_repeats_are_not_forwarded() -> None:
    p = BackfillPlanner()
    p.submit(Gap("BTC-USD", 5, 6, "trade_id"))
    p.next_request()
    trades, outcome = p.on_page([*page(7, 4), rest_trade(6), {"trade_id": "x"}, "junk"], "4")
    assert [t["trade_id"] for t in trades] == [5, 6] and outcome.recovered == 2


def test_a_full_queue_makes_the_gap_unrecoverable_at_once() -> None:
    p = BackfillPlanner(max_queue=1)
    assert p.submit(Gap("BTC-USD", 1, 1, "trade_id")) is None
    outcome = p.submit(Gap("BTC-USD", 5, 8, "trade_id"))
    assert isinstance(outcome, Outcome) and outcome.unrecoverable == 4
    assert p.counts == {"requested": 5, "recovered": 0, "unrecoverable": 4}


def test_errors_a_404_gives_up_a_429_retries_others_retry_a_few_times() -> None:
    p = BackfillPlanner(max_attempts=2)
    p.submit(Gap("XYZ-USD", 1, 1, "trade_id"))
    p.next_request()
    assert p.on_error(404).unrecoverable == 1
    p.submit(Gap("BTC-USD", 1, 2, "trade_id"))
    p.next_request()
    assert all(p.on_error(429) is None for _ in range(10))
    assert p.on_error(503) is None
    assert p.on_error(0).unrecoverable == 2


def test_the_rest_url_follows_the_feed_url() -> None:
    assert rest_url_for("wss://ws-feed.exchange.coinbase.com") == "https://api.exchange.coinbase.com"
    assert rest_url_for("wss://ws-feed-public.sandbox.exchange.coinbase.com") == (
        "https://api-public.sandbox.exchange.coinbase.com"
    )
    assert rest_url_for("ws://127.0.0.1:8765") == "http://127.0.0.1:8765"
    assert rest_url_for("wss://feed.example:9443/ws") == "https://feed.example:9443"


async def test_the_backfiller_recovers_a_gap_from_the_simulator_within_its_rate() -> None:
    server = ExchangeServer(ExchangeConfig(port=0, seed=9, rate=200, products=("BTC-USD",)))
    await server.start()
    try:
        deadline = time.monotonic() + 10
        while server.history.held("BTC-USD") < 50:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        last = server.market.last_trade_id(0)
        got: list[dict] = []
        outcomes: list[Outcome] = []
        results: list[str] = []
        b = Backfiller(
            f"http://127.0.0.1:{server.port}",
            got.extend,
            outcomes.append,
            rate=4.0,
            burst=1.0,
            planner=BackfillPlanner(),
            on_request=results.append,
        )
        await b.start()
        started = time.monotonic()
        for k in range(3):
            b.submit(Gap("BTC-USD", last - 10 * k - 4, last - 10 * k, "trade_id"))
        b.submit(Gap("XYZ-USD", 1, 2, "trade_id"))
        while len(outcomes) < 4:
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        await b.stop()
    finally:
        await server.stop()
    assert [(o.recovered, o.unrecoverable) for o in outcomes] == [(5, 0), (5, 0), (5, 0), (0, 2)]
    assert sorted(t["trade_id"] for t in got) == sorted(
        tid for k in range(3) for tid in range(last - 10 * k - 4, last - 10 * k + 1)
    )
    assert results == ["ok", "ok", "ok", "not_found"]
    assert elapsed >= 3 / 4.0 - 0.05, "4 requests with a bucket of 1 at 4/s take at least 0.75 s"


async def test_http_get_refuses_a_closed_port_with_one_error() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(HttpError):
        await http_get(f"http://127.0.0.1:{port}", "/products/BTC-USD/trades", timeout_s=2)


def test_the_backfiller_keeps_the_planner_it_is_given() -> None:
    """An empty planner has ``len() == 0``: ``planner or BackfillPlanner()`` replaced it, dropping
    ``BACKFILL_QUEUE_GAPS`` and ``BACKFILL_MAX_IDS`` (the app hands over an empty one)."""
    planner = BackfillPlanner(max_queue=3, max_ids=7)
    bf = Backfiller("http://127.0.0.1:1", lambda t: None, lambda o: None, planner=planner)
    assert bf.planner is planner


@pytest.mark.parametrize("base", ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://foo..bar"])
async def test_http_get_turns_an_unusable_url_into_one_error(base: str) -> None:
    """``urlsplit().port`` raises ValueError, the resolver UnicodeError: both used to escape ``http_get``."""
    with pytest.raises(HttpError):
        await http_get(base, "/products/BTC-USD/trades", timeout_s=2)


async def test_a_request_that_raises_anything_is_an_error_outcome_and_the_loop_goes_on(monkeypatch) -> None:
    """Whatever one request raises is counted as an error; the next gap is still fetched (the task used to die)."""
    calls: list[str] = []

    async def broken_get(base_url: str, path: str, **kw: object) -> tuple[int, dict[str, str], bytes]:
        calls.append(path)
        raise RuntimeError("no socket today")

    monkeypatch.setattr("mercurystream.p1.backfill.http_get", broken_get)
    outcomes: list[Outcome] = []
    bf = Backfiller("http://127.0.0.1:1", lambda t: None, outcomes.append, planner=BackfillPlanner(max_attempts=1))
    await bf.start()
    try:
        bf.submit(Gap("BTC-USD", 10, 12, "trade_id"))
        bf.submit(Gap("BTC-USD", 20, 21, "trade_id"))
        deadline = time.monotonic() + 10
        while len(outcomes) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert bf._task is not None and not bf._task.done()
    finally:
        await bf.stop()
    assert [(o.gap.first, o.recovered, o.unrecoverable) for o in outcomes] == [(10, 0, 3), (20, 0, 2)]
    assert bf.requests["error"] == 2 and len(calls) == 2
    assert len(bf.planner) == 0


async def _serve_once(response: bytes) -> asyncio.Server:
    """A server answering every request with ``response`` and closing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0", b"", b"zz"])
async def test_a_malformed_chunk_size_is_one_http_error(size: bytes) -> None:
    server = await _serve_once(CHUNKED + size + b"\r\nhello\r\n0\r\n\r\n")
    try:
        with pytest.raises(HttpError, match="chunk size"):
            await http_get(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "/x", timeout_s=5)
    finally:
        server.close()


async def test_chunked_bodies_still_read() -> None:
    server = await _serve_once(CHUNKED + b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n")
    try:
        status, _, body = await http_get(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "/x", timeout_s=5)
    finally:
        server.close()
    assert (status, body) == (200, b"hello0123456789")


async def test_a_hostile_chunked_answer_is_an_error_outcome_not_a_dead_backfill() -> None:
    """A negative chunk size made readexactly raise ValueError and ended the task; now a failed request."""
    server = await _serve_once(CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n")
    outcomes: list[Outcome] = []
    bf = Backfiller(
        f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
        lambda t: None,
        outcomes.append,
        planner=BackfillPlanner(max_attempts=1),
    )
    await bf.start()
    try:
        bf.submit(Gap("BTC-USD", 10, 12, "trade_id"))
        deadline = time.monotonic() + 10
        while not outcomes and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert bf._task is not None and not bf._task.done()
    finally:
        await bf.stop()
        server.close()
    assert [(o.recovered, o.unrecoverable) for o in outcomes] == [(0, 3)]
    assert bf.requests["error"] == 1
