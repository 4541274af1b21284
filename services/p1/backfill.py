"""Gap backfill: the trade ids P1 knows were lost, fetched from Coinbase's public REST trades history.

``GET /products/{product_id}/trades?after=<id>&limit=<n>`` returns a product's trades newest first;
``after`` is a cursor that asks for the page of trades *older* than that trade id, and the response's
``CB-AFTER`` header is the cursor of the next older page (``CB-BEFORE`` the newer one). Each trade
is ``{"time", "trade_id", "price", "size", "side"}`` with ``side`` the maker order's side, as on a
``match``. Public endpoints allow 10 requests per second per IP, up to 15 in bursts; over it the
answer is ``429``. Errors are a JSON object with a ``message``. (Coinbase Exchange REST docs: "Get
product trades", "Pagination", "Rate Limits"; docs.cdp.coinbase.com/exchange/rest-api.)

:class:`TokenBucket` and :class:`BackfillPlanner` are sans-I/O (the rate limit; the queue of gaps,
which request to send next, what a page recovered); :func:`http_get` is a minimal HTTP/1.1 GET;
:class:`Backfiller` is the asyncio shell with start/stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from loguru import logger

from mercurystream.p1.gaps import Gap
from mercurystream.shared.logger import LogSampler

PAGE_LIMIT = 1000
"""The most trades one request may ask for (the docs' maximum and default)."""
PUBLIC_RATE = 10.0
PUBLIC_BURST = 15.0
MAX_BODY_BYTES = 4 << 20
"""A response body over this is refused (a full page of 1000 trades is about 130 kB)."""
OUTCOMES = ("requested", "recovered", "unrecoverable")
REQUEST_RESULTS = ("ok", "rate_limited", "not_found", "error")
LIVE_WS = "wss://ws-feed.exchange.coinbase.com"
LIVE_REST = "https://api.exchange.coinbase.com"
SANDBOX_WS = "wss://ws-feed-public.sandbox.exchange.coinbase.com"
SANDBOX_REST = "https://api-public.sandbox.exchange.coinbase.com"


def rest_url_for(ws_url: str) -> str:
    """The REST base that goes with a feed URL: Coinbase's own for its feeds, else the same host and port.

    ``mercury-exchange`` serves the trades endpoint on its WebSocket port, so a simulator's
    ``ws://127.0.0.1:8765`` gives ``http://127.0.0.1:8765``.
    """
    base = ws_url.rstrip("/")
    if base == LIVE_WS:
        return LIVE_REST
    if base == SANDBOX_WS:
        return SANDBOX_REST
    parts = urlsplit(base)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; one request takes one token."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: take it now with :meth:`take`)."""
        self._fill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> bool:
        self._fill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def _fill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now


class _Job:
    __slots__ = ("attempts", "cursor", "found", "gap", "lo", "pages")

    def __init__(self, gap: Gap, max_ids: int) -> None:
        self.gap = gap
        self.lo = max(gap.first, gap.last - max_ids + 1)
        """The oldest id fetched: a gap wider than ``max_ids`` is fetched from its newest end."""
        self.cursor = gap.last + 1
        self.found: set[int] = set()
        self.pages = 0
        self.attempts = 0


class Outcome:
    """One gap's backfill, finished: ``recovered`` ids forwarded, ``unrecoverable`` the rest."""

    __slots__ = ("gap", "recovered", "unrecoverable")

    def __init__(self, gap: Gap, recovered: int) -> None:
        self.gap = gap
        self.recovered = recovered
        self.unrecoverable = gap.size - recovered

    def __repr__(self) -> str:
        return f"Outcome({self.gap}, recovered={self.recovered}, unrecoverable={self.unrecoverable})"


class BackfillPlanner:
    """The queue of gaps to fetch and the one in progress, without I/O.

    :meth:`submit` queues a gap (refused when ``max_queue`` gaps wait: the gap is then finished at once,
    all unrecoverable; queued entries are fixed-size, so the count bounds the bytes too).
    :meth:`next_request` says what to ask for; :meth:`on_page` and :meth:`on_error` take the answer and
    return the recovered trades as ``match`` messages (marked ``backfilled``) and, when the gap is
    done, its :class:`Outcome`. A gap is done when a page reaches its oldest id, when a page comes
    back empty or without a cursor, after ``max_pages`` pages, or after ``max_attempts`` failed
    requests in a row; a ``404`` (unknown product) finishes it at once.
    """

    def __init__(
        self, *, max_queue: int = 256, max_ids: int = 10_000, max_pages: int = 20, max_attempts: int = 3
    ) -> None:
        self.max_queue = max_queue
        self.max_ids = max_ids
        self.max_pages = max_pages
        self.max_attempts = max_attempts
        self.queue: deque[Gap] = deque()
        self.job: _Job | None = None
        self.counts = dict.fromkeys(OUTCOMES, 0)
        """Trade ids: asked for (every id of every gap submitted), recovered, unrecoverable."""

    def __len__(self) -> int:
        return len(self.queue) + (self.job is not None)

    def submit(self, gap: Gap) -> Outcome | None:
        """Queue a gap; returns its outcome (nothing recovered) when the queue is full."""
        self.counts["requested"] += gap.size
        if len(self.queue) >= self.max_queue:
            return self._done_gap(gap, 0)
        self.queue.append(gap)
        return None

    def next_request(self) -> tuple[str, str] | None:
        """``(product_id, path and query)`` of the next request, or ``None`` when nothing is waiting."""
        job = self.job
        if job is None:
            if not self.queue:
                return None
            job = self.job = _Job(self.queue.popleft(), self.max_ids)
        limit = min(PAGE_LIMIT, job.cursor - job.lo)
        pid = job.gap.product_id
        return pid, f"/products/{quote(pid, safe='')}/trades?after={job.cursor}&limit={limit}"

    def on_page(self, trades: object, cb_after: str | None) -> tuple[list[dict[str, Any]], Outcome | None]:
        """A ``200`` page: the missing trades it holds, and the outcome if the gap is now done."""
        job = self.job
        assert job is not None
        job.attempts = 0
        job.pages += 1
        pid = job.gap.product_id
        lo, hi = job.lo, job.gap.last
        out: list[dict[str, Any]] = []
        oldest = None
        for t in trades if isinstance(trades, list) else ():
            tid = t.get("trade_id") if isinstance(t, dict) else None
            if type(tid) is not int:
                continue
            oldest = tid if oldest is None or tid < oldest else oldest
            if lo <= tid <= hi and tid not in job.found:
                job.found.add(tid)
                out.append(_match(pid, t))
        out.reverse()  # oldest first, as they would have arrived
        cursor = _int(cb_after)
        if cursor is None and oldest is not None:
            cursor = oldest
        done = (
            oldest is None
            or oldest <= lo
            or cursor is None
            or cursor >= job.cursor
            or len(job.found) >= hi - lo + 1
            or job.pages >= self.max_pages
        )
        if done:
            return out, self._finish()
        job.cursor = cursor  # type: ignore[assignment]
        return out, None

    def on_error(self, status: int) -> Outcome | None:
        """A failed request (``status`` 0: no HTTP answer); the outcome if the gap is given up."""
        job = self.job
        assert job is not None
        if status == 404 or status == 400:
            return self._finish()
        if status != 429:
            job.attempts += 1
            if job.attempts >= self.max_attempts:
                return self._finish()
        return None

    def _finish(self) -> Outcome:
        job = self.job
        assert job is not None
        self.job = None
        return self._done_gap(job.gap, len(job.found))

    def _done_gap(self, gap: Gap, recovered: int) -> Outcome:
        outcome = Outcome(gap, recovered)
        self.counts["recovered"] += outcome.recovered
        self.counts["unrecoverable"] += outcome.unrecoverable
        return outcome


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _match(product_id: str, t: dict[str, Any]) -> dict[str, Any]:
    """A REST trade as the ``match`` message the feed would have sent (P1's pipeline validates it)."""
    return {
        "type": "match",
        "trade_id": t.get("trade_id"),
        "side": t.get("side"),
        "size": t.get("size"),
        "price": t.get("price"),
        "product_id": product_id,
        "time": t.get("time"),
        "backfilled": True,
    }


class HttpError(Exception):
    """No usable HTTP answer (connection, TLS, timeout, a malformed or oversized response)."""


async def http_get(
    base_url: str, path: str, *, timeout_s: float = 10.0, max_body: int = MAX_BODY_BYTES
) -> tuple[int, dict[str, str], bytes]:
    """One ``GET`` over a fresh connection (``Connection: close``): status, lower-cased headers, body.

    Any failure is an :class:`HttpError`, a URL whose port or host cannot be used included
    (``ValueError``, ``UnicodeError``): the caller counts it and goes on.
    """
    try:
        parts = urlsplit(base_url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        ctx = ssl.create_default_context() if secure else None
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: mercurystream-p1\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        ).encode()
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, limit=1 << 16)
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers = _parse_head(head)
                body = await _read_body(reader, headers, max_body)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except HttpError:
        raise
    except (
        OSError,
        TimeoutError,
        ValueError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ssl.SSLError,
    ) as exc:
        raise HttpError(f"{type(exc).__name__}: {exc}") from None
    return status, headers, body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise HttpError(f"not an HTTP status line: {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


_HEX_DIGITS = b"0123456789abcdefABCDEF"


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], max_body: int) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            digits = size_line.split(b";")[0].strip()
            # Hex digits only: int(..., 16) also takes "-5", "+5", "0x5" and "5_0", and a negative size
            # made readexactly raise ValueError, which used to end the backfill task.
            if not digits or digits.strip(_HEX_DIGITS):
                raise HttpError(f"malformed chunk size {digits[:20]!r}")
            size = int(digits, 16)
            if size == 0:
                return b"".join(chunks)
            total += size
            if total > max_body:
                raise HttpError(f"response body over {max_body} bytes")
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError("a chunk not followed by CRLF")
    length = headers.get("content-length")
    if length is not None:
        n = _int(length)
        if n is None or n < 0 or n > max_body:
            raise HttpError(f"response body of {length} bytes refused (limit {max_body})")
        return await reader.readexactly(n)
    body = await reader.read(max_body + 1)
    if len(body) > max_body:
        raise HttpError(f"response body over {max_body} bytes")
    return body


