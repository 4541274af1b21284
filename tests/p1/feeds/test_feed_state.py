"""The bookkeeping both feed adapters share (p1/feeds/__init__.py: FeedState)."""

from __future__ import annotations

import pytest

from mercurystream.p1.feeds import OTHER, FeedState, make_adapter


def test_unknown_labels_fold_into_other_past_the_cap() -> None:
    state = FeedState(["BTC-USD"], max_type_labels=2)
    assert [state._label(n, "type") for n in ("a", "b", "c", "a", "x" * 500)] == ["a", "b", OTHER, "a", OTHER]


def test_no_valid_product_left_is_fatal_and_names_every_rejection() -> None:
    state = FeedState(["A-USD", "B-USD"])
    state.invalid["A-USD"] = "A-USD is not a valid product"
    assert state._give_up_if_none_left() == ["B-USD"] and state.fatal is None
    state.invalid["B-USD"] = "B-USD is not a valid product"
    assert state._give_up_if_none_left() == []
    assert state.fatal == "no valid product to subscribe: A-USD is not a valid product; B-USD is not a valid product"


@pytest.mark.parametrize("api", ["exchange", "advanced-trade"])
def test_every_adapter_counts_unreadable_messages_and_resets_on_connect(api: str) -> None:
    adapter = make_adapter(api, ["BTC-USD"])
    assert isinstance(adapter, FeedState)
    assert adapter.count_unreadable("oversize") == {"oversize": 1}
    assert (adapter.messages, adapter.counts) == (1, {"oversize": 1})
    adapter.subscribed, adapter.outbox[:] = True, ["resubscribe"]
    adapter.on_connect()
    assert (adapter.subscribed, adapter.subscribed_products, adapter.outbox) == (False, frozenset(), [])
