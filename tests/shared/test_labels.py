"""Capped product labels: the first products keep theirs, the rest share ``_other``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mercurystream.shared.labels import OTHER, ProductGauge, capped


def test_capped_keeps_the_first_labels_and_folds_the_rest():
    items = [("C", 1.0), ("A", 2.0), ("B", 4.0), ("D", 8.0)]
    assert capped(items, 2) == ([("A", 2.0), ("C", 1.0), (OTHER, 12.0)], 2)
    assert capped(items, 2, None) == ([("A", 2.0), ("C", 1.0)], 2)
    assert capped(items, 10) == ([("A", 2.0), ("B", 4.0), ("C", 1.0), ("D", 8.0)], 0)
    assert capped([("x" * 500, 1.0)], 1)[0][0][0] == "x" * 63 + "…"


def test_product_gauge_exports_the_cap_and_how_many_are_past_it():
    r = CollectorRegistry()
    g = ProductGauge("mercurystream_test", "t", 3, additive=True)
    r.register(g)
    for i in range(10):
        g.set(f"P{i}", 1.0)
    g.set("P0", 5.0)  # an update keeps its label
    assert r.get_sample_value("mercurystream_test", {"product_id": "P0"}) == 5.0
    assert r.get_sample_value("mercurystream_test", {"product_id": OTHER}) == 7.0
    assert r.get_sample_value("mercurystream_test", {"product_id": "P9"}) is None
    assert r.get_sample_value("mercurystream_test_unlabelled_products") == 7.0
    assert generate_latest(r).count(b'product_id="') == 4
