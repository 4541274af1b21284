"""P2's HTTP endpoint: ``/metrics`` as prometheus_client served it, and ``POST /incidents``.

``POST /incidents`` asks the flight recorder for a bundle of its ring as it is now (type ``manual``).
The server runs on its own threads; the ring belongs to the event loop's thread, so a request
crosses over with :class:`LoopHandoff` (``loop.call_soon_threadsafe`` and a future the HTTP thread
waits on, bounded). The answer is 202 with the bundle id: the id is decided on the loop, the
bundle is written later by the incident writer thread.

Who may trigger a dump: on a loopback address anyone local, unless ``P2_CONTROL_TOKEN`` is set;
on any other address only a request with ``Authorization: Bearer <P2_CONTROL_TOKEN>``, and nobody
when no token is set. A request with an ``Origin`` other than the server's own is refused, so a
web page a browser on this machine opens cannot make P2 dump (browsers send ``Origin`` with every
POST). Bodies, reasons, header reads and concurrent connections are bounded; every refusal is one
line of JSON and is counted by reason (``mercurystream_incident_requests_refused_total``).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hmac
import ipaddress
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
from loguru import logger
from prometheus_client.exposition import choose_encoder, gzip_accepted

from mercurystream.p2.flight_recorder import REFUSED_COOLDOWN, REFUSED_EMPTY, DumpRefused
from mercurystream.p2.metrics import P2Metrics

INCIDENTS_PATH = "/incidents"
MAX_BODY_BYTES = 4096
MAX_REASON_CHARS = 200
MAX_CONNECTIONS = 32
"""Requests served at once (a thread each); one more is answered 503 and closed."""
REQUEST_TIMEOUT_S = 10.0
"""How long a connection may take to send its request line, headers and body."""
ANSWER_TIMEOUT_S = 5.0
"""How long an HTTP thread waits for the loop to take a dump request (uvloop can run a
``call_soon_threadsafe`` callback late when it is saturated)."""
DEFAULT_REASON = "requested over HTTP"

REFUSED_BAD_REQUEST = "bad_request"
REFUSED_TOO_LARGE = "too_large"
REFUSED_CROSS_ORIGIN = "cross_origin"
REFUSED_UNAUTHORIZED = "unauthorized"
REFUSED_NO_TOKEN = "no_token"
REFUSED_DISABLED = "disabled"
REFUSED_BACKLOG = "backlog"
REFUSED_UNAVAILABLE = "unavailable"
REFUSED_TIMEOUT = "timeout"
REFUSAL_STATUS = {
    REFUSED_BAD_REQUEST: 400,
    REFUSED_UNAUTHORIZED: 401,
    REFUSED_CROSS_ORIGIN: 403,
    REFUSED_NO_TOKEN: 403,
    REFUSED_COOLDOWN: 409,
    REFUSED_EMPTY: 409,
    REFUSED_TOO_LARGE: 413,
    REFUSED_DISABLED: 503,
    REFUSED_BACKLOG: 503,
    REFUSED_UNAVAILABLE: 503,
    REFUSED_TIMEOUT: 503,
}
"""Every reason a dump request can be refused for, and its HTTP status."""

T = TypeVar("T")

DumpFn = Callable[[str, bool], dict[str, Any]]
"""``(reason, respect_cooldown) -> answer``, callable from any thread; raises :class:`DumpRefused`."""


class LoopHandoff:
    """Runs a function on the event loop's thread for another thread and waits for its result.

    The function runs as a loop callback, so never in the middle of a task's step: a consumer's
    synchronous ``handle`` is never interrupted by it. A request the loop has not started within
    ``timeout_s`` is cancelled (it will not run) and refused with ``timeout``.
    """

    def __init__(self, loop: Any, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self.loop = loop
        self.timeout_s = timeout_s

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting thread, which raises it
                fut.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:
            raise DumpRefused(REFUSED_UNAVAILABLE, "P2's event loop is not running") from None
        try:
            return fut.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            if fut.cancel():
                raise DumpRefused(REFUSED_TIMEOUT, f"P2 did not take the request within {self.timeout_s:g} s") from None
        return fut.result(self.timeout_s)  # it started just as the wait ended; it is short and synchronous


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def own_origins(host: str, port: int) -> frozenset[str]:
    """The ``Origin`` values a page served by this server would send (it serves none, but a same-origin
    check must not refuse its own origin)."""
    names = {host.strip("[]")}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "::1"}
    names -= {"0.0.0.0", "::", ""}
    return frozenset(f"http://[{n}]:{port}" if ":" in n else f"http://{n}:{port}" for n in names)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_dump_request(query: str, body: bytes) -> tuple[str, bool]:
    """``(reason, respect_cooldown)`` from the query string and an optional JSON object body.

    Raises ``ValueError`` with a one-line reason for anything else: unknown or repeated fields, a
    reason that is not a printable string of at most :data:`MAX_REASON_CHARS`, a flag that is not a boolean.
    """
    fields: dict[str, Any] = {}
    if query:
        try:
            parsed = parse_qs(query, keep_blank_values=True, strict_parsing=True, max_num_fields=8)
        except ValueError:
            raise ValueError("the query string is not name=value pairs (at most 8)") from None
        for key, values in parsed.items():
            if len(values) > 1:
                raise ValueError(f"{key!r} is given more than once")
            fields[key] = _query_value(key, values[0])
    if body.strip():
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("the body is not JSON") from None
        if not isinstance(obj, dict):
            raise ValueError("the body must be a JSON object")
        for key, value in obj.items():
            if key in fields:
                raise ValueError(f"{key!r} is given both in the query and in the body")
            fields[key] = value
    unknown = sorted(set(fields) - {"reason", "respect_cooldown"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0][:40]!r}; expected reason, respect_cooldown")
    reason = fields.get("reason", DEFAULT_REASON)
    if not isinstance(reason, str):
        raise ValueError("reason must be a string")
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise ValueError(f"reason must be 1 to {MAX_REASON_CHARS} printable characters")
    respect = fields.get("respect_cooldown", False)
    if not isinstance(respect, bool):
        raise ValueError("respect_cooldown must be true or false")
    return reason, respect


def _query_value(key: str, value: str) -> Any:
    if key != "respect_cooldown":
        return value
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("respect_cooldown must be true or false")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2 * MAX_CONNECTIONS

    def __init__(self, addr: tuple[str, int], family: int, control: ControlServer) -> None:
        self.address_family = family
        self.control = control
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = b'{"error":"too many requests at once"}'
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A log line instead of socketserver's traceback on stderr (a client that hung up mid-answer)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.debug(f"http {client_address[0]}: connection dropped: {exc}")
        else:
            logger.opt(exception=exc).error(f"http {client_address[0]}: request failed")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "mercury-p2"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(f"http {self.address_string()}: {format % args}")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server raises itself (a bad request line, headers too long) as one line of JSON."""
        self.close_connection = True
        self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def _send(self, code: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else orjson.dumps(body) + b"\n"
        self.send_response(code)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _path(self) -> tuple[str, str]:
        path, _, query = self.path.partition("?")
        return path, query

    def do_GET(self) -> None:
        path, query = self._path()
        if path == INCIDENTS_PATH:
            self._send(405, {"error": "use POST to request an incident dump"}, {"Allow": "OPTIONS, POST"})
        elif path == "/favicon.ico":
            self._send(200, b"", {"Content-Type": "text/plain"})
        else:
            self._metrics(query)

    do_HEAD = do_GET

    def _metrics(self, query: str) -> None:
        """What prometheus_client's own server answers on any path: the format the ``Accept`` header
        asks for, ``name[]`` filters, gzip when accepted."""
        try:
            params = parse_qs(query)
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            registry = self.server.control.registry
            if "name[]" in params:
                registry = registry.restricted_registry(params["name[]"])
            output = encoder(registry)
        except Exception:
            logger.exception("metrics: collection failed")
            self._send(500, {"error": "metrics collection failed; P2's log says why"})
            return
        headers = {"Content-Type": content_type}
        if gzip_accepted(self.headers.get("Accept-Encoding")):
            output = gzip.compress(output)
            headers["Content-Encoding"] = "gzip"
        self._send(200, output, headers)

    def do_OPTIONS(self) -> None:
        path, _ = self._path()
        allow = "OPTIONS, POST" if path == INCIDENTS_PATH else "OPTIONS, GET"
        self._send(200, b"", {"Allow": allow, "Content-Type": "text/plain"})

    def do_POST(self) -> None:
        path, query = self._path()
        if path != INCIDENTS_PATH:
            self._send(405, {"error": f"POST only to {INCIDENTS_PATH}"}, {"Allow": "OPTIONS, GET"})
            return
        control = self.server.control
        try:
            self._check_caller(control)
            body = self._body()
            try:
                reason, respect = parse_dump_request(query, body)
            except ValueError as exc:
                raise DumpRefused(REFUSED_BAD_REQUEST, str(exc)) from None
            answer = control.dump(reason, respect)
        except DumpRefused as exc:
            self._refuse(control, exc)
            return
        except Exception:
            logger.exception(f"http {self.address_string()}: incident dump failed")
            self._send(500, {"error": "the dump failed; P2's log says why"})
            return
        logger.info(f"http {self.address_string()}: incident {answer.get('incident_id')} dump accepted: {reason!r}")
        self._send(202, answer)

    def _check_caller(self, control: ControlServer) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin not in control.origins:
            raise DumpRefused(REFUSED_CROSS_ORIGIN, f"cross-origin requests are refused (Origin {origin[:100]!r})")
        token = control.token
        if token is None:
            if not control.loopback:
                raise DumpRefused(
                    REFUSED_NO_TOKEN, "P2 listens beyond loopback and P2_CONTROL_TOKEN is not set: dumps are off"
                )
            return
        given = self.headers.get("Authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            raise DumpRefused(REFUSED_UNAUTHORIZED, "missing or wrong Authorization: Bearer token")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise DumpRefused(REFUSED_BAD_REQUEST, "send the body with a Content-Length, not chunked")
        length_header = self.headers.get("Content-Length", "0")
        try:
            length = int(length_header)
        except ValueError:
            raise DumpRefused(REFUSED_BAD_REQUEST, "Content-Length is not a number") from None
        if length < 0:
            raise DumpRefused(REFUSED_BAD_REQUEST, "Content-Length is negative")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise DumpRefused(REFUSED_TOO_LARGE, f"the body is {length} bytes; at most {MAX_BODY_BYTES}")
        try:
            body = self.rfile.read(length)
        except OSError:
            raise DumpRefused(REFUSED_BAD_REQUEST, "the body did not arrive in time") from None
        if len(body) != length:
            raise DumpRefused(REFUSED_BAD_REQUEST, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _refuse(self, control: ControlServer, exc: DumpRefused) -> None:
        control.refused(exc.reason)
        status = REFUSAL_STATUS.get(exc.reason, 400)
        logger.warning(f"http {self.address_string()}: incident dump refused ({exc.reason}): {exc}")
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        self._send(status, {"error": str(exc), "refused": exc.reason}, headers)

    def _not_allowed(self) -> None:
        path, _ = self._path()
        allow = "OPTIONS, POST" if path == INCIDENTS_PATH else "OPTIONS, GET"
        self._send(405, {"error": f"{self.command} is not allowed here"}, {"Allow": allow})

    do_PUT = do_DELETE = do_PATCH = _not_allowed


class ControlServer:
    """The HTTP server on P2's metrics port: ``/metrics`` (any GET path, as before) and ``POST /incidents``.

    ``dump(reason, respect_cooldown)`` is called on an HTTP thread; it must hand the request to
    the loop itself (:class:`LoopHandoff`) and return the JSON answer, or raise :class:`DumpRefused`.
    """

    def __init__(self, host: str, port: int, metrics: P2Metrics, dump: DumpFn, token: str | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.metrics = metrics
        self.registry = metrics.registry
        self.dump = dump
        self.token = token
        self.loopback = is_loopback(host)
        self.origins: frozenset[str] = frozenset()
        self._refused = {r: metrics.incident_requests_refused_total.labels(reason=r) for r in REFUSAL_STATUS}
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def refused(self, reason: str) -> None:
        counter = self._refused.get(reason)
        if counter is None:
            counter = self.metrics.incident_requests_refused_total.labels(reason=reason)
        counter.inc()

    def start(self) -> None:
        """Bind (``OSError`` if the port is taken) and serve on a daemon thread."""
        infos = socket.getaddrinfo(self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        self._httpd = _Server((sockaddr[0], self.requested_port), family, self)
        self.port = self._httpd.server_address[1]
        self.origins = own_origins(self.host, self.port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="p2-http", daemon=True)
        self._thread.start()
        url = f"http://{self.host}:{self.port}{INCIDENTS_PATH}"
        if self.token is not None:
            logger.info(f"POST {url} dumps the flight recorder; it needs Authorization: Bearer $P2_CONTROL_TOKEN")
        elif self.loopback:
            logger.info(f"POST {url} dumps the flight recorder (loopback only, no token)")
        else:
            logger.warning(
                f"POST {url} is refused (403): {self.host} is not a loopback address and P2_CONTROL_TOKEN is not set"
            )

    def stop(self) -> None:
        """Stop serving and close the socket (blocks until the serving loop has ended)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
