"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.nats_server import NatsServer, require_binary


@pytest.fixture
def nats_process(tmp_path) -> Iterator[NatsServer]:
    """A real ``nats-server -js`` on a free loopback port with a store under ``tmp_path``; killed on teardown."""
    store = tmp_path / "nats"
    store.mkdir()
    server = NatsServer(require_binary(), store_dir=store)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def nats_server(nats_process: NatsServer) -> str:
    """The URL (``nats://127.0.0.1:<port>``) of a fresh real JetStream server."""
    return nats_process.url
