"""GapTracker: trade ids lost upstream, from id jumps and heartbeats, confirmed after a heartbeat interval."""

from __future__ import annotations

import orjson
import pytest

from mercurystream.p1.feeds.coinbase_exchange import FeedProtocol
from mercurystream.p1.gaps import HEARTBEAT, TRADE_ID, Gap, GapTracker, control_event
from mercurystream.shared.schema import control_of


def match(tid: int, pid: str = "BTC-USD") -> dict:
    return {"type": "match", "product_id": pid, "trade_id": tid}


def heartbeat(last: object, pid: str = "BTC-USD") -> dict:
    return {"type": "heartbeat", "product_id": pid, "last_trade_id": last, "sequence": 1}


def last_match(tid: int, pid: str = "BTC-USD") -> dict:
    return {"type": "last_match", "product_id": pid, "trade_id": tid}


def tracker() -> GapTracker:
    t = GapTracker(["BTC-USD", "ETH-USD"])
    t.on_control(last_match(100))
    return t


def test_contiguous_ids_and_heartbeats_that_agree_make_no_gap() -> None:
    t = tracker()
    t.on_trades([match(101), match(102)])
    t.on_control(heartbeat(102))
    t.on_trades([match(103)])
    t.on_control(heartbeat(103))
    t.on_control(heartbeat(103))
    assert t.take() == [] and t.high("BTC-USD") == 103


def test_a_jump_is_confirmed_at_the_second_heartbeat_after_it() -> None:
    t = tracker()
    t.on_trades([match(101), match(105)])
    assert t.pending("BTC-USD") == [(102, 104)]
    t.on_control(heartbeat(105))
    assert t.take() == []
    t.on_control(heartbeat(105))
    assert t.take() == [Gap("BTC-USD", 102, 104, TRADE_ID)]
    assert t.gaps[TRADE_ID] == 1 and t.ids[TRADE_ID] == 3


def test_a_reordered_trade_that_arrives_within_the_interval_is_no_gap() -> None:
    t = tracker()
    t.on_trades([match(101), match(103)])
    t.on_control(heartbeat(103))
    t.on_trades([match(102)])
    t.on_control(heartbeat(103))
    assert t.take() == [] and t.pending("BTC-USD") == []


def test_a_late_id_inside_a_range_splits_it() -> None:
    t = tracker()
    t.on_trades([match(110), match(105)])
    assert t.pending("BTC-USD") == [(101, 104), (106, 109)]


def test_a_heartbeat_ahead_with_no_later_trade_is_a_gap_of_its_own() -> None:
    t = tracker()
    t.on_trades([match(101)])
    t.on_control(heartbeat(104))
    assert t.pending("BTC-USD") == [(102, 104)]
    t.on_control(heartbeat(104))
    assert t.take() == [Gap("BTC-USD", 102, 104, HEARTBEAT)]
    # the trade that would have revealed the same jump comes later: nothing more is missing
    t.on_trades([match(105)])
    t.on_control(heartbeat(105))
    t.on_control(heartbeat(105))
    assert t.take() == []


def test_the_missing_trades_after_a_heartbeat_that_ran_ahead_are_not_lost() -> None:
    t = tracker()
    t.on_control(heartbeat(102))
    t.on_trades([match(101), match(102)])
    t.on_control(heartbeat(102))
    t.on_control(heartbeat(102))
    assert t.take() == []


def test_heartbeats_without_a_usable_trade_id_are_counted_and_give_no_gap() -> None:
    t = tracker()
    for last in (0, None, "105", -1):
        t.on_control(heartbeat(last))
    assert t.heartbeats_without_id == 4 and t.high("BTC-USD") == 100


def test_the_first_heartbeat_or_last_match_is_the_baseline_and_other_products_are_ignored() -> None:
    t = GapTracker(["BTC-USD"])
    t.on_control(heartbeat(500))
    t.on_trades([match(501), match(7, "DOGE-USD")])
    t.on_control(heartbeat(9, "DOGE-USD"))
    assert t.high("BTC-USD") == 501 and t.high("DOGE-USD") is None


def test_a_last_match_ahead_after_a_reconnect_is_lost_itself_too() -> None:
    t = tracker()
    t.on_trades([match(101)])
    t.on_control(last_match(101))  # reconnect, nothing traded meanwhile
    t.on_control(last_match(106))  # reconnect, 102..106 traded while away; 106 itself is not forwarded
    assert t.pending("BTC-USD") == [(102, 106)]


def test_pending_ranges_are_bounded_per_product() -> None:
    t = GapTracker(["BTC-USD"], max_pending=3)
    t.on_control(last_match(0))
    t.on_trades([match(i) for i in range(2, 20, 2)])
    assert len(t.pending("BTC-USD")) == 3
    assert [g.first for g in t.take()] == [1, 3, 5, 7, 9, 11]


def test_the_control_events_are_the_schema_s() -> None:
    gap = Gap("BTC-EUR", 7, 9, HEARTBEAT)
    notice = orjson.loads(control_event(gap, "coinbase", "exchange", 1_700_000_000_123_456))
    assert control_of(notice) == {
        "type": "gap",
        "product_id": "BTC-EUR",
        "first_missing": 7,
        "last_missing": 9,
        "source": "heartbeat",
    }
    assert notice["ingest_ts_us"] == 1_700_000_000_123_456 and notice["ingest_ts_ms"] == 1_700_000_000_123
    result = orjson.loads(control_event(gap, "coinbase", "exchange", 1, recovered=2))
    assert control_of(result) == {**control_of(notice), "type": "backfill", "recovered": 2, "unrecoverable": 1}


