"""On-demand incident dumps against a real ``mercury-p2``: POST /incidents over HTTP and SIGUSR1 each
write a ``manual`` bundle of the ring; the cooldown binds only when asked; cross-origin requests are
refused; ``/metrics`` is still scraped as before."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from mercurystream.shared.framing import FrameDecoder, decode_object, encode_frames

pytestmark = pytest.mark.e2e


def trades(n: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "type": "match",
                "product_id": ("BTC-USD", "ETH-USD")[i % 2],
                "price": 100.0 + i,
                "last_size": 1.0,
                "time": f"2026-01-01T00:00:{i // 1000:02d}.{i % 1000:03d}000Z",
                "trade_id": 1000 + i // 2,
                "ingest_ts_ms": 1,
                "ingest_ts_us": 1000,
            }
        )
        for i in range(n)
    ]


def send(port: int, payloads: list[bytes]) -> None:
    """Frame the payloads to P2 and wait until it has acknowledged all of them."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(encode_frames(payloads))
        decoder = FrameDecoder()
        acked = 0
        while acked < len(payloads):
            data = s.recv(65536)
            assert data, "P2 closed before acknowledging"
            for p in decoder.feed(data):
                acked = decode_object(p)[0]["ack"]


def post(port: int, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/incidents",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def bundle(cluster, incident_id: str) -> Path:
    path = cluster.incidents / incident_id
    cluster.wait(f"bundle {incident_id}", lambda: (path / "report.md").is_file(), timeout=60)
    return path


def test_post_and_sigusr1_write_manual_bundles_and_metrics_stay_as_they_were(cluster) -> None:
    p2 = cluster.p2(FLIGHT_PRE_EVENTS=50, FLIGHT_COOLDOWN_S=600, RECORD="false", LATENCY_EVAL_EVERY=1000)
    payloads = trades(80)
    send(cluster.p2_port, payloads)
    cluster.wait("P2 to process 80 events", lambda: cluster.p2_metrics().value("mercurystream_events_total") == 80)
    port = cluster.p2_metrics_port

    status, answer = post(port, {"reason": "operator look"})
    assert status == 202, answer
    path = bundle(cluster, answer["incident_id"])
    assert path == Path(answer["path"])
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["type"], meta["reason"], meta["complete"]) == ("manual", "operator look", True)
    assert (meta["pre_events"], meta["post_events"], meta["trigger_line"], meta["pre_bound"]) == (50, 0, 50, "events")
    assert meta["affected_symbols"] == ["BTC-USD", "ETH-USD"]
    lines = (path / "events.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["price"] for line in lines] == [orjson.loads(p)["price"] for p in payloads[30:]]
    report = (path / "report.md").read_text()
    assert "| **Type** | manual |" in report and "| **Trigger Event** | line 50 of events.jsonl |" in report
    assert "| **Pre-window Bound** | events: the ring was full (FLIGHT_PRE_EVENTS=50) |" in report

    status, refused = post(port, {"respect_cooldown": True})
    assert status == 409 and refused["refused"] == "cooldown" and "\n" not in refused["error"]
    status, again = post(port, {"reason": "regardless"})
    assert status == 202 and again["incident_id"] != answer["incident_id"]

    status, refused = post(port, {"reason": "from a web page"}, {"Origin": "http://evil.example"})
    assert status == 403 and refused["refused"] == "cross_origin"
    with pytest.raises(urllib.error.HTTPError) as got:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/incidents", timeout=10)
    assert got.value.code == 405

    p2.proc.send_signal(signal.SIGUSR1)

    def signalled() -> Path | None:
        for meta_file in cluster.incidents.glob("*/meta.json"):
            if json.loads(meta_file.read_text())["reason"] == "SIGUSR1":
                return meta_file.parent
        return None

    cluster.wait("a SIGUSR1 bundle", lambda: signalled() is not None and (signalled() / "report.md").is_file())
    meta = json.loads((signalled() / "meta.json").read_text())
    assert meta["type"] == "manual" and meta["detail"]["source"] == "SIGUSR1" and meta["pre_events"] == 50

    bundle(cluster, again["incident_id"])
    m = cluster.p2_metrics()
    assert m.value("mercurystream_incidents_total", type="manual") == 3
    assert m.value("mercurystream_incident_requests_refused_total", reason="cooldown") == 1
    assert m.value("mercurystream_incident_requests_refused_total", reason="cross_origin") == 1
    assert m.value("mercurystream_events_total") == 80
    assert p2.alive()
    codes = cluster.stop_all()
    assert codes[p2.name] == 0
    log = cluster.log(p2.name)
    assert "Traceback" not in log
    assert "dumps the flight recorder (loopback only, no token)" in log
