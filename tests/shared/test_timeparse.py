from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mercurystream.shared.timeparse import IsoTimeParser


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_fast_path_agrees_with_fromisoformat(dt):
    s = dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expected = datetime.fromisoformat(s).timestamp()
    assert IsoTimeParser().parse(s) == pytest.approx(expected, abs=1e-6)


def test_cached_minute_prefix_is_reused_and_replaced():
    p = IsoTimeParser()
    a = p.parse("2024-05-01T12:34:56.000001Z")
    b = p.parse("2024-05-01T12:34:57.5Z")
    c = p.parse("2024-05-01T12:35:00Z")
    assert b - a == pytest.approx(1.499999)
    assert c - a == pytest.approx(3.999999)


@pytest.mark.parametrize(
    "bad",
    [
        "2024-05-01T12:34:5_6Z",
        "2024-05-01T12:34:+5Z",
        "2024-05-01T12:34: 5Z",
        "2024-05-01T12:34:56.Z",
        "2024-05-01T12:34:99Z",
        "2024-13-01T12:34:56Z",
        "not a time",
        "",
        None,
        12345,
    ],
)
def test_rejects_what_is_not_an_iso_time(bad):
    assert IsoTimeParser().parse(bad) is None


def test_offset_form_and_naive_time_are_utc():
    p = IsoTimeParser()
    assert p.parse("2024-05-01T12:34:56+00:00") == p.parse("2024-05-01T12:34:56Z")
    assert p.parse("2024-05-01T12:34:56") == p.parse("2024-05-01T12:34:56Z")
