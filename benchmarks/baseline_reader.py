"""The parsing limit: a bare asyncio reader that only decodes frames and parses each payload with orjson.

P2 cannot be faster than this on the same machine, event loop and wire format, so the benchmark
reports P2's throughput as a fraction of it. It runs on uvloop when P2 would, and counts into plain
ints that a custom Prometheus collector exports (``baseline_events_total``, ``baseline_frames_total``,
``baseline_invalid_total``), so the harness reads it exactly as it reads P2. It sends no acks.

``python -m benchmarks.baseline_reader --port N --metrics-port M``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Iterator

import orjson
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mercurystream.shared.framing import FrameDecoder, FrameTooLarge


class ParseCounter:
    """Frames in, parsed objects counted; sans I/O. One instance per connection."""

    __slots__ = ("decoder", "events", "invalid")

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.events = 0
        self.invalid = 0

    def feed(self, data: bytes) -> int:
        """Decode and parse what one read returned; the number of objects parsed."""
        payloads = self.decoder.feed(data)
        loads = orjson.loads
        try:
            objs = [loads(p) for p in payloads]
        except orjson.JSONDecodeError:
            objs = []
            for p in payloads:
                try:
                    objs.append(loads(p))
                except orjson.JSONDecodeError:
                    self.invalid += 1
        n = len(objs)
        self.events += n
        return n


class _Stats:
    """Totals over every connection so far, exported as Prometheus counters."""

    def __init__(self) -> None:
        self.events = 0
        self.frames = 0
        self.invalid = 0
        self.connections = 0
        self.open = 0

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily("baseline_events", "Payloads parsed into JSON values", value=self.events)
        yield CounterMetricFamily("baseline_frames", "Frames decoded", value=self.frames)
        yield CounterMetricFamily("baseline_invalid", "Payloads that were not JSON", value=self.invalid)
        yield CounterMetricFamily("baseline_connections_accepted", "Connections accepted", value=self.connections)
        yield GaugeMetricFamily("baseline_connections", "Open connections", value=self.open)


class _Reader(asyncio.Protocol):
    def __init__(self, stats: _Stats) -> None:
        self._stats = stats
        self._counter = ParseCounter()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._stats.connections += 1
        self._stats.open += 1

    def data_received(self, data: bytes) -> None:
        c = self._counter
        before_frames, before_invalid = c.decoder.frames, c.invalid
        try:
            n = c.feed(data)
        except FrameTooLarge:
            if self._transport is not None:
                self._transport.close()
            return
        s = self._stats
        s.events += n
        s.frames += c.decoder.frames - before_frames
        s.invalid += c.invalid - before_invalid

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.open -= 1


async def serve(host: str, port: int, metrics_port: int) -> int:
    stats = _Stats()
    registry = CollectorRegistry()
    registry.register(stats)  # type: ignore[arg-type]
    httpd, _ = start_http_server(metrics_port, addr=host, registry=registry)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: _Reader(stats), host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"baseline reader listening on {host}:{bound}, metrics on {host}:{httpd.server_address[1]}", flush=True)
    await stop.wait()
    server.close()
    httpd.shutdown()
    print(f"baseline reader stopped after {stats.events} events", flush=True)
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, as P2 chooses, so the limit is measured on the same event loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.baseline_reader", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    args = p.parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            return runner.run(serve(args.host, args.port, args.metrics_port))
        except OSError as exc:
            print(f"baseline reader: error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
