"""The CLIs on hostile input, as real processes beside a real P2 (D6, D7), and a hostile recording replayed."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from mercurystream.processes import BIN, Service, child_env, free_port, wait_for
from tests.hostile.harness import odd_payloads, payload, trade

pytestmark = pytest.mark.e2e

TOOL_TIMEOUT_S = 60


def run(*argv: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=child_env()
    )


def dump(p2) -> Path:
    """Have P2 write a bundle of its ring now (POST /incidents), and wait until it is whole."""
    req = urllib.request.Request(f"http://127.0.0.1:{p2.metrics_port}/incidents?reason=hostile", method="POST")
    deadline = time.monotonic() + 20
    while True:  # the acks come when the events are on the bus; forensics may not have put them in the ring yet
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = orjson.loads(resp.read())
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 409 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    bundle = Path(answer["path"])
    while not (bundle / "meta.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (bundle / "meta.json").is_file(), f"P2 did not write {bundle}"
    return bundle


BAD_METAS = [
    b'{"pre_events": "x", "triggered_at": 5, "complete": "yes"}',
    b'{"detail": [1, 2], "affected_symbols": 5}',
    b"[1, 2]",
    b"\xff\xfe{}",
    b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"{" + b'"k": 1, ' * 1000 + b'"pre_events": 1e400}',
]


def test_mercury_report_says_one_line_per_bad_meta_and_writes_every_other_bundle(start_p2, tmp_path):
    """D6: a meta.json with wrong value types printed a traceback and skipped every later bundle."""
    incidents = tmp_path / "incidents"
    p2 = start_p2(INCIDENTS_DIR=incidents)
    with p2.guard():
        sent = p2.send(payload(trade(i, product="X" * 5000 if i % 3 == 0 else "BTC-USD")) for i in range(30))
        sent += p2.send(odd_payloads())
        good = dump(p2)
    p2.verdict(frames_sent=sent)
    bad = []
    for k, meta in enumerate(BAD_METAS):
        bundle = incidents / f"20000101_00000{k}_0000000{k}"  # sorted before P2's own bundle
        bundle.mkdir(parents=True)
        (bundle / "meta.json").write_bytes(meta)
        (bundle / "events.jsonl").write_bytes(payload(trade(1)) + b"\n")
        bad.append(bundle)
    (good / "report.md").unlink(missing_ok=True)

    got = run(BIN / "mercury-report", "--no-charts", incidents)
    assert got.returncode == 1, got
    assert "Traceback" not in got.stderr + got.stdout
    assert (good / "report.md").is_file()
    complaints = [line for line in got.stderr.splitlines() if "report(s) written" not in line]
    assert len(complaints) == len(bad) and all(len(line) < 400 for line in complaints), got.stderr
    assert all(any(str(b) in line for line in complaints) for b in bad)
    assert "X" * 200 not in (good / "report.md").read_text()


@pytest.mark.parametrize(
    "bad",
    [
        ["--latency-ms", "99999999999999999999999", "--keep-timestamps"],
        ["--latency-ms", "99999999999999999999999"],
        ["--seed", "-1"],
        ["--rate", "nan"],
    ],
)
def test_mercury_replay_turns_absurd_options_into_one_line_and_exit_2(tmp_path, bad):
    """D7: ``--latency-ms 99999999999999999999999 --keep-timestamps`` ended in a traceback."""
    rec = tmp_path / "rec.jsonl"
    rec.write_bytes(payload(trade(1)) + b"\n")
    got = run(BIN / "mercury-replay", "--file", rec, "--port", "9", *bad)
    assert got.returncode == 2, got
    assert got.stdout == "" and got.stderr.count("\n") == 1 and "Traceback" not in got.stderr


def test_a_hostile_recording_replayed_into_p2_is_accounted_for(start_p2, tmp_path):
    """What mercury-replay can read it sends; what P2 receives it counts."""
    rec = tmp_path / "rec.jsonl"
    lines = [payload(trade(i)) for i in range(20)]
    lines += [
        payload(trade(100, product="Z" * 100_000)),
        b'{"type":"match","price":NaN,"trade_id":101}',
        b'{"type":"match","price":' + b"9" * 401 + b',"trade_id":102}',
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' + b"[" * 900 + b"]" * 900 + b"}",
        b"\xff\xfe garbage",
        payload(trade(103, t="9999-12-31T23:59:59.999999Z")),
        payload(trade(104, price=1e308, size=1e308)),
        payload({"type": "match"}),
        b"{}",
    ]
    rec.write_bytes(b"\n".join(lines) + b"\n")
    p2 = start_p2(RECORD="true")
    with p2.guard():
        got = run(BIN / "mercury-replay", "--file", rec, "--port", p2.port, "--rate", "0")
    assert got.returncode == 0, got
    assert "Traceback" not in got.stderr + got.stdout
    sent = int(re.search(r"sent (\d+) events", got.stdout + got.stderr).group(1))
    assert sent >= 25
    m = p2.verdict(frames_sent=sent)
    assert m.value("mercurystream_trades_1m", product_id="BTC-USD") >= 20


def _http(url: str, method: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_exchange_s_faults_refuse_a_get_a_missing_token_and_a_foreign_origin(tmp_path):
    """D9: /faults was an unauthenticated GET that any web page open on the machine could trigger.
    With faults allowed (off by default, where every request is refused), as a real process."""
    port = free_port()
    argv = [BIN / "mercury-exchange", "--port", port, "--allow-faults"]
    svc = Service("exchange", [str(a) for a in argv], child_env(), tmp_path)
    svc.start()
    try:
        wait_for("the exchange", lambda: _http(f"http://127.0.0.1:{port}/healthz", "GET") == 200, 60, [svc])
        faults = f"http://127.0.0.1:{port}/faults?kind=disconnect"
        assert _http(faults, "GET") == 405
        assert _http(faults, "POST") == 403
        assert _http(faults, "POST", {"Origin": "http://evil.example", "X-Faults-Token": "guess" * 8}) == 403
        assert _http(faults, "POST", {"X-Faults-Token": "guess" * 8}) == 403
        log = svc.log_path.read_text(errors="replace")
        assert "Traceback" not in log
    finally:
        svc.stop(timeout=15)
