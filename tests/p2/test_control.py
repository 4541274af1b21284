"""P2's HTTP endpoint: request parsing, the thread-to-loop hand-off, and the server on a loopback port.

The server is real (a socket on 127.0.0.1, real HTTP); what it calls for a dump is a plain function
here. ``tests/e2e/test_incidents_on_demand.py`` drives the whole of ``mercury-p2``.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from mercurystream.p2.control import (
    DEFAULT_REASON,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    MAX_REASON_CHARS,
    ControlServer,
    LoopHandoff,
    is_loopback,
    own_origins,
    parse_dump_request,
)
from mercurystream.p2.flight_recorder import DumpRefused
from mercurystream.p2.metrics import P2Metrics

# ---------------------------------------------------------------- parsing


def test_a_request_with_nothing_in_it_is_a_dump_with_the_default_reason() -> None:
    assert parse_dump_request("", b"") == (DEFAULT_REASON, False)
    assert parse_dump_request("", b"  \n") == (DEFAULT_REASON, False)


def test_reason_and_flag_come_from_the_query_or_the_body() -> None:
    assert parse_dump_request("reason=disk+full&respect_cooldown=yes", b"") == ("disk full", True)
    assert parse_dump_request("", b'{"reason": " lag ", "respect_cooldown": false}') == ("lag", False)
    assert parse_dump_request("respect_cooldown=1", b'{"reason": "r"}') == ("r", True)


@pytest.mark.parametrize(
    ("query", "body", "why"),
    [
        ("reason=a&reason=b", b"", "more than once"),
        ("reason=a", b'{"reason": "b"}', "both in the query and in the body"),
        ("", b'{"why": "x"}', "unknown field 'why'"),
        ("", b"[1]", "JSON object"),
        ("", b"reason=x", "not JSON"),
        ("", b'{"reason": 5}', "reason must be a string"),
        ("", b'{"reason": "   "}', "printable"),
        ("", b'{"reason": "a\\nb"}', "printable"),
        ("", orjson.dumps({"reason": "x" * (MAX_REASON_CHARS + 1)}), "printable"),
        ("", b'{"respect_cooldown": "true"}', "true or false"),
        ("respect_cooldown=maybe", b"", "true or false"),
        ("a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9", b"", "at most 8"),
        ("noequals", b"", "name=value"),
    ],
)
def test_anything_else_is_a_one_line_error(query: str, body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why) as err:
        parse_dump_request(query, body)
    assert "\n" not in str(err.value)


def test_loopback_and_own_origins() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("p2")
    assert own_origins("127.0.0.1", 9090) == {"http://127.0.0.1:9090", "http://localhost:9090", "http://[::1]:9090"}
    assert own_origins("0.0.0.0", 80) == frozenset()
    assert own_origins("10.0.0.5", 80) == {"http://10.0.0.5:80"}


# ---------------------------------------------------------------- the hand-off


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop")
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_call_runs_on_the_loop_thread_and_returns_its_result(loop_thread: asyncio.AbstractEventLoop) -> None:
    ran_on: list[str] = []

    def on_loop(x: int) -> int:
        ran_on.append(threading.current_thread().name)
        return x * 2

    assert LoopHandoff(loop_thread).call(on_loop, 21) == 42
    assert ran_on == ["test-loop"]


def test_a_refusal_on_the_loop_reaches_the_calling_thread(loop_thread: asyncio.AbstractEventLoop) -> None:
    def refuse() -> None:
        raise DumpRefused("cooldown", "in cooldown")

    with pytest.raises(DumpRefused, match="in cooldown"):
        LoopHandoff(loop_thread).call(refuse)


def test_a_call_the_loop_does_not_take_in_time_is_cancelled_and_never_runs(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    release = threading.Event()
    loop_thread.call_soon_threadsafe(release.wait, 10)  # the loop is busy
    ran = threading.Event()
    try:
        with pytest.raises(DumpRefused) as refused:
            LoopHandoff(loop_thread, timeout_s=0.1).call(ran.set)
        assert refused.value.reason == "timeout"
    finally:
        release.set()
    assert LoopHandoff(loop_thread).call(lambda: "after") == "after"
    assert not ran.is_set()


def test_a_closed_loop_refuses() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(DumpRefused) as refused:
        LoopHandoff(loop).call(lambda: None)
    assert refused.value.reason == "unavailable"


# ---------------------------------------------------------------- the server


class Dumps:
    """What the server calls for a dump: records the calls, answers with an id or a queued refusal."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.refuse: DumpRefused | None = None

    def __call__(self, reason: str, respect_cooldown: bool) -> dict[str, Any]:
        self.calls.append((reason, respect_cooldown))
        if self.refuse is not None:
            raise self.refuse
        return {"incident_id": f"id{len(self.calls)}", "type": "manual"}


@pytest.fixture
def served() -> Iterator[tuple[ControlServer, Dumps]]:
    dumps = Dumps()
    metrics = P2Metrics()
    metrics.anomalies_total.labels(type="duplicate").inc(3)
    server = ControlServer("127.0.0.1", 0, metrics, dumps)
    server.start()
    try:
        yield server, dumps
    finally:
        server.stop()


