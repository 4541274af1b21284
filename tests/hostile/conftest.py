"""Fixtures of the hostile-input suite: a real P2 per case, and a time bound per case."""

from __future__ import annotations

import signal
import threading

import pytest

from tests.hostile.harness import HostileP2
from tests.p2.conftest import small_disk  # noqa: F401 - the one real-tmpfs fixture, shared

CASE_TIMEOUT_S = 90


@pytest.fixture(autouse=True)
def case_timeout():
    """Fail a case that runs past :data:`CASE_TIMEOUT_S` (SIGALRM interrupts any blocking call)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"hostile case ran past {CASE_TIMEOUT_S}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def start_p2(tmp_path):
    """``start_p2(**env)``: a started :class:`HostileP2`; every one is stopped after the case."""
    started: list[HostileP2] = []

    def start(**env: object) -> HostileP2:
        p2 = HostileP2(tmp_path, **env)
        started.append(p2)
        return p2.start()

    yield start
    for p2 in started:
        p2.stop()
