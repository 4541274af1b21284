"""The simulator's REST trades history: ``GET /products/{product_id}/trades``, as Coinbase Exchange answers it.

Sans-I/O: :class:`TradeHistory` keeps the last ``per_product`` ``match`` messages each product
generated (the bytes already built for the feed, so the market's hot path only appends) and answers
a request's path and query with a status, a JSON body and headers:

- the page is a list of ``{"time", "trade_id", "price", "size", "side"}``, newest first, ``side``
  being the maker's as on a ``match``;
- ``after=ID`` asks for trades older than ``ID``, ``before=ID`` for the ones just newer, ``limit`` is
  1 to 1000 (default 1000); the headers ``CB-BEFORE`` and ``CB-AFTER`` carry the newest and oldest
  id of the page, the cursors of the next pages;
- errors are ``{"message": ...}``: 404 ``NotFound`` for an unknown product, 400 for a bad parameter.

That is the behaviour of Coinbase Exchange's "Get product trades" and "Pagination" pages
(docs.cdp.coinbase.com/exchange/rest-api). A product's trade ids are contiguous in the simulator,
so the history is a deque indexed by ``trade_id - oldest``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from mercurystream.exchange.market import MATCH, N_CHANNELS, Msg

PAGE_LIMIT = 1000
_PATH = re.compile(r"^/products/([^/]+)/trades/?$")
_KEEP = ("time", "trade_id", "price", "size", "side")


def is_trades_path(path: str) -> bool:
    return _PATH.match(path) is not None


class TradeHistory:
    """The last ``per_product`` matches of each product, served as Coinbase's trades pages."""

    def __init__(
        self, product_ids: Sequence[str], last_trade_id: Callable[[int], int], per_product: int = 10_000
    ) -> None:
        """``last_trade_id(p)`` is product ``p``'s newest trade id (the market's); the deque ends there."""
        if per_product < 0:
            raise ValueError("per_product must be >= 0")
        self.product_ids = tuple(product_ids)
        self.per_product = per_product
        self._index = {pid: i for i, pid in enumerate(self.product_ids)}
        self._texts: list[deque[bytes]] = [deque(maxlen=per_product) for _ in self.product_ids]
        self._last_trade_id = last_trade_id
        self.requests = 0

    def add(self, msgs: list[Msg]) -> None:
        """Keep the batch's ``match`` messages (their route key says the product)."""
        if not self.per_product:
            return
        texts = self._texts
        for key, kind, text in msgs:
            if kind == MATCH:
                texts[key // N_CHANNELS].append(text)

    def held(self, product_id: str) -> int:
        """Matches held for ``product_id``."""
        return len(self._texts[self._index[product_id]])

    def answer(self, path: str, query: str) -> tuple[int, Any, dict[str, str]]:
        """``(status, body, headers)`` for one GET."""
        self.requests += 1
        m = _PATH.match(path)
        p = self._index.get(unquote(m.group(1))) if m else None
        if p is None:
            return 404, {"message": "NotFound"}, {}
        params = parse_qs(query, keep_blank_values=True)
        try:
            limit = _param(params, "limit", PAGE_LIMIT)
            after = _param(params, "after", None)
            before = _param(params, "before", None)
        except ValueError as exc:
            return 400, {"message": str(exc)}, {}
        if not 1 <= limit <= PAGE_LIMIT:
            return 400, {"message": f"Invalid limit: must be between 1 and {PAGE_LIMIT}"}, {}
        texts = self._texts[p]
        if not texts:
            return 200, [], {}
        last = self._last_trade_id(p)
        oldest = last - len(texts) + 1
        if after is not None:
            hi = min(last, after - 1)
            lo = max(oldest, hi - limit + 1)
        elif before is not None:
            lo = max(oldest, before + 1)
            hi = min(last, lo + limit - 1)
        else:
            hi = last
            lo = max(oldest, hi - limit + 1)
        if hi < lo:
            return 200, [], {}
        page = []
        for tid in range(hi, lo - 1, -1):
            msg = orjson.loads(texts[tid - oldest])
            page.append({k: msg[k] for k in _KEEP})
        return 200, page, {"CB-BEFORE": str(hi), "CB-AFTER": str(lo)}


def _param(params: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = params.get(name)
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise ValueError(f"Invalid {name}: {values[-1][:40]!r} is not an integer") from None
