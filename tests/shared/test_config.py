"""Settings: a bad value is one line naming the variable and what it accepts, and exit code 2."""

from __future__ import annotations

import pytest

from mercurystream.p1.config import P1Settings
from mercurystream.shared.config import (
    EXIT_CONFIG,
    CommonSettings,
    ConfigError,
    build_settings,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in P1Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_defaults():
    s = build_settings(P1Settings)
    assert s.SYMBOLS == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert s.FEED_CHANNEL == "matches"
    assert s.P2_HOST == "127.0.0.1" and s.P2_PORT == 9001
    assert s.P1_BUFFER_EVENTS == 10000 and s.P1_METRICS_PORT == 9100
    assert s.COINBASE_WS_URL == "wss://ws-feed.exchange.coinbase.com"
    assert s.LOG_LEVEL == "INFO" and s.LOG_JSON is False and s.STATUS_INTERVAL_S == 5.0


def test_environment_is_read_and_normalized(monkeypatch):
    monkeypatch.setenv("SYMBOLS", " btc-usd , Eth-Usd ")
    monkeypatch.setenv("FEED_CHANNEL", "ticker")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_JSON", "true")
    monkeypatch.setenv("p2_port", "9999")
    s = build_settings(P1Settings)
    assert s.SYMBOLS == ["BTC-USD", "ETH-USD"]
    assert s.FEED_CHANNEL == "ticker"
    assert s.LOG_LEVEL == "DEBUG" and s.LOG_JSON is True
    assert s.P2_PORT == 9999


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("P1_METRICS_PORT", "abc", "valid integer"),
        ("P2_PORT", "70000", "less than or equal to 65535"),
        ("P1_BUFFER_EVENTS", "-5", "greater than 0"),
        ("BACKOFF_MAX", "0", "greater than 0"),
        ("FEED_CHANNEL", "level2", "'matches' or 'ticker'"),
        ("SYMBOLS", "BTC-USD,,ETH-USD", "comma-separated product ids"),
        ("SYMBOLS", "BTC-USD," + "X" * 65, "at most 64 characters"),
        ("MAX_PRODUCT_LABELS", "-1", "greater than or equal to 0"),
        ("COINBASE_WS_URL", "http://example.com", "pattern"),
        ("LOG_LEVEL", "verbose", "INFO"),
        ("LOG_JSON", "maybe", "boolean"),
        ("STATUS_INTERVAL_S", "-1", "greater than 0"),
        ("MAX_FRAME_BYTES", "1.5", "integer"),
        ("SYMBOLS", "BTC-USD,BTC USD", "'BTC USD' is not a product id"),
        ("SYMBOLS", "BTC-USD,BTC/USD", "is not a product id"),
        ("SYMBOLS", "-USD", "is not a product id"),
        ("SYMBOLS", "BTC--USD", "is not a product id"),
        ("GAP_MAX_IDS", "0", "greater than 0"),
        ("P2_HOST", "foo..bar", "host name"),
        ("P2_HOST", "a" * 64 + ".example", "host name"),
        ("P2_HOST", "p2 host", "host name"),
        ("P1_METRICS_HOST", "foo..bar", "host name"),
        ("COINBASE_WS_URL", "ws://127.0.0.1:99999", "port 1 to 65535"),
        ("COINBASE_WS_URL", "ws://127.0.0.1:abc/", "port 1 to 65535"),
        ("COINBASE_WS_URL", "ws://[::1", "not a usable URL"),
        ("COINBASE_WS_URL", "ws://127.0.0.1:0", "port 0"),
        ("COINBASE_WS_URL", "ws://foo..bar:8765", "host name"),
        ("COINBASE_REST_URL", "http://127.0.0.1:99999", "port 1 to 65535"),
        ("COINBASE_REST_URL", "http://127.0.0.1:abc", "port 1 to 65535"),
        ("NATS_URL", "nats://127.0.0.1:99999", "port 1 to 65535"),
        ("NATS_URL", "nats://foo..bar:4222", "host name"),
        ("NATS_URL", "http://127.0.0.1:4222", "nats://host"),
        ("NATS_URL", "nats://127.0.0.1:4222 x", "nats://host"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(monkeypatch, var, value, says):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        build_settings(P1Settings)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{var}=")
    assert repr(value.upper() if var == "LOG_LEVEL" else value) in line
    assert says in line


def test_value_with_a_newline_stays_on_one_line(monkeypatch):
    monkeypatch.setenv("P2_PORT", "90\n01")
    with pytest.raises(ConfigError) as info:
        build_settings(P1Settings)
    assert "\n" not in str(info.value)


def test_load_settings_exits_2_with_one_line_on_stderr(monkeypatch, capsys):
    monkeypatch.setenv("P1_METRICS_PORT", "abc")
    with pytest.raises(SystemExit) as info:
        load_settings(P1Settings, "mercury-p1")
    assert info.value.code == EXIT_CONFIG == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("mercury-p1: configuration error: P1_METRICS_PORT='abc'")
    assert "Traceback" not in err


def test_unknown_variables_are_ignored(monkeypatch):
    monkeypatch.setenv("SOMETHING_ELSE", "x")
    assert build_settings(CommonSettings).LOG_LEVEL == "INFO"


def test_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("P2_PORT", "1234")
    assert build_settings(P1Settings, P2_PORT=4321).P2_PORT == 4321


def test_help_lists_every_variable_and_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        load_settings(P1Settings, "mercury-p1", ["--help"], "P1")
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in P1Settings.model_fields:
        assert f"  {name}=" in out
    assert "  SYMBOLS=BTC-USD,ETH-USD,SOL-USD" in out


def test_arguments_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        load_settings(P1Settings, "mercury-p1", ["--port", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "environment variables" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "p2", "mercury_p2", "p2.example.com."])
def test_ordinary_hosts_are_accepted(monkeypatch, host):
    monkeypatch.setenv("P2_HOST", host)
    monkeypatch.setenv("P1_METRICS_HOST", host)
    s = build_settings(P1Settings)
    got = (s.P2_HOST, s.P1_METRICS_HOST)
    assert got == (host, host)


@pytest.mark.parametrize(
    ("var", "url"),
    [
        ("COINBASE_WS_URL", "ws://127.0.0.1:8765"),
        ("COINBASE_WS_URL", "wss://ws-feed.exchange.coinbase.com"),
        ("COINBASE_WS_URL", "ws://[::1]:8765/feed"),
        ("COINBASE_REST_URL", "https://api.exchange.coinbase.com"),
        ("COINBASE_REST_URL", "http://127.0.0.1:8765/"),
        ("NATS_URL", "nats://127.0.0.1:4222"),
        ("NATS_URL", "tls://nats.example.com:4222"),
        ("NATS_URL", "nats://[::1]:4222"),
    ],
)
def test_ordinary_urls_are_accepted(monkeypatch, var, url):
    monkeypatch.setenv(var, url)
    assert getattr(build_settings(P1Settings), var) == url
