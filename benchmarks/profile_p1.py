"""In-process profile of P1's hot path: WebSocket bytes → adapter → pipeline → sink buffer → frames.

Why in-process: the benchmark (``measure.p1_throughput``) runs the exchange, P1 and P2 as processes
on shared cores, which says how fast P1 goes but not where its time goes, and its rate moves with
whatever else the machine runs. This builds what the offline exchange sends a ``matches``
subscriber in flood mode (the ``subscriptions`` reply, a ``last_match`` per product, then its
trades as one WebSocket text frame each, with a round of heartbeats every
:data:`HEARTBEAT_EVERY` trades), cuts the bytes into socket-sized reads, and pushes every read
through the production objects :class:`P1App` builds from default :class:`P1Settings`: the
connection's ``data_received`` (websockets' parser, the adapter, the gap tracker, the pipeline,
the sink's ``publish``), then drains the sink buffer as its writer does (``take``, ``encode_frames``,
an ack for everything). The figure is CPU time (``time.process_time``) per trade message, the
median of ``--runs`` runs, each with a fresh app; only the network is missing.

    .venv/bin/python benchmarks/profile_p1.py                  # median CPU µs per message
    .venv/bin/python benchmarks/profile_p1.py --cprofile 25    # plus the top functions
    .venv/bin/python benchmarks/profile_p1.py --json           # one JSON object, for tools
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import time
from typing import Any

import orjson
from loguru import logger
from websockets.server import ServerProtocol

from mercurystream.exchange.market import MATCH, Market
from mercurystream.p1.app import P1App
from mercurystream.p1.config import P1Settings
from mercurystream.p1.feed import WsClient, _Connection
from mercurystream.shared.framing import encode_frames
from mercurystream.shared.runtime import tune_gc

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
"""P1's default products, which the offline exchange also trades."""

HEARTBEAT_EVERY = 60_000
"""Trades between two rounds of heartbeats: the exchange sends one a second at about this rate."""


class NullTransport:
    """Where the connection writes (the handshake request, the subscribe); kept for the server side."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def abort(self) -> None:
        pass


def venue_messages(n: int, seed: int) -> list[bytes]:
    """What a ``matches`` subscriber reads: the reply, the last matches, ``n`` trades and heartbeats."""
    market = Market(SYMBOLS, rate=50_000.0, seed=seed, start_us=time.time_ns() // 1000 - 3_600_000_000)
    market.tickers = False
    channels = [{"name": name, "product_ids": list(SYMBOLS)} for name in ("matches", "heartbeat")]
    out = [orjson.dumps({"type": "subscriptions", "channels": channels})]
    out += [market.last_match(p) for p in range(len(SYMBOLS))]
    trades = 0
    offset = 0
    next_beat = HEARTBEAT_EVERY
    while trades < n:
        offset += 100_000
        batch = [text for _, kind, text in market.advance(offset) if kind == MATCH][: n - trades]
        out += batch
        trades += len(batch)
        if trades >= next_beat:
            out += [text for _, _, text in market.heartbeats(offset)]
            next_beat += HEARTBEAT_EVERY
    return out


class Run:
    """One fresh :class:`P1App` with an open connection, ready for the reads."""

    def __init__(self, messages: list[bytes], read_bytes: int) -> None:
        settings = P1Settings(COINBASE_WS_URL="ws://127.0.0.1:9", SYMBOLS=list(SYMBOLS))
        self.app = app = P1App(settings)
        feed = app.feed
        client = WsClient(feed.url, feed.max_size)
        self.conn = conn = _Connection(client, feed._deliver, feed._failed, feed.close_timeout_s)
        transport = NullTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        server = ServerProtocol()
        server.receive_data(b"".join(transport.written))
        request = server.events_received()[0]
        server.send_response(server.accept(request))
        conn.data_received(b"".join(server.data_to_send()))
        assert conn.opened.done() and conn.opened.exception() is None, "the handshake failed"
        feed._conn = conn
        protocol = feed.protocol
        protocol.on_connect()
        requests = protocol.subscribe_requests() if hasattr(protocol, "subscribe_requests") else None
        for text in requests or [protocol.subscribe_request()]:
            conn.send_text(text)
        for text in messages:
            server.send_text(text)
        data = b"".join(server.data_to_send())
        self.reads = [data[i : i + read_bytes] for i in range(0, len(data), read_bytes)]
        app.sink.buffer.on_connect()

    def __call__(self) -> None:
        """Every read through the connection, then the sink's writer and an ack, as P1 runs them."""
        data_received = self.conn.data_received
        sink = self.app.sink
        buffer = sink.buffer
        take = buffer.take
        max_batch = sink.max_batch
        forwarded = sink._m_forwarded
        for data in self.reads:
            data_received(data)
            while batch := take(max_batch):
                encode_frames(batch)
                forwarded.inc(len(batch))
            acked = buffer.on_ack(buffer.conn_sent)
            sink._m_acked.inc(acked)
            sink._m_buffered.set(buffer.held)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000, help="trade messages per run")
    ap.add_argument("--read-bytes", type=int, default=65_536, help="bytes per socket read")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="also profile one run; top N by own time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logger.remove()  # a subscribe per run logs; the figures are the output
    asyncio.run(profile(args))


async def profile(args: argparse.Namespace) -> None:
    messages = venue_messages(args.messages, args.seed)
    tune_gc()
    figures: list[float] = []
    result: dict[str, Any] = {}
    for _ in range(args.runs):
        run = Run(messages, args.read_bytes)
        t0 = time.process_time()
        run()
        cpu = time.process_time() - t0
        buffer = run.app.sink.buffer
        if buffer.acked != args.messages:
            raise SystemExit(f"acked {buffer.acked} of {args.messages} trades: the run is not P1's normal path")
        figures.append(cpu / args.messages * 1e6)
        result = {"messages": args.messages, "reads": len(run.reads), "read_bytes": args.read_bytes}
    result["cpu_us_per_message"] = [round(f, 3) for f in figures]
    result["median_cpu_us_per_message"] = round(statistics.median(figures), 3)
    result["messages_per_cpu_s"] = round(1e6 / statistics.median(figures))
    if args.cprofile:
        run = Run(messages, args.read_bytes)
        prof = cProfile.Profile()
        prof.runcall(run)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.cprofile)
        result["cprofile"] = text.getvalue()
    if args.json:
        print(orjson.dumps(result).decode())
        return
    print(
        f"P1 hot path: {result['median_cpu_us_per_message']:.3f} CPU µs/message "
        f"({result['messages_per_cpu_s']:,} msg/CPU-s), runs {result['cpu_us_per_message']}, "
        f"{result['messages']:,} trades in {result['reads']:,} reads of {args.read_bytes:,} B"
    )
    if args.cprofile:
        print(result["cprofile"])


if __name__ == "__main__":
    main()
