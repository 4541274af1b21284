"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.nats_server import NatsServer, require_binary

# HYPOTHESIS_PROFILE=ci (.ci/run): the same examples every run, so a build goes red for a change, never
# for a draw. Local runs keep Hypothesis's random search, where new cases are found (each becomes an @example).
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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
