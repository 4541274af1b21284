"""P1's settings, read from the environment once at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mercurystream.shared.config import CommonSettings, Port, Symbols, parse_symbols
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES


class P1Settings(CommonSettings):
    SYMBOLS: Symbols = ["BTC-USD", "ETH-USD", "SOL-USD"]
    COINBASE_WS_URL: str = Field("wss://ws-feed.exchange.coinbase.com", pattern=r"^wss?://")
    FEED_CHANNEL: Literal["matches", "ticker"] = "matches"
    P2_HOST: str = Field("127.0.0.1", min_length=1)
    P2_PORT: Port = 9001
    BACKOFF_MAX: float = Field(10.0, gt=0)
    P1_BUFFER_EVENTS: int = Field(10000, gt=0)
    P1_METRICS_PORT: Port = 9100
    P1_METRICS_HOST: str = Field("127.0.0.1", min_length=1)
    P1_SHUTDOWN_TIMEOUT_S: float = Field(5.0, ge=0)
    MAX_FRAME_BYTES: int = Field(DEFAULT_MAX_FRAME_BYTES, gt=0)
    BACKFILL: bool = True
    COINBASE_REST_URL: str = Field("", pattern=r"^(https?://[^/?#\s]+/?)?$")
    BACKFILL_RATE: float = Field(5.0, gt=0, le=10)
    BACKFILL_QUEUE_GAPS: int = Field(256, gt=0, le=100_000)
    BACKFILL_MAX_IDS: int = Field(10_000, gt=0, le=1_000_000)

    _split_symbols = field_validator("SYMBOLS", mode="before")(classmethod(lambda cls, v: parse_symbols(v)))
