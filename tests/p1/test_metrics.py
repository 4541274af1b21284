from __future__ import annotations

from mercurystream.p1.metrics import P1Metrics
from mercurystream.shared.scrape import scrape


def test_serves_its_own_registry_on_an_ephemeral_port():
    m = P1Metrics()
    port = m.serve(0, "127.0.0.1")
    try:
        assert port > 0
        m.count_messages({"match": 3, "heartbeat": 2, "brand_new": 1})
        m.count_messages({"match": 1})
        m.dropped_total.labels("buffer_full").inc(4)
        m.buffered.set(7)
        s = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        m.close()
    assert s.value("mercurystream_p1_messages_total", type="match") == 4
    assert s.value("mercurystream_p1_messages_total", type="brand_new") == 1
    assert s.value("mercurystream_p1_dropped_total", reason="buffer_full") == 4
    assert ("mercurystream_p1_dropped_total", frozenset({("reason", "shutdown")})) in s, "reasons exported at 0"
    assert s.value("mercurystream_p1_buffered") == 7
    assert ("mercurystream_p1_connected", frozenset({("target", "p2")})) in s
    for name in (
        "mercurystream_p1_validation_failures_total",
        "mercurystream_p1_forwarded_total",
        "mercurystream_p1_acked_total",
        "mercurystream_p1_resent_total",
    ):
        assert (name, frozenset()) in s


def test_two_instances_do_not_collide():
    a, b = P1Metrics(), P1Metrics()
    a.forwarded_total.inc(2)
    assert b.forwarded_total._value.get() == 0
    a.close()


def test_product_labels_are_capped_and_the_rest_summed_under_other():
    m = P1Metrics(max_product_labels=2)
    for i, product in enumerate(["A-USD", "B-USD", "C-USD", "D-USD", "E-USD"]):
        m.subscribed.set(product, 1 if i != 3 else 0)
    value = m.registry.get_sample_value
    assert value("mercurystream_p1_subscribed", {"product_id": "A-USD"}) == 1
    assert value("mercurystream_p1_subscribed", {"product_id": "C-USD"}) is None
    assert value("mercurystream_p1_subscribed", {"product_id": "_other"}) == 2
    assert value("mercurystream_p1_subscribed_unlabelled_products") == 3
