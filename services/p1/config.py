"""P1's settings, read from the environment once at start."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from mercurystream.p1.feeds import DEFAULT_URLS
from mercurystream.shared.config import CommonSettings, Host, Port, Symbols, check_url, parse_symbols
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES
from mercurystream.shared.jetstream import NatsSettings

if TYPE_CHECKING:
    from mercurystream.p1.feeds.coinbase_advanced import JwtSigner


class P1Settings(CommonSettings, NatsSettings):
    SYMBOLS: Symbols = ["BTC-USD", "ETH-USD", "SOL-USD"]
    FEED_API: Literal["exchange", "advanced-trade"] = "exchange"
    COINBASE_WS_URL: str = Field("", pattern=r"^(wss?://\S+)?$")
    """Unset or empty: the chosen API's public endpoint (``p1.feeds.DEFAULT_URLS``), so compose can pass it through."""
    FEED_CHANNEL: Literal["matches", "ticker"] = "matches"
    COINBASE_API_KEY_NAME: str | None = Field(None, min_length=1)
    COINBASE_API_PRIVATE_KEY: SecretStr | None = None
    P1_SINK: Literal["tcp", "nats"] = "tcp"
    """``tcp``: framed TCP to P2 (``P2_HOST``/``P2_PORT``); ``nats``: batches to JetStream (``NATS_*``)."""
    P2_HOST: Host = "127.0.0.1"
    P2_PORT: Port = 9001
    BACKOFF_MAX: float = Field(10.0, gt=0)
    P1_BUFFER_EVENTS: int = Field(10000, gt=0)
    P1_BUFFER_BYTES: int = Field(64 << 20, gt=0)
    """Either sink holds at most this many bytes of events, beside ``P1_BUFFER_EVENTS``; the oldest unsent go first."""
    NATS_ROUND_MS: float = Field(2.0, ge=0, le=1000)
    """The NATS sink starts a round of batches at most this often while trades keep coming."""
    P1_METRICS_PORT: Port = 9100
    P1_METRICS_HOST: Host = "127.0.0.1"
    P1_SHUTDOWN_TIMEOUT_S: float = Field(5.0, ge=0)
    MAX_FRAME_BYTES: int = Field(DEFAULT_MAX_FRAME_BYTES, gt=0)
    BACKFILL: bool = True
    COINBASE_REST_URL: str = Field("", pattern=r"^(https?://[^/?#\s]+/?)?$")
    BACKFILL_RATE: float = Field(5.0, gt=0, le=10)
    BACKFILL_QUEUE_GAPS: int = Field(256, gt=0, le=100_000)
    BACKFILL_MAX_IDS: int = Field(10_000, gt=0, le=1_000_000)
    GAP_MAX_IDS: int = Field(1_000_000, gt=0, le=1 << 62)
    """The widest trade-id jump announced as a gap; a wider one is bad data (``implausible_jump``), see p1/gaps.py."""

    _split_symbols = field_validator("SYMBOLS", mode="before")(classmethod(lambda cls, v: parse_symbols(v)))

    @field_validator("COINBASE_API_KEY_NAME", "COINBASE_API_PRIVATE_KEY", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """Compose passes ``${VAR:-}`` through as an empty string: that means no credentials."""
        return None if value == "" else value

    @field_validator("COINBASE_WS_URL", "COINBASE_REST_URL")
    @classmethod
    def _usable_url(cls, value: str) -> str:
        """Host and port as the clients will read them: a bad one is a config error now, not a crash later.

        ``ws://127.0.0.1:99999`` or ``ws://[::1`` raised from the feed's constructor with a traceback,
        and a bad ``COINBASE_REST_URL`` killed the backfill on its first gap.
        """
        if not value:
            return value
        check_url(value)
        if value.startswith("ws"):
            from websockets.exceptions import InvalidURI
            from websockets.uri import parse_uri

            try:
                parse_uri(value)
            except (InvalidURI, ValueError) as exc:
                raise ValueError(f"not a WebSocket URL websockets accepts: {exc}") from None
        return value

    @model_validator(mode="after")
    def _per_api(self) -> P1Settings:
        """The URL defaults per API; credentials come in pairs and only Advanced Trade takes them.

        Errors here name variables, never the key (pydantic's message would quote the value).
        """
        if not self.COINBASE_WS_URL:
            self.COINBASE_WS_URL = DEFAULT_URLS[self.FEED_API]
        if self.FEED_API == "advanced-trade" and self.FEED_CHANNEL != "matches":
            raise ValueError("FEED_CHANNEL is the Exchange feed's; FEED_API=advanced-trade reads market_trades")
        if (self.COINBASE_API_KEY_NAME is None) != (self.COINBASE_API_PRIVATE_KEY is None):
            raise ValueError("set both COINBASE_API_KEY_NAME and COINBASE_API_PRIVATE_KEY, or neither")
        if self.COINBASE_API_KEY_NAME is not None:
            if self.FEED_API != "advanced-trade":
                raise ValueError("COINBASE_API_KEY_NAME/COINBASE_API_PRIVATE_KEY are for FEED_API=advanced-trade")
            self.signer()
        return self

    def signer(self) -> JwtSigner | None:
        """The JWT signer for the Advanced Trade subscribes, or ``None`` to subscribe unauthenticated."""
        if self.COINBASE_API_KEY_NAME is None or self.COINBASE_API_PRIVATE_KEY is None:
            return None
        from mercurystream.p1.feeds.coinbase_advanced import JwtSigner  # only Advanced Trade loads it

        return JwtSigner(self.COINBASE_API_KEY_NAME, self.COINBASE_API_PRIVATE_KEY)
