"""The JetStream conventions, and the stream against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.framing import FrameDecoder
from mercurystream.shared.jetstream import (
    ALL_SUBJECTS,
    MSG_ID_HEADER,
    StreamMismatch,
    StreamSettings,
    batch_id,
    consumer_name,
    encode_batch,
    ensure_stream,
    new_origin,
    parse_shard,
    shard_of,
    subject_for,
    subject_product,
    subject_token,
)


@given(st.text(max_size=40))
@settings(derandomize=True, deadline=None)
def test_a_subject_token_is_never_empty_and_has_no_separator_wildcard_or_space(value):
    token = subject_token(value)
    assert token
    assert not any(c in token for c in ".*>") and not any(c.isspace() for c in token)


def test_subjects_keep_ordinary_product_ids_and_sanitise_the_rest():
    assert subject_for("coinbase", "BTC-USD") == "trades.coinbase.BTC-USD"
    assert subject_for("coin base", "A.B*>") == "trades.coin_base.A_B__"
    assert subject_product("trades.coinbase.BTC-USD") == "BTC-USD"
    assert subject_token("") == "_"


def test_shards_are_stable_cover_every_index_and_agree_with_the_subject():
    products = [f"P{i}-USD" for i in range(200)]
    assert {shard_of(p, 4) for p in products} == {0, 1, 2, 3}
    # A fixed value: the hash is blake2b, not Python's per-process salted hash().
    assert [shard_of(p, 2) for p in ("BTC-USD", "ETH-USD", "SOL-USD")] == [
        shard_of(p, 2) for p in ("BTC-USD", "ETH-USD", "SOL-USD")
    ]
    for p in ("BTC-USD", "A.B", "x y"):
        assert shard_of(p, 3) == shard_of(subject_product(subject_for("coinbase", p)), 3)
    assert all(shard_of(p, 1) == 0 for p in products)


def test_shard_hash_is_fixed_across_processes():
    import subprocess
    import sys

    code = "from mercurystream.shared.jetstream import shard_of; print([shard_of(f'P{i}', 7) for i in range(20)])"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}  # fmt: skip
    assert len(runs) == 1
    assert runs.pop().strip() == str([shard_of(f"P{i}", 7) for i in range(20)])


@pytest.mark.parametrize("bad", ["", "1", "1/1", "2/1", "-1/2", "a/b", "0/0"])
def test_parse_shard_rejects(bad):
    with pytest.raises(ValueError):
        parse_shard(bad)


def test_parse_shard_and_consumer_name():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 1 / 2 ") == (1, 2)
    assert consumer_name(1, 2) == "mercury-p2-shard-1-of-2"


def test_batch_ids_are_unique_per_batch_and_origin():
    a, b = new_origin(), new_origin()
    assert a != b
    assert batch_id(a, 1) != batch_id(a, 2) != batch_id(b, 2)
    assert batch_id(a, 7) == batch_id(a, 7)


def test_a_batch_is_the_tcp_frames():
    events = [b'{"a":1}', b'{"b":2}']
    assert FrameDecoder().feed(encode_batch(events)) == events


async def _connect(url):
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    return nc, nc.jetstream(timeout=5)


async def test_ensure_stream_creates_then_validates(nats_server):
    async def go():
        nc, js = await _connect(nats_server)
        try:
            cfg = StreamSettings(max_age_s=60, max_bytes=1 << 20, duplicate_window_s=30)
            info = await ensure_stream(js, cfg)
            assert info.config.subjects == [ALL_SUBJECTS]
            assert info.config.max_age == 60 and info.config.max_bytes == 1 << 20
            assert info.config.duplicate_window == 30
            again = await ensure_stream(js, StreamSettings(max_age_s=120, max_bytes=1 << 20, duplicate_window_s=30))
            assert again.config.max_age == 60  # an existing stream's limits are the operator's
        finally:
            await nc.close()

    await asyncio.wait_for(go(), 30)


async def test_ensure_stream_refuses_a_stream_that_cannot_carry_trades(nats_server):
    async def go():
        nc, js = await _connect(nats_server)
        try:
            await js.add_stream(name="OTHER", subjects=["other.>"])
            with pytest.raises(StreamMismatch):
                await ensure_stream(js, StreamSettings(name="OTHER"))
        finally:
            await nc.close()

    await asyncio.wait_for(go(), 30)


async def test_the_same_msg_id_is_stored_once(nats_server):
    async def go():
        nc, js = await _connect(nats_server)
        try:
            await ensure_stream(js, StreamSettings())
            subject = subject_for("coinbase", "BTC-USD")
            msg_id = batch_id(new_origin(), 1)
            body = encode_batch([b'{"trade_id":1}'])
            first = await js.publish(subject, body, headers={MSG_ID_HEADER: msg_id})
            second = await js.publish(subject, body, headers={MSG_ID_HEADER: msg_id})
            assert not first.duplicate and second.duplicate
            assert second.seq == first.seq
            info = await js.stream_info("MERCURY_TRADES")
            assert info.state.messages == 1
        finally:
            await nc.close()

    await asyncio.wait_for(go(), 30)