def test_the_feed_protocol_hands_the_tracker_its_trades_heartbeats_and_last_match() -> None:
    from mercurystream.p1.feed import FeedProtocol

    fp = FeedProtocol(["BTC-USD"], "matches")
    fp.gaps = GapTracker(["BTC-USD"])
    raw = [orjson.dumps(m) for m in (last_match(100), match(101), match(104), heartbeat(104), heartbeat(104))]
    trades, counts = fp.handle(raw)
    assert [t["trade_id"] for t in trades] == [101, 104]
    assert counts == {"match": 2, "last_match": 1, "heartbeat": 2}
    assert fp.gaps.take() == [Gap("BTC-USD", 102, 103, TRADE_ID)]


def test_a_product_id_that_cannot_be_a_key_is_skipped_not_raised_from_the_gap_tracker():
    """A ``match`` whose product_id is a list once raised TypeError out of ``data_received``: the read was lost."""
    proto = FeedProtocol(["BTC-USD"], "matches")
    proto.gaps = GapTracker(["BTC-USD"])
    raws = [orjson.dumps(m) for m in (match(1), {**match(2), "product_id": ["BTC-USD"]}, match(3))]
    raws.append(orjson.dumps({"type": "heartbeat", "product_id": ["BTC-USD"], "last_trade_id": 3}))
    trades, counts = proto.handle(raws)
    assert len(trades) == 3 and counts == {"match": 3, "heartbeat": 1}
    assert proto.gaps.high("BTC-USD") == 3 and proto.gaps.pending("BTC-USD") == [(2, 2)]


# --- implausible jumps: one bogus id never inflates the counts nor blinds the tracker ----------

BOGUS = 9_000_000_000_000_000_000  # an int64, so the pipeline forwards it as a valid trade


def settle(t: GapTracker, last: int, n: int = 3) -> list[Gap]:
    for _ in range(n):
        t.on_control(heartbeat(last))
    return t.take()


def test_one_bogus_trade_id_is_bad_data_and_later_losses_are_still_found() -> None:
    seen: list[str] = []
    t = GapTracker(["BTC-USD"], on_jump=seen.append)
    t.on_control(last_match(100))
    t.on_trades([match(101), match(102), match(BOGUS), match(103), match(104), match(106), match(107)])
    assert settle(t, 107) == [Gap("BTC-USD", 105, 105, TRADE_ID)]
    assert t.high("BTC-USD") == 107 and t.ids[TRADE_ID] == 1
    t.on_trades([match(108), match(110)])
    assert settle(t, 110) == [Gap("BTC-USD", 109, 109, TRADE_ID)]
    assert t.implausible == 1 and t.rebaselines == 0 and seen == ["implausible_jump"]


def test_a_huge_heartbeat_id_is_bad_data_too() -> None:
    t = tracker()
    t.on_trades([match(101)])
    t.on_control(heartbeat(BOGUS))
    t.on_trades([match(102), match(104)])
    assert settle(t, 104) == [Gap("BTC-USD", 103, 103, TRADE_ID)]
    assert t.high("BTC-USD") == 104 and t.implausible == 1 and sum(t.ids.values()) == 1


def test_the_bound_is_gap_max_ids_ids() -> None:
    t = GapTracker(["BTC-USD"], max_jump=10)
    t.on_control(last_match(100))
    t.on_control(last_match(110))  # 101..110: ten ids, the widest gap announced
    t.on_trades([match(122)])  # 111..121 would be eleven: 122 is 12 ids on
    assert t.pending("BTC-USD") == [(101, 110)] and t.implausible == 1 and t.high("BTC-USD") == 110


def test_a_jump_the_feed_continues_from_becomes_the_baseline_without_a_gap() -> None:
    """After a long outage (or a renumbering) the feed really is far on: the run of ids confirms it."""
    seen: list[str] = []
    t = GapTracker(["BTC-USD"], max_jump=1000, on_jump=seen.append)
    t.on_control(last_match(100))
    t.on_control(last_match(50_000))  # the reconnect's last_match
    t.on_control(heartbeat(50_000))
    assert t.high("BTC-USD") == 100
    t.on_trades([match(50_001)])  # the third message in a row continuing from it
    assert t.high("BTC-USD") == 50_001 and t.rebaselines == 1 and t.implausible == 3
    assert seen == ["implausible_jump"] * 3 + ["rebaseline"]
    assert t.take() == [] and t.pending("BTC-USD") == []
    t.on_trades([match(50_003)])
    assert settle(t, 50_003) == [Gap("BTC-USD", 50_002, 50_002, TRADE_ID)]


def test_bogus_ids_between_which_the_feed_goes_on_from_the_baseline_are_never_adopted() -> None:
    t = tracker()
    for i in range(1, 10):
        t.on_trades([match(BOGUS + i), match(100 + i)])
    assert t.high("BTC-USD") == 109 and t.rebaselines == 0 and t.implausible == 9
    t.on_control(heartbeat(BOGUS))
    t.on_control(heartbeat(109))  # a heartbeat at the baseline breaks the run as well
    t.on_control(heartbeat(BOGUS))
    assert t.rebaselines == 0 and settle(t, 109) == []


def test_a_bogus_first_baseline_is_replaced_once_the_feed_goes_on_far_below_it() -> None:
    t = GapTracker(["BTC-USD"])
    t.on_control(last_match(BOGUS))  # the very first id was the bad one
    t.on_trades([match(101), match(102), match(103)])
    assert t.high("BTC-USD") == 103 and t.rebaselines == 1
    t.on_trades([match(105)])
    assert settle(t, 105) == [Gap("BTC-USD", 104, 104, TRADE_ID)]


def test_the_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GapTracker(["BTC-USD"], max_jump=0)
    with pytest.raises(ValueError):
        GapTracker(["BTC-USD"], confirmations=0)