OnTrades = Callable[[list[dict[str, Any]]], None]
OnOutcome = Callable[[Outcome], None]


class Backfiller:
    """The shell: fetch each queued gap's trades within the rate limit, hand them and the outcome on.

    ``on_trades`` gets each page's recovered trades (``match`` messages marked ``backfilled``) as soon
    as the page arrives; ``on_outcome`` gets each finished gap, after its last trades. A ``429``
    waits a second (the bucket's refill) before the same request is sent again.
    """

    def __init__(
        self,
        base_url: str,
        on_trades: OnTrades,
        on_outcome: OnOutcome,
        *,
        rate: float = PUBLIC_RATE,
        burst: float = PUBLIC_BURST,
        planner: BackfillPlanner | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        """``on_request`` is told each request's result (one of :data:`REQUEST_RESULTS`), for the metrics."""
        self.base_url = base_url.rstrip("/")
        self.on_trades = on_trades
        self.on_outcome = on_outcome
        self.planner = planner if planner is not None else BackfillPlanner()  # an empty planner is falsy (__len__)
        self.clock = clock
        self.bucket = TokenBucket(rate, burst, clock())
        self.timeout_s = timeout_s
        self.requests = dict.fromkeys(REQUEST_RESULTS, 0)
        self._on_request = on_request
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sampler = LogSampler()

    def submit(self, gap: Gap) -> None:
        outcome = self.planner.submit(gap)
        if outcome is not None:
            self._sampler.warning("queue_full", "backfill: queue full; {} ids of {} unrecoverable", gap.size, gap)
            self._emit(outcome)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="p1-backfill")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        planner = self.planner
        while True:
            request = planner.next_request()
            if request is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self.bucket.wait(self.clock())
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.bucket.take(self.clock())
            _, path = request
            try:
                status, headers, body = await http_get(self.base_url, path, timeout_s=self.timeout_s)
            except Exception as exc:  # one request never ends the loop: an error outcome like any failed GET
                self._count("error")
                why = exc if isinstance(exc, HttpError) else f"{type(exc).__name__}: {exc}"
                self._sampler.warning("http", "backfill: GET {}{} failed: {}", self.base_url, path, why)
                self._emit(planner.on_error(0))
                await asyncio.sleep(1.0)
                continue
            if status == 200:
                try:
                    page = orjson.loads(body)
                except orjson.JSONDecodeError:
                    self._count("error")
                    self._sampler.warning("json", "backfill: {} answered with a body that is not JSON", path)
                    self._emit(planner.on_error(200))
                    continue
                self._count("ok")
                trades, outcome = planner.on_page(page, headers.get("cb-after"))
                if trades:
                    self.on_trades(trades)
                self._emit(outcome)
                continue
            self._count("rate_limited" if status == 429 else "not_found" if status == 404 else "error")
            self._sampler.warning("status", "backfill: GET {} answered {}: {!r}", path, status, body[:200])
            self._emit(planner.on_error(status))
            if status == 429 or status >= 500:
                await asyncio.sleep(1.0)

    def _count(self, result: str) -> None:
        self.requests[result] += 1
        if self._on_request is not None:
            self._on_request(result)

    def _emit(self, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        if self._sampler.should_log("outcome"):
            logger.info(
                "backfill: {} {}..{}: {} recovered, {} unrecoverable",
                outcome.gap.product_id,
                outcome.gap.first,
                outcome.gap.last,
                outcome.recovered,
                outcome.unrecoverable,
            )
        self.on_outcome(outcome)
