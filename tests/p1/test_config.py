"""P1's settings: the feed API, its default URL, and the Advanced Trade credentials."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mercurystream.p1.config import P1Settings
from mercurystream.shared.config import ConfigError, build_settings, load_settings


def pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_the_url_defaults_per_api():
    assert build_settings(P1Settings).COINBASE_WS_URL == "wss://ws-feed.exchange.coinbase.com"
    s = build_settings(P1Settings, FEED_API="advanced-trade")
    assert s.COINBASE_WS_URL == "wss://advanced-trade-ws.coinbase.com" and s.signer() is None
    given = build_settings(P1Settings, FEED_API="advanced-trade", COINBASE_WS_URL="ws://127.0.0.1:8765")
    assert given.COINBASE_WS_URL == "ws://127.0.0.1:8765"


def test_empty_values_mean_unset_as_compose_passes_them():
    s = build_settings(
        P1Settings, FEED_API="advanced-trade", COINBASE_WS_URL="", COINBASE_API_KEY_NAME="", COINBASE_API_PRIVATE_KEY=""
    )
    assert s.COINBASE_WS_URL == "wss://advanced-trade-ws.coinbase.com" and s.signer() is None


def test_credentials_make_a_signer_and_stay_secret():
    key = pem()
    s = build_settings(P1Settings, FEED_API="advanced-trade", COINBASE_API_KEY_NAME="k", COINBASE_API_PRIVATE_KEY=key)
    assert s.signer() is not None
    assert key not in repr(s) and key not in str(s.model_dump())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEED_API": "fix"}, "FEED_API"),
        ({"FEED_API": "advanced-trade", "FEED_CHANNEL": "ticker"}, "reads market_trades"),
        ({"FEED_API": "advanced-trade", "COINBASE_API_KEY_NAME": "k"}, "set both"),
        ({"COINBASE_API_KEY_NAME": "k", "COINBASE_API_PRIVATE_KEY": "x"}, "are for FEED_API=advanced-trade"),
        (
            {"FEED_API": "advanced-trade", "COINBASE_API_KEY_NAME": "k", "COINBASE_API_PRIVATE_KEY": "secret-value"},
            "not a PEM EC private key",
        ),
    ],
)
def test_bad_combinations_are_one_line_errors(env, message):
    with pytest.raises(ConfigError) as info:
        build_settings(P1Settings, **env)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "secret-value" not in str(info.value)


def test_a_bad_key_exits_2_without_printing_it(monkeypatch, capsys):
    monkeypatch.setenv("FEED_API", "advanced-trade")
    monkeypatch.setenv("COINBASE_API_KEY_NAME", "k")
    monkeypatch.setenv("COINBASE_API_PRIVATE_KEY", "-----BEGIN EC PRIVATE KEY-----\nsecret-value\n")
    with pytest.raises(SystemExit) as info:
        load_settings(P1Settings, "mercury-p1")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "secret-value" not in err and "COINBASE_API_PRIVATE_KEY" in err
