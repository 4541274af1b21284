"""How both demos end (``demo.drive``): exit codes, one line on failure, and their services always stopped."""

from __future__ import annotations

import os
import signal

import pytest

from mercurystream.demo import DemoError, drive
from mercurystream.processes import ServiceError


class FakeDemo:
    def __init__(self, fail: BaseException | None = None, sigterm: bool = False) -> None:
        self.fail = fail
        self.sigterm = sigterm
        self.stopped = 0

    def run(self) -> None:
        if self.sigterm:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.fail is not None:
            raise self.fail

    def stop(self) -> None:
        self.stopped += 1


@pytest.fixture(autouse=True)
def _keep_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize(
    ("demo", "code", "said"),
    [
        (FakeDemo(), 0, ""),
        (FakeDemo(DemoError("no incident in 30 s")), 1, "\ndemo failed: no incident in 30 s\n"),
        (FakeDemo(ServiceError("p2 exited 1")), 1, "\ndemo failed: p2 exited 1\n"),
        (FakeDemo(KeyboardInterrupt()), 130, "\ninterrupted: stopping services\n"),
        (FakeDemo(sigterm=True), 130, "\ninterrupted: stopping services\n"),
    ],
)
def test_each_ending_has_its_exit_code_and_line_and_stops_the_services(demo, code, said, capsys) -> None:
    assert drive(lambda: demo, "demo") == code
    assert capsys.readouterr().err == said
    assert demo.stopped == 1


def test_a_demo_that_could_not_be_built_has_nothing_to_stop(capsys) -> None:
    def make() -> FakeDemo:
        raise DemoError("port 9090 is taken")

    assert drive(make, "demo-cluster") == 1
    assert capsys.readouterr().err == "\ndemo-cluster failed: port 9090 is taken\n"


def test_an_unexpected_error_still_stops_the_services() -> None:
    demo = FakeDemo(RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        drive(lambda: demo, "demo")
    assert demo.stopped == 1
