"""A loopback venue for tests that feed real recorded Coinbase messages to the real P1.

It answers the subscribe handshake with the simulator's own session (each feed brings its
``handshake``), then hands the connection to the test's ``script(ws, connection_index)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve

FIXTURES = Path(__file__).parents[1] / "fixtures"

Script = Callable[[ServerConnection, int], Awaitable[None]]
Handshake = Callable[[ServerConnection, list[str], list[dict[str, Any]]], Awaitable[None]]
"""Answers ``ws``'s subscribes for the products until the client is subscribed, appending each request."""


def recorded(feed: str, name: str) -> list[dict[str, Any]]:
    """The messages of ``tests/fixtures/<feed>/<name>``, one JSON object a line."""
    return [orjson.loads(line) for line in (FIXTURES / feed / name).read_bytes().splitlines() if line.strip()]


async def send_all(ws: ServerConnection, msgs: list[dict[str, Any]]) -> None:
    for m in msgs:
        await ws.send(orjson.dumps(m).decode())


async def recv_request(ws: ServerConnection, requests: list[dict[str, Any]]) -> bytes | str:
    """The client's next message, also kept in ``requests``."""
    raw = await asyncio.wait_for(ws.recv(), 5.0)
    requests.append(orjson.loads(raw))
    return raw


class RecordingVenue:
    """Serves ``script`` on every connection once ``handshake`` has subscribed it; counts connections."""

    def __init__(self, products: list[str], script: Script, handshake: Handshake) -> None:
        self.products = products
        self.script = script
        self.handshake = handshake
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self._server = None

    async def start(self) -> RecordingVenue:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, ws: ServerConnection) -> None:
        n = self.connections
        self.connections += 1
        await self.handshake(ws, self.products, self.requests)
        await self.script(ws, n)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
