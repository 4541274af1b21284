"""``mercury-replay --from-nats``: a range of a real JetStream stream, decoded and sent to P2 with acks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime

import nats
import orjson
import pytest

from mercurystream.processes import free_port
from mercurystream.replay.nats_source import parse_time
from mercurystream.shared.jetstream import (
    MSG_ID_HEADER,
    StreamSettings,
    batch_id,
    encode_batch,
    ensure_stream,
    new_origin,
    subject_for,
)
from tests.replay.test_cli import FakeP2, replay

PRODUCTS = ("BTC-USD", "ETH-USD")


def event(i: int, product: str) -> bytes:
    return orjson.dumps(
        {
            "type": "match",
            "product_id": product,
            "price": 100.0 + i,
            "last_size": 0.5,
            "time": f"2026-12-05T23:{i // 60 % 60:02d}:{i % 60:02d}.000000Z",
            "trade_id": 1000 + i,
            "ingest_ts_ms": 1_780_000_000_000 + i,
            "ingest_ts_us": 1_780_000_000_000_000 + i * 1000,
        }
    )


async def publish(url: str, batches: list[tuple[str, list[bytes]]]) -> list[int]:
    """Publish ``(product, events)`` batches as P1 does; their stream sequences."""
    nc = await nats.connect(url)
    origin = new_origin()
    try:
        js = nc.jetstream()
        await ensure_stream(js, StreamSettings())
        seqs = []
        for n, (product, events) in enumerate(batches):
            ack = await js.publish(
                subject_for("coinbase", product), encode_batch(events), headers={MSG_ID_HEADER: batch_id(origin, n)}
            )
            seqs.append(ack.seq)
        return seqs
    finally:
        await nc.close()


def sample_batches(n: int = 10, per: int = 5) -> list[tuple[str, list[bytes]]]:
    out = []
    for b in range(n):
        product = PRODUCTS[b % 2]
        out.append((product, [event(b * per + k, product) for k in range(per)]))
    return out


def stripped(frames: list[bytes]) -> list[bytes]:
    """The frames without the stamps a replay rewrites, to compare with what was published."""
    out = []
    for f in frames:
        d = orjson.loads(f)
        for k in ("ingest_ts_ms", "ingest_ts_us", "recv_ts_ms", "recv_ts_us"):
            d.pop(k, None)
        out.append(orjson.dumps(d))
    return out


def published(batches: list[tuple[str, list[bytes]]], keep: set[int] | None = None) -> list[bytes]:
    return stripped([e for n, (_, events) in enumerate(batches) if keep is None or n in keep for e in events])


async def test_a_sequence_range_reaches_p2_in_stream_order_and_is_acknowledged(nats_server: str, capsys) -> None:
    batches = sample_batches()
    seqs = await publish(nats_server, batches)
    async with FakeP2() as p2:
        rc = await replay(
            "--from-nats", "--nats-url", nats_server, "--start-seq", str(seqs[2]), "--end-seq", str(seqs[7]),
            "--port", str(p2.port), "--rate=0",
        )  # fmt: skip
    assert rc == 0
    assert stripped(p2.connections[0]) == published(batches, set(range(2, 8)))
    out = capsys.readouterr().out
    assert "sent 30 events" in out
    assert f"read 6 messages, stream sequences {seqs[2]}..{seqs[7]}" in out
    assert "acknowledged by P2: 30 of 30" in out


async def test_products_filter_one_by_the_server_and_several_here(nats_server: str, capsys) -> None:
    batches = sample_batches()
    await publish(nats_server, batches)
    async with FakeP2() as p2:
        args = ("--from-nats", "--nats-url", nats_server, "--start-seq", "1", "--port", str(p2.port), "--rate=0")
        assert await replay(*args, "--products", "ETH-USD") == 0
        assert await replay(*args, "--products", "ETH-USD,SOL-USD") == 0
        assert await replay(*args, "--products", "BTC-USD,ETH-USD") == 0
    odd = set(range(1, 10, 2))
    assert stripped(p2.connections[0]) == published(batches, odd)
    assert stripped(p2.connections[1]) == published(batches, odd)
    assert stripped(p2.connections[2]) == published(batches)
    assert "5 of other products skipped" in capsys.readouterr().out


async def test_a_time_range_starts_at_the_first_message_stored_at_or_after_it(nats_server: str) -> None:
    batches = sample_batches(4)
    seqs = await publish(nats_server, batches[:2])
    await asyncio.sleep(0.05)
    start = datetime.now(UTC)
    await asyncio.sleep(0.05)
    seqs += await publish(nats_server, batches[2:])
    assert seqs == [1, 2, 3, 4]
    async with FakeP2() as p2:
        rc = await replay(
            "--from-nats", "--nats-url", nats_server, "--start", start.isoformat(), "--end", "2999-01-01T00:00:00Z",
            "--port", str(p2.port), "--rate=0", "--keep-timestamps",
        )  # fmt: skip
    assert rc == 0
    assert p2.connections[0] == [e for _, events in batches[2:] for e in events]


async def test_the_end_is_the_streams_last_message_when_the_read_began(nats_server: str) -> None:
    batches = sample_batches(3)
    await publish(nats_server, batches)
    async with FakeP2() as p2:
        rc = await replay("--from-nats", "--nats-url", nats_server, "--start-seq", "2", "--port", str(p2.port))
    assert rc == 0
    assert stripped(p2.connections[0]) == published(batches, {1, 2})


async def test_an_empty_range_or_a_missing_stream_is_one_line_and_exit_2(nats_server: str, capsys) -> None:
    await publish(nats_server, sample_batches(2))
    async with FakeP2() as p2:
        base = ("--from-nats", "--nats-url", nats_server, "--port", str(p2.port))
        assert await replay(*base, "--start-seq", "50") == 2
        assert "no event in that range of MERCURY_TRADES (it holds sequences up to 2)" in capsys.readouterr().err
        assert await replay(*base, "--start-seq", "1", "--stream", "NOPE") == 2
        err = capsys.readouterr().err
        assert err.strip() == f"replay: error: no stream NOPE on {nats_server}"


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from mercurystream.replay.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--from-nats", "--start", "yesterday"], "argument --start: expected an ISO-8601 time"),
        (["--from-nats"], "--from-nats needs --start TIME or --start-seq N"),
        (["--from-nats", "--start-seq", "0"], "argument --start-seq: expected a stream sequence"),
        (["--from-nats", "--start-seq", "5", "--end-seq", "4"], "--end-seq is below --start-seq"),
        (["--from-nats", "--start", "2026-12-05T10:00:00Z", "--end", "2026-12-05T09:00:00Z"], "--end is before"),
        (["--from-nats", "--start-seq", "1", "--stream", "a.b"], "argument --stream: expected a stream name"),
        (["--file", "x.jsonl", "--start-seq", "1"], "--start-seq only apply with --from-nats"),
        (["--file", "x.jsonl", "--from-nats", "--start-seq", "1"], "not allowed with argument"),
    ],
)
def test_a_bad_range_is_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert expected in proc.stderr


def test_an_unreachable_server_is_one_line_and_exit_3() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = run_cli("--from-nats", "--start-seq", "1", "--nats-url", url, "--port", str(free_port()))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert f"NATS is not reachable at {url}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30


def test_times_parse_as_utc() -> None:
    assert parse_time("2026-12-05T23:50:00Z") == datetime(2026, 12, 5, 23, 50, tzinfo=UTC)
    assert parse_time("2026-12-05T23:50:00") == datetime(2026, 12, 5, 23, 50, tzinfo=UTC)
    assert parse_time("2026-12-06T00:50:00+01:00") == datetime(2026, 12, 5, 23, 50, tzinfo=UTC)
    assert parse_time("1780000000") == datetime.fromtimestamp(1_780_000_000, UTC)
    with pytest.raises(ValueError):
        parse_time("12")