def request(
    server: ControlServer, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def refused(server: ControlServer, reason: str) -> float:
    return server.registry.get_sample_value("mercurystream_incident_requests_refused_total", {"reason": reason})


def test_post_incidents_answers_202_with_the_id(served: tuple[ControlServer, Dumps]) -> None:
    server, dumps = served
    status, headers, body = request(
        server, "POST", "/incidents", b'{"reason": "lag"}', {"Content-Type": "application/json"}
    )
    assert (status, orjson.loads(body)) == (202, {"incident_id": "id1", "type": "manual"})
    assert headers["content-type"] == "application/json"
    status, _, _ = request(server, "POST", "/incidents?respect_cooldown=true")
    assert status == 202
    assert dumps.calls == [("lag", False), (DEFAULT_REASON, True)]


@pytest.mark.parametrize(
    ("reason", "status"),
    [("cooldown", 409), ("empty", 409), ("disabled", 503), ("backlog", 503), ("timeout", 503)],
)
def test_a_refused_dump_answers_its_status_with_one_line(
    served: tuple[ControlServer, Dumps], reason: str, status: int
) -> None:
    server, dumps = served
    dumps.refuse = DumpRefused(reason, f"{reason}: no")
    got, _, body = request(server, "POST", "/incidents")
    assert got == status
    assert body.count(b"\n") == 1 and orjson.loads(body) == {"error": f"{reason}: no", "refused": reason}
    assert refused(server, reason) == 1


def test_bad_requests_are_4xx_and_never_reach_the_dump(served: tuple[ControlServer, Dumps]) -> None:
    server, dumps = served
    assert request(server, "POST", "/incidents", b'{"reason": 1}')[0] == 400
    assert request(server, "POST", "/incidents", b"x" * (MAX_BODY_BYTES + 1))[0] == 413
    assert request(server, "POST", "/incidents", headers={"Content-Length": "nope"})[0] == 400
    assert request(server, "GET", "/incidents")[0] == 405
    assert request(server, "PUT", "/incidents")[0] == 405
    assert request(server, "POST", "/metrics")[0] == 405
    assert dumps.calls == []
    assert refused(server, "bad_request") == 2 and refused(server, "too_large") == 1


def test_cross_origin_requests_are_refused(served: tuple[ControlServer, Dumps]) -> None:
    server, dumps = served
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{server.port + 1}"):
        status, _, body = request(server, "POST", "/incidents", headers={"Origin": origin})
        assert status == 403 and orjson.loads(body)["refused"] == "cross_origin"
    assert request(server, "POST", "/incidents", headers={"Origin": f"http://localhost:{server.port}"})[0] == 202
    assert len(dumps.calls) == 1 and refused(server, "cross_origin") == 3


def test_a_token_is_required_once_set() -> None:
    dumps = Dumps()
    server = ControlServer("127.0.0.1", 0, P2Metrics(), dumps, token="s3cret-s3cret-s3cret")
    server.start()
    try:
        status, headers, _ = request(server, "POST", "/incidents")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert request(server, "POST", "/incidents", headers={"Authorization": "Bearer wrong"})[0] == 401
        ok = {"Authorization": "Bearer s3cret-s3cret-s3cret"}
        assert request(server, "POST", "/incidents", headers=ok)[0] == 202
        assert len(dumps.calls) == 1 and refused(server, "unauthorized") == 2
    finally:
        server.stop()


def test_beyond_loopback_without_a_token_every_dump_is_refused() -> None:
    dumps = Dumps()
    server = ControlServer("127.0.0.1", 0, P2Metrics(), dumps)
    server.loopback = False  # what binding 0.0.0.0 sets; the test keeps to the loopback interface
    server.start()
    try:
        status, _, body = request(server, "POST", "/incidents")
        assert status == 403 and "P2_CONTROL_TOKEN is not set" in orjson.loads(body)["error"]
        assert dumps.calls == [] and refused(server, "no_token") == 1
    finally:
        server.stop()


def test_metrics_are_what_prometheus_client_serves(served: tuple[ControlServer, Dumps]) -> None:
    server, _ = served
    for path in ("/metrics", "/"):
        status, headers, body = request(server, "GET", path)
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert body == generate_latest(server.registry)
    assert b'mercurystream_anomalies_total{type="duplicate"} 3.0' in body
    status, headers, body = request(
        server, "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body == generate_openmetrics(server.registry)
    status, headers, body = request(server, "GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == generate_latest(server.registry)
    _, _, body = request(server, "GET", "/metrics?name[]=mercurystream_anomalies_total")
    assert body == generate_latest(server.registry.restricted_registry(["mercurystream_anomalies_total"]))
    assert request(server, "HEAD", "/metrics")[2] == b""


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends before it closes (a response may come in more than one read)."""
    chunks = []
    while chunk := s.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_malformed_request_gets_one_line_of_json(served: tuple[ControlServer, Dumps]) -> None:
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"NONSENSE\r\n\r\n")  # no version: http.server answers HTTP/0.9 style, the body alone
        assert "Bad request syntax" in orjson.loads(s.recv(4096))["error"]
    many = "".join(f"X-{k}: 1\r\n" for k in range(101)).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n" + many + b"\r\n")
        head, _, body = read_all(s).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 431") and b"application/json" in head
    assert body.count(b"\n") == 1 and "error" in orjson.loads(body)


def test_connections_beyond_the_bound_are_answered_503(served: tuple[ControlServer, Dumps]) -> None:
    server, _ = served
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 10
        while server._httpd._slots._value:  # every idle connection holds a thread
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, _, body = request(server, "GET", "/metrics")
        assert status == 503 and orjson.loads(body) == {"error": "too many requests at once"}
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while request(server, "GET", "/metrics")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_dump_that_fails_unexpectedly_is_a_500_with_one_line(served: tuple[ControlServer, Dumps]) -> None:
    server, dumps = served
    dumps.refuse = RuntimeError("boom")  # type: ignore[assignment]
    status, _, body = request(server, "POST", "/incidents")
    assert status == 500 and body.count(b"\n") == 1 and "log" in orjson.loads(body)["error"]
    assert request(server, "GET", "/metrics")[0] == 200
