"""In-test stand-ins for P1's two peers: a Coinbase-like WebSocket venue and P2's acking TCP source."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection

from mercurystream.shared.framing import FrameDecoder, encode_frame

from .recording_venue import RecordingVenue, recv_request


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll instead of sleeping a fixed time: the test machine is shared and slow at times."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def match(trade_id: int, product_id: str = "BTC-USD", **extra: Any) -> dict[str, Any]:
    """A ``match`` message in Coinbase's exact shape (decimal strings, microsecond Z time)."""
    msg = {
        "type": "match",
        "trade_id": trade_id,
        "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
        "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
        "side": "sell",
        "size": "0.00512000",
        "price": "64388.01000000",
        "product_id": product_id,
        "sequence": 1000 + trade_id,
        "time": "2024-05-01T12:34:56.789012Z",
    }
    msg.update(extra)
    return msg


class FakeP2:
    """Decodes frames like P2's TcpSource and acks ``{"ack": N}`` after each read (unless ``ack=False``).

    ``stop_graceful(keep)`` imitates P2's graceful stop: it keeps the first ``keep`` frames of each
    connection (default: all it read), sends the final ack for them and closes, as if it never
    read the rest. ``crash()`` drops every connection with no final ack.
    """

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.payloads: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: list[list[Any]] = []

    async def start(self, port: int = 0) -> FakeP2:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = [writer, [], False]  # writer, frames of this connection, stopped
        self._conns.append(conn)
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(65536)
                if not data or conn[2]:
                    break
                frames = decoder.feed(data)
                conn[1].extend(frames)
                self.payloads.extend(frames)
                if self.ack and frames:
                    writer.write(encode_frame(orjson.dumps({"ack": len(conn[1])})))
        writer.close()

    async def stop_graceful(self, keep: int | None = None) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self._conns:
            writer, frames, stopped = conn
            if stopped:
                continue
            conn[2] = True
            n = len(frames) if keep is None else keep
            for extra in frames[n:]:
                self.payloads.remove(extra)
            del frames[n:]
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(encode_frame(orjson.dumps({"ack": n, "final": True})))
                await writer.drain()
            writer.close()
        await self._server.wait_closed()

    async def crash(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self._conns:
            conn[2] = True
            conn[0].transport.abort()
        await self._server.wait_closed()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(p) for p in self.payloads]


Handler = Callable[[ServerConnection], Awaitable[None]]


async def echo_subscriptions(ws: ServerConnection, products: list[str], requests: list[dict[str, Any]]) -> None:
    """Answer one subscribe with the ``subscriptions`` reply naming exactly what it asked for."""
    await recv_request(ws, requests)
    request = requests[-1]
    channels = [{"name": c, "product_ids": request["product_ids"]} for c in request["channels"]]
    await ws.send(orjson.dumps({"type": "subscriptions", "channels": channels}).decode())


class FakeVenue(RecordingVenue):
    """A WebSocket server speaking just enough of Coinbase's feed: subscribe, then scripted messages.

    ``script(ws, n)`` runs after the ``subscriptions`` reply on the ``n``-th connection (from 0).
    When it returns, the server closes the connection, which is how a venue drop looks to P1.
    ``requests`` holds every subscribe received.
    """

    def __init__(self, script: Callable[[ServerConnection, int], Awaitable[None]]) -> None:
        super().__init__([], script, echo_subscriptions)


@pytest.fixture
async def fake_p2():
    servers: list[FakeP2] = []

    async def make(ack: bool = True, port: int = 0) -> FakeP2:
        server = await FakeP2(ack).start(port)
        servers.append(server)
        return server

    yield make
    for s in servers:
        if s._server is not None and s._server.is_serving():
            await s.crash()
