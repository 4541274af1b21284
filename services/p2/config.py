"""P2's settings, read from the environment once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from mercurystream.shared.config import CommonSettings, Host, Port
from mercurystream.shared.framing import DEFAULT_MAX_FRAME_BYTES
from mercurystream.shared.jetstream import NatsSettings, parse_shard
from mercurystream.shared.timeparse import MAX_FUTURE_SKEW_S

MIN_TOKEN_CHARS = 16


class P2Settings(CommonSettings, NatsSettings):
    P2_SOURCE: Literal["tcp", "nats"] = "tcp"
    """``tcp``: P1 connects to ``HOST:PORT``; ``nats``: read shard ``P2_SHARD`` of the JetStream stream."""
    P2_SHARD: str = "0/1"
    """``i/n``: this P2 takes the products whose stable hash mod n is i (``shared.jetstream.shard_of``)."""
    NATS_FETCH_BATCH: int = Field(64, gt=0, le=10_000)
    NATS_ACK_WAIT_S: float = Field(30.0, gt=0)
    NATS_MAX_ACK_PENDING: int = Field(1024, gt=0)
    HOST: Host = "127.0.0.1"
    PORT: Port = 9001
    METRICS_PORT: Port = 9090
    P2_CONTROL_TOKEN: SecretStr | None = None
    MAX_FRAME_BYTES: int = Field(DEFAULT_MAX_FRAME_BYTES, gt=0)
    MAX_PARTIAL_BYTES_TOTAL: int = Field(32 << 20, gt=0)
    MAX_CONNECTIONS: int = Field(256, gt=0)
    IDLE_TIMEOUT_S: float = Field(300.0, gt=0)
    PARTIAL_TIMEOUT_S: float = Field(10.0, gt=0)
    BUS_QUEUE_EVENTS: int = Field(50000, gt=0)
    BUS_QUEUE_BYTES: int = Field(8 << 20, gt=0)
    BUS_PAUSE_BYTES: int | None = Field(None, ge=0)
    MAX_FUTURE_SKEW_S: float = Field(MAX_FUTURE_SKEW_S, ge=0)

    RECORD: bool = False
    RECORD_FILE: Path = Path("data/btcusd.jsonl")
    RECORD_FORMAT: Literal["jsonl", "parquet"] = "jsonl"
    RECORD_ROTATE_BYTES: int = Field(128 << 20, gt=0)
    RECORD_ROTATE_S: float = Field(300.0, gt=0)
    RECORD_MAX_BYTES: int = Field(8 << 30, gt=0)
    """The recording's files on disk, the open one included; the oldest closed files go first."""
    ENABLE_SLOW: bool = False
    SLOW_DELAY_MS: float = Field(50.0, ge=0)

    VWAP_WINDOW_S: float = Field(300.0, gt=0)
    VOL_WINDOW: int = Field(100, ge=3)
    WINDOW_TRADES: int = Field(50_000, gt=0)

    FORENSICS: bool = True
    LATENCY_SPIKE_THRESHOLD_MS: float = Field(100.0, gt=0)
    LATENCY_BUFFER_SIZE: int = Field(3000, gt=0)
    LATENCY_EVAL_EVERY: int = Field(100, gt=0)
    LATENCY_SPIKE_CONSECUTIVE: int = Field(2, gt=0)
    DUPLICATE_LRU_MAX: int = Field(50000, gt=0)
    DEDUPE_IDS: int = Field(100_000, gt=0)
    GAP_REORDER_WINDOW: int = Field(50, ge=0)
    FLIGHT_RECORDER: bool = True
    FLIGHT_PRE_EVENTS: int = Field(5000, gt=0)
    FLIGHT_RING_BYTES: int = Field(2 << 20, gt=0)
    FLIGHT_POST_EVENTS: int = Field(2000, ge=0)
    FLIGHT_COOLDOWN_S: float = Field(60.0, ge=0)
    FLIGHT_MAX_AGE_S: float = Field(0.0, ge=0)
    INCIDENT_CHARTS: bool = True
    INCIDENTS_DIR: Path = Path("data/incidents")
    INCIDENTS_MAX_BYTES: int = Field(1 << 30, gt=0)
    DRIFT_SAMPLE_FILE: Path = Path("data/drift_samples.jsonl")
    DRIFT_SAMPLE_MAX_BYTES: int = Field(64 << 20, gt=0)
    DRIFT_SAMPLES_PER_MIN: int = Field(100, ge=0)

    @field_validator("P2_SHARD")
    @classmethod
    def _shard(cls, v: str) -> str:
        i, n = parse_shard(v)
        return f"{i}/{n}"

    def shard(self) -> tuple[int, int]:
        return parse_shard(self.P2_SHARD)

    @model_validator(mode="after")
    def _pause_below_queue(self) -> P2Settings:
        """Unset: half the queue bound. Pausing at or past the bound would drop before it paused."""
        if self.BUS_PAUSE_BYTES is None:
            self.BUS_PAUSE_BYTES = self.BUS_QUEUE_BYTES // 2
        elif self.BUS_PAUSE_BYTES >= self.BUS_QUEUE_BYTES:
            raise ValueError(
                f"BUS_PAUSE_BYTES ({self.BUS_PAUSE_BYTES}) must be below BUS_QUEUE_BYTES ({self.BUS_QUEUE_BYTES}); "
                "0 never pauses"
            )
        return self

    @model_validator(mode="after")
    def _evaluated_within_the_window(self) -> P2Settings:
        """Evaluations further apart than the window would never look at some samples, and a late
        sample every window could restart the cadence (``LatencySpikeDetector``) before any evaluation."""
        if self.LATENCY_EVAL_EVERY > self.LATENCY_BUFFER_SIZE:
            raise ValueError(
                f"LATENCY_EVAL_EVERY ({self.LATENCY_EVAL_EVERY}) must be at most LATENCY_BUFFER_SIZE "
                f"({self.LATENCY_BUFFER_SIZE}): every sample is in some evaluation's window"
            )
        return self

    @model_validator(mode="after")
    def _room_for_a_closed_file(self) -> P2Settings:
        """The open file may grow to ``RECORD_ROTATE_BYTES``; at least one closed file must fit beside it."""
        if self.RECORD_MAX_BYTES < 2 * self.RECORD_ROTATE_BYTES:
            raise ValueError(
                f"RECORD_MAX_BYTES ({self.RECORD_MAX_BYTES}) must be at least twice RECORD_ROTATE_BYTES "
                f"({self.RECORD_ROTATE_BYTES}): the open file and one closed file"
            )
        return self

    @field_validator("P2_CONTROL_TOKEN")
    @classmethod
    def _long_token(cls, v: SecretStr | None) -> SecretStr | None:
        """A short token is guessable; an empty one would read as set."""
        if v is not None and len(v.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters")
        return v
