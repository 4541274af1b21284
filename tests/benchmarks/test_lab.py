"""The lab's P2: started again on other ports when another process took one before P2 bound it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from benchmarks import lab as lab_module
from benchmarks.lab import Lab
from mercurystream.processes import ServiceError, free_port


def test_p2_is_started_again_when_its_port_was_taken_first(tmp_path: Path, monkeypatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    monkeypatch.setattr(lab_module, "free_port", lambda: next(ports, None) or free_port())
    lab = Lab(tmp_path / "work", tmp_path / "pool")
    try:
        p2 = lab.p2(RECORD="false")
        assert p2.metrics().value("mercurystream_events_total") == 0
        assert p2.port != taken.getsockname()[1]
        logs = sorted((tmp_path / "work" / "logs").glob("*-p2.log"))
        assert len(logs) == 2 and lab_module.ADDRESS_IN_USE in logs[0].read_text().lower()
        assert lab.services == [p2.service]
    finally:
        lab.stop_all()
        taken.close()


def test_p2_failing_at_start_for_another_reason_is_not_retried(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "work", tmp_path / "pool")
    try:
        with pytest.raises(ServiceError, match=r"exited early \(code 2\)"):
            lab.p2(LATENCY_EVAL_EVERY=5000)  # a configuration error
        assert len(list((tmp_path / "work" / "logs").glob("*-p2.log"))) == 1
    finally:
        lab.stop_all()
