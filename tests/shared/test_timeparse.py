import os
import re
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercurystream.shared.timeparse import (
    IsoTimeParser,
    _rowscan,
    all_fixed_form,
    all_fixed_form_reference,
    fixed_seconds,
    fixed_seconds_reference,
    is_time,
    latest_valid_many,
    latest_valid_s,
    parse_time_us,
)


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


# --- the fixed form, one by one and a batch at a time -------------------------------------------

_FIXED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")

fixed_like = st.builds(
    lambda y, mo, d, h, mi, s, f: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{f:06d}Z",
    st.integers(1999, 2101),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 61),
    st.integers(0, 999_999),
)
"""Fixed-form strings, calendar errors and second 60/61 included."""


def _mutations(s: str) -> st.SearchStrategy[str]:
    return st.integers(0, len(s)).flatmap(
        lambda i: st.sampled_from(["", "0", "a", "Z", ".", " ", "٣", "1Z"]).map(lambda c: s[:i] + c + s[i + 1 :])
    )


any_time = fixed_like | fixed_like.flatmap(_mutations)


@settings(max_examples=500)
@given(st.lists(any_time, max_size=8))
def test_all_fixed_form_is_the_regex_on_every_item(times: list[str]) -> None:
    """The kernel (a list or a tuple) and the reference alike."""
    expected = all(_FIXED.fullmatch(t) is not None for t in times)
    assert all_fixed_form(times) == all_fixed_form(tuple(times)) == all_fixed_form_reference(times) == expected


@pytest.mark.parametrize("check", [all_fixed_form, all_fixed_form_reference])
def test_all_fixed_form_rejects_non_strings_and_shifted_lengths(check) -> None:
    good = "2024-05-01T12:34:56.123456Z"
    assert check([]) and check([good, good]) and check((good, _Str(good)))
    assert not check([good, None]) and not check([good.encode()])
    assert not check([good[:-1], "Z" + good])  # joined, it would match the template


@settings(max_examples=500)
@given(st.lists(fixed_like, max_size=12), st.lists(fixed_like, max_size=12))
def test_parse_fixed_is_parse_of_each_and_does_not_depend_on_history(history: list[str], times: list[str]) -> None:
    warm = IsoTimeParser()
    for t in history:
        warm.parse(t)
    warm.parse_fixed(history)
    one_by_one = [IsoTimeParser().parse(t) for t in times]
    batch = warm.parse_fixed(times)
    if None in one_by_one:
        assert batch is None
    else:
        assert batch == one_by_one
    assert [warm.parse(t) for t in times] == one_by_one
    ordered = sorted(times)
    expected = [IsoTimeParser().parse(t) for t in ordered]
    assert warm.parse_fixed(ordered) == (None if None in expected else expected)


def test_second_60_is_accepted_and_61_is_not() -> None:
    p = IsoTimeParser()
    minute = p.parse("2024-05-01T12:34:00.000000Z")
    assert p.parse("2024-05-01T12:34:60.500000Z") == minute + 60.5
    assert p.parse("2024-05-01T12:34:61.000000Z") is None
    assert p.parse_fixed(["2024-05-01T12:34:60.500000Z", "2024-05-01T12:34:61.000000Z"]) is None


def test_a_cached_second_does_not_accept_a_bad_fraction() -> None:
    p = IsoTimeParser()
    assert p.parse("2024-05-01T12:34:56.000001Z") is not None
    for bad in ("2024-05-01T12:34:56.00000aZ", "2024-05-01T12:34:56.٣00000Z", "2024-05-01T12:34:56.000001X"):
        assert p.parse(bad) is None


# --- a column of fixed-form times: the C kernel beside its reference ------------------------------------------

any_year_fixed = st.builds(
    lambda y, mo, d, h, mi, s, f: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{f:06d}Z",
    st.integers(0, 9999) | st.sampled_from([1, 1600, 1900, 1970, 2000, 2100, 9999]),
    st.integers(0, 13),
    st.integers(0, 32) | st.sampled_from([28, 29, 30, 31]),
    st.integers(0, 25),
    st.integers(0, 60),
    st.integers(0, 61) | st.sampled_from([59, 60]),
    st.integers(0, 999_999) | st.sampled_from([0, 999_999]),
)
"""Every year the calendar has and one it has not (0), leap days and the last of each month,
hour 24 and second 60/61 included."""


class _Str(str):
    pass


@settings(max_examples=3000)
@given(any_year_fixed | any_year_fixed.flatmap(_mutations))
def test_fixed_seconds_of_one_time_is_its_reference(time: str) -> None:
    """One time at a time, so every calendar edge is met alone (a list is ``None`` if any time fails)."""
    expected = fixed_seconds_reference([time])
    assert fixed_seconds([time]) == expected
    value = IsoTimeParser().parse(time)
    assert expected == (None if _FIXED.fullmatch(time) is None or value is None else [value])


@settings(max_examples=500)
@given(st.lists(any_year_fixed | any_year_fixed.flatmap(_mutations), max_size=10))
def test_fixed_seconds_is_its_reference_whichever_way_it_is_computed(times: list[str]) -> None:
    """Held equal, value for value, or ``None`` from both; the reference is :meth:`IsoTimeParser.parse` of each."""
    expected = fixed_seconds_reference(times)
    assert fixed_seconds(times) == expected
    assert fixed_seconds(tuple(times)) == expected
    one_by_one = [IsoTimeParser().parse(t) for t in times]
    if expected is None:
        assert not all_fixed_form(times) or None in one_by_one
    else:
        assert expected == one_by_one


