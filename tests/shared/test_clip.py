"""Bounded text: clip, preview and the status lines' join."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mercurystream.shared.clip import LABEL_MAX, SAMPLE_MAX, STATUS_MAX, clip, join_clipped, preview


def test_clip_keeps_short_text_and_marks_the_cut():
    assert clip("BTC-USD") == "BTC-USD"
    assert clip("x" * 900_000) == "x" * (LABEL_MAX - 1) + "…"
    assert clip(12345, 3) == "12…"


def test_preview_cuts_bytes_before_repr():
    got = preview(b"y" * 1_000_000)
    assert len(got) == SAMPLE_MAX and got.startswith("b'yyy")


@given(st.lists(st.text(alphabet="ab=$", max_size=200), max_size=300), st.integers(20, 2000))
def test_join_clipped_stays_within_its_width_and_counts_what_it_leaves_out(parts, width):
    line = join_clipped(parts, " | ", width)
    assert len(line) <= max(width, len(f"… +{len(parts)} more"))
    if line.endswith(" more"):
        shown = line.split(" | ")[:-1]
        assert int(line.rsplit("+", 1)[1].split()[0]) == len(parts) - len(shown)
    else:
        assert line == " | ".join(clip(p, LABEL_MAX + 32) for p in parts)


def test_a_thousand_products_make_one_bounded_status_line():
    line = join_clipped([f"P{i:04d}-{'Z' * 60}=$1.0M/min(3tx)" for i in range(1000)])
    assert len(line) <= STATUS_MAX and line.endswith("more")
