"""Environment configuration: one validated settings object per service.

Every service reads its variables once at start through :func:`load_settings`. A bad value
ends the process with exit code 2 and one line naming the variable and what it accepts,
never a traceback.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mercurystream.shared.labels import MAX_PRODUCT_LABELS
from mercurystream.shared.schema import PRODUCT_ID_MAX

EXIT_CONFIG = 2

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]
Symbols = Annotated[list[str], NoDecode]
Port = Annotated[int, Field(ge=0, le=65535)]

_HOST_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


def check_host(value: str) -> str:
    """An IP address or a host name the resolver can take, else ``ValueError`` with one line.

    Caught here because the resolver refuses some names with ``UnicodeError`` (an empty label as in
    ``foo..bar``, a label over 63 characters), not the ``OSError`` a connect loop retries.
    """
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    try:
        name = value.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or not all(map(_HOST_LABEL.match, name.split("."))):
        raise ValueError(
            "expected an IP address or a host name: dot-separated labels of 1 to 63 letters, digits, '-' or '_'"
        )
    return value


def check_url(value: str) -> str:
    """A URL whose host and port a client can use, else ``ValueError`` with one line.

    ``urlsplit(...).port`` raises ``ValueError`` on a port outside 0..65535 or not a number, and an
    unclosed ``[`` fails the split itself: both used to surface only when a client first connected.
    """
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a usable URL ({exc}); expected scheme://host[:port] with a port 1 to 65535") from None
    if port == 0:
        raise ValueError("port 0 cannot be connected to; expected a port 1 to 65535")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    check_host(parts.hostname)
    return value


Host = Annotated[str, AfterValidator(check_host)]
"""A host to connect to or bind: checked at start, so a name no resolver takes is a config error."""


class CommonSettings(BaseSettings):
    """Variables every service understands."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    LOG_LEVEL: LogLevel = "INFO"
    LOG_JSON: bool = False
    STATUS_INTERVAL_S: float = Field(5.0, gt=0)
    MAX_PRODUCT_LABELS: int = Field(MAX_PRODUCT_LABELS, ge=0)

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v


_PRODUCT_ID = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")
"""Coinbase's product ids (``BTC-USD``, ``BTC-PERP-INTX``): letters and digits in dash-separated parts."""


def parse_symbols(value: object) -> object:
    """Split ``BTC-USD, eth-usd`` into ``["BTC-USD", "ETH-USD"]``; an empty or malformed entry is an error.

    A malformed one (``BTC USD``) would only be refused by the venue, in words P1 may not recognise.
    """
    if isinstance(value, str):
        parts = [p.strip().upper() for p in value.split(",")]
        if not all(parts):
            raise ValueError("expected comma-separated product ids like BTC-USD,ETH-USD")
        if max(map(len, parts)) > PRODUCT_ID_MAX:
            raise ValueError(f"a product id has at most {PRODUCT_ID_MAX} characters")
        for p in parts:
            if not _PRODUCT_ID.fullmatch(p):
                raise ValueError(f"{p!r} is not a product id: letters and digits in dash-separated parts, like BTC-USD")
        return parts
    return value


class ConfigError(Exception):
    """A variable failed validation; ``str()`` is the one line to show the user."""


def describe_error(exc: ValidationError) -> str:
    """Turn the first pydantic error into ``VAR='value': what it accepts``."""
    err = exc.errors(include_url=False)[0]
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not err["loc"]:
        return msg  # a rule across variables names them itself
    var = str(err["loc"][0]).upper()
    given = err.get("input")
    if isinstance(given, (str, int, float)) and not isinstance(given, bool):
        return f"{var}={given!r}: {msg}"
    return f"{var}: {msg}"


S = TypeVar("S", bound=BaseSettings)


def build_settings(cls: type[S], **overrides: object) -> S:
    """Build settings from the environment, raising :class:`ConfigError` with a one-line reason."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None


def usage(cls: type[BaseSettings], service: str, summary: str) -> str:
    """``--help`` text: the service takes no arguments, so list the variables it reads."""
    lines = [f"usage: {service}", "", summary, "", "Configured only through environment variables (defaults shown):"]
    for name, field in cls.model_fields.items():
        default = field.default
        if isinstance(default, list):
            default = ",".join(map(str, default))
        lines.append(f"  {name}={default}")
    return "\n".join(lines)


def load_settings(cls: type[S], service: str, argv: list[str] | None = None, summary: str = "") -> S:
    """Build settings or exit 2 with one line on stderr; ``--help`` prints :func:`usage` and exits 0."""
    args = argv or []
    if args:
        if args[0] in ("-h", "--help"):
            print(usage(cls, service, summary))
            raise SystemExit(0)
        print(f"{service}: takes no arguments ({args[0]!r}); configure it with environment variables, see --help",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_CONFIG)
    try:
        return build_settings(cls)
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