@pytest.mark.parametrize("year", [1, 4, 100, 1600, 1900, 1970, 2000, 2023, 2024, 2100, 9996, 9999])
def test_fixed_seconds_keeps_the_gregorian_leap_days(year: int) -> None:
    for t in (
        f"{year:04d}-02-28T23:59:59.999999Z",
        f"{year:04d}-02-29T00:00:00.000000Z",
        f"{year:04d}-12-31T23:59:60.5Z",
    ):
        assert fixed_seconds([t]) == fixed_seconds_reference([t]), t


def test_fixed_seconds_takes_only_strings_of_the_fixed_form() -> None:
    good = "2024-02-29T23:59:60.999999Z"
    assert fixed_seconds([]) == []
    assert fixed_seconds([good, _Str(good)]) == [1709251200.999999] * 2
    for odd in ([good, None], [good.encode()], [good[:-1], "Z" + good], [good.replace("2", "٢")], ["x" * 27]):
        assert fixed_seconds(odd) is None, odd
        assert fixed_seconds_reference(odd) is None, odd


def test_the_time_kernel_is_built_where_ci_requires_it() -> None:
    if os.environ.get("MERCURY_REQUIRE_ROWSCAN") == "1":
        assert _rowscan is not None


# --- one validity rule: is_time and parse_time_us agree on every string -------------------------

_NEAR_ISO_CHARS = st.sampled_from(
    ["", "0", "5", "9", ",", ".", ":", "-", "+", "Z", "z", " ", "T", "W", "٣", "60", "1Z"]
)


def _near_iso_strings() -> st.SearchStrategy[str]:
    """Times in the forms a venue might send, and the same with a character changed, dropped or added."""
    base = st.builds(
        lambda y, mo, d, h, mi, s, frac, sep, suffix: (
            f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}" + frac + suffix
        ),
        st.sampled_from([1, 1970, 2024, 2099, 9999]),
        st.integers(0, 13),
        st.sampled_from([0, 1, 28, 29, 30, 31, 32]),
        st.sampled_from([0, 12, 23, 24]),
        st.sampled_from([0, 34, 59, 60]),
        st.sampled_from([0, 56, 59, 60, 61]),
        st.sampled_from(["", ".", ",", ".1", ",5", ".123", ".123456", ",123456", ".1234567", ".123456789"]),
        st.sampled_from(["T", " ", "t"]),
        st.sampled_from(["Z", "z", "", " Z", "+00:00", "-00:00", "+02:00", "-05:00", "+0000", "+00", "Z+00:00"]),
    )

    def mutate(s: str) -> st.SearchStrategy[str]:
        return st.tuples(st.integers(0, len(s)), _NEAR_ISO_CHARS, st.integers(0, 1)).map(
            lambda m: s[: m[0]] + m[1] + s[m[0] + m[2] :]
        )

    return base | base.flatmap(mutate) | st.text(alphabet="0123456789-:T.,Z+ ", max_size=32)


@settings(max_examples=3000)
@given(_near_iso_strings())
def test_is_time_and_parse_time_us_agree_on_which_strings_are_times(s: str) -> None:
    """One time rule: a string the validity check refuses has no value, and one it takes has the
    value the analytics' parser gives it (to the microsecond, fraction digits past the sixth dropped)."""
    us = parse_time_us(s)
    assert is_time(s) == (us is not None)
    if us is not None:
        seconds = IsoTimeParser().parse(s)
        assert abs(us / 1e6 - seconds) <= 1e-6 + 1e-15 * abs(seconds)


@pytest.mark.parametrize(
    "s",
    [
        "2099-01-01T00:00:00,000000Z",  # a comma before the fraction: fromisoformat takes it
        "2099-01-01T00:00:00.Z",  # an empty fraction
        "2024-05-01T12:34:56.123456 Z",
        "2024-05-01T12:34:56.123456z",
    ],
)
def test_parse_time_us_refuses_what_is_time_refuses(s: str) -> None:
    assert not is_time(s) and parse_time_us(s) is None


def test_second_60_is_a_time_to_both_and_the_next_minute() -> None:
    assert is_time("2024-05-01T12:34:60.5Z")
    assert parse_time_us("2024-05-01T12:34:60.5Z") == parse_time_us("2024-05-01T12:35:00.5Z")
    assert parse_time_us("9999-12-31T23:59:60Z") == parse_time_us("9999-12-31T23:59:59Z") + 1_000_000
    assert not is_time("2024-05-01T12:34:61Z") and parse_time_us("2024-05-01T12:34:61Z") is None


@pytest.mark.parametrize("odd", [None, 12345, b"2024-05-01T12:34:56Z", 1.5])
def test_parse_time_us_of_a_non_string_is_none(odd: object) -> None:
    assert parse_time_us(odd) is None and not is_time(odd)


@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20), st.floats(0, 1e6))
def test_the_bound_of_many_stamps_is_each_stamp_s_bound(stamps: list[int], skew: float) -> None:
    assert latest_valid_many(stamps, skew) == [latest_valid_s(us, skew) for us in stamps]
