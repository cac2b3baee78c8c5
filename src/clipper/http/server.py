"""HTTP/1.1 for both ports: an ``asyncio.Protocol`` on httptools, no ASGI.

The query port answers one small JSON request after another, thousands a
second, and the ASGI layer (a scope dict, receive/send message dicts, checks
on every message, a task per request behind them) cost as much as the rest of
the frontend (docs/profile.md). This server parses with httptools (llhttp,
Node's parser), hands a handler a whole :class:`Request` (body read, limits
checked) and writes its :class:`Response` in one ``write``: answered at once,
from callbacks (a :class:`Later`: no task per request) or by a coroutine. It
owns what a server must:

- keep-alive (HTTP/1.1 by default, HTTP/1.0 when asked) and pipelining:
  requests on a connection are answered one at a time, in order; with
  ``max_pipelined`` waiting, that client is no longer read (what one read
  already holds, at most the transport's read size, is still parsed);
- flow control: a client that does not read its answers is not read, and
  its queued requests wait, until it does (or for ``header_timeout_s``);
- ``Expect: 100-continue``, chunked request bodies, ``HEAD``;
- limits: a body over ``max_body_bytes`` is a 413 (its bytes are read and
  dropped, so the connection survives; with ``Expect`` it is never sent and
  the connection closes), a head over ``max_header_bytes`` a 431, anything
  httptools cannot parse a 400; each answer in the error page's JSON;
- deadlines, not idle timeouts: a request's head must arrive within
  ``header_timeout_s`` of its first byte and its body within
  ``body_timeout_s`` of its head (else a 408, then close: one byte a second
  keeps nothing open); a connection idle between requests closes after
  ``keep_alive_s``. One sweep every half second enforces them, never sooner
  (``sweep(now)``; every time is read from ``clock``, which a test may fake);
- budgets: at most ``max_connections`` connections are served (more wait,
  accepted but unread, until one closes: nothing is reset); a connection
  holds at most about ``max_body_bytes`` of request bodies (pipelined ones
  included) and all connections together ``max_inflight_bytes``; past either,
  that client is not read until answers free the bytes;
- a ``guard`` (the Host/Origin check) that may refuse a request before its
  handler runs;
- a handler's exception is a 500 naming only its type, never a traceback;
- TLS through the event loop's transport; shutdown that answers what is in
  flight (with ``connection: close``) and closes the rest;
- streamed bodies, for the few routes that take more than a JSON body (a model
  artifact): a ``stream`` hook sees each request's head first and may take its
  body as it arrives (a :class:`Stream`: its handler reads a :class:`Body`,
  ``async for chunk in body``). Such a body is outside ``max_body_bytes`` and the
  byte budgets: it has its own ``max_bytes`` (a 413 from ``Content-Length``
  before a byte is read), is never held whole (at most ``Body.HIGH_WATER`` bytes
  wait for the handler; past that the client is not read), and has a minimum
  rate over a window instead of a total deadline (else a 408). A refusal before
  or during the body (the hook's own answer, a 413, a 408) is written at once,
  then the connection half-closes and drops what still arrives for a moment (a
  lingering close), so the client reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson

log = logging.getLogger("clipper.http")

JSON = b"application/json"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}

# How a response ends its connection (``_Connection.keep``).
_CLOSE, _KEEP, _KEEP_10 = 0, 1, 2  # _KEEP_10: HTTP/1.0 keep-alive, said in a header


@dataclass(slots=True)
class Request:
    """One request, its body read in full."""

    method: str
    path: str  # percent-decoded, without the query string
    query: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in order
    body: bytes = b""
    host: bytes | None = None  # the Host header, as sent
    origin: bytes | None = None  # the Origin header, as sent

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class Later:
    """A response still being computed: once ``future`` is done, the server
    writes ``finish(future)``. What a handler returns to answer from callbacks,
    with no task per request (the query port's hot path)."""

    future: asyncio.Future[Any]
    finish: Callable[[asyncio.Future[Any]], Response]


# A handler answers now (a Response), from callbacks (a Later), or from a
# coroutine (any other awaitable; the server runs it as a task).
Handler = Callable[[Request], Response | Later | Awaitable[Response]]
ErrorPage = Callable[[str, int, str, str], Response]  # (path, status, error, cause)
# Looks at a request before its handler: None lets it through, else (status, cause).
Guard = Callable[[Request], tuple[int, str] | None]


class BodyAborted(Exception):
    """What a :class:`Body` raises when the body will not arrive whole: too large
    (413), too slow (408), or the client left. The server answers it (the handler
    need only clean up and let it pass)."""

    def __init__(self, status: int, error: str, cause: str) -> None:
        super().__init__(cause)
        self.status, self.error, self.cause = status, error, cause


class Body:
    """A streamed request body, as it arrives: ``async for chunk in body``.

    Chunks wait here for the handler; with ``HIGH_WATER`` bytes waiting the client
    is not read until the handler has taken them (so a slow disk slows the client,
    never grows memory). ``declared`` is the ``Content-Length``, if any.
    """

    HIGH_WATER = 4 * 1024 * 1024

    def __init__(self, conn: _Connection | None, declared: int | None) -> None:
        self._conn = conn
        self.declared = declared
        self.received = 0  # bytes that arrived (taken or waiting)
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self.done = False
        self.error: BodyAborted | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        return self._queued >= self.HIGH_WATER

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        self._chunks.append(data)
        self._queued += len(data)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def abort(self, error: BodyAborted) -> None:
        if self.error is None and not self.done:
            self.error = error
            self._chunks.clear()
            self._queued = 0
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.error is not None:
                raise self.error
            if self._chunks:
                break
            if self.done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._queued = 0
        if self._conn is not None:
            self._conn.stream_drained()
        return data


@dataclass(slots=True)
class Stream:
    """The ``stream`` hook's word for a request whose body its handler takes as it
    arrives: ``handler(request, body)`` answers; the body may hold at most
    ``max_bytes`` (413) and must arrive at ``min_rate`` bytes a second or more,
    measured over each ``rate_window_s`` while the server reads (408)."""

    handler: Callable[[Request, Body], Awaitable[Response]]
    max_bytes: int
    min_rate: int = 64 * 1024
    rate_window_s: float = 10.0


# Sees each request's head: None (an ordinary request), a Response (refused now,
# before its body is read), or a Stream (its handler takes the body as it arrives).
StreamHook = Callable[[Request], "Stream | Response | None"]


@dataclass(slots=True)
class _Streaming:
    """A streamed request, waiting in a connection's pipeline for its turn."""

    request: Request
    body: Body
    stream: Stream


LINGER_S = 2.0  # after refusing a body: how long what still arrives is read and dropped
LINGER_BYTES = 4 * 1024 * 1024  # ... and how much of it


def json_response(status: int, obj: object) -> Response:
    return Response(status, orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))


def json_error(path: str, status: int, error: str, cause: str) -> Response:
    """Clipper's error shape: ``{"error": short, "cause": detail}``."""
    return json_response(status, {"error": error, "cause": cause})


_date = [0, b""]  # (second, the Date header's value), made once a second


def http_date() -> bytes:
    """The current time as an HTTP ``Date`` (RFC 9110), cached for the second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, email.utils.formatdate(now, usegmt=True).encode()
    return cast(bytes, _date[1])


def encode(response: Response, keep: int, head: bool) -> bytes:
    """The bytes of ``response``; ``head``: without its body (a HEAD request)."""
    body = response.body
    status = response.status
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    parts = [line, b"date: ", http_date(), b"\r\ncontent-type: ", response.content_type]
    parts.append(b"\r\ncontent-length: ")
    parts.append(str(len(body)).encode())
    parts.append(b"\r\n")
    for name, value in response.headers:
        parts += (name, b": ", value, b"\r\n")
    if keep == _CLOSE:
        parts.append(b"connection: close\r\n")
    elif keep == _KEEP_10:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)


class HTTPServer:
    """An HTTP/1.1 server that calls ``handler`` for each request."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        error_page: ErrorPage = json_error,
        max_header_bytes: int = 65536,
        keep_alive_s: float = 5.0,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 60.0,
        max_pipelined: int = 32,
        max_connections: int = 1024,
        max_inflight_bytes: int = 256 * 1024 * 1024,
        guard: Guard | None = None,
        name: str = "HTTP",
        clock: Callable[[], float] = time.monotonic,
        stream: StreamHook | None = None,
    ) -> None:
        self.handler = handler
        self.stream = stream  # routes whose bodies are streamed (none on the query port)
        # Every time the server reads (activity, deadlines, the sweep): a test
        # may pass a fake one and call sweep() itself instead of waiting.
        self.clock = clock
        self.error_page = error_page
        self.guard = guard
        self.name = name  # which port, for log lines
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.keep_alive_s = keep_alive_s
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_pipelined = max_pipelined
        self.max_connections = max(1, max_connections)
        # Connections past the cap wait, unread, up to this many; beyond, they close.
        self.max_waiting = 8 * self.max_connections
        # One connection may hold a whole body and a little more (pipelined
        # requests); all of them together at least two whole bodies.
        self.connection_budget = max_body_bytes + 65536
        self.max_inflight_bytes = max(max_inflight_bytes, 2 * self.connection_budget)
        self.held_bytes = 0  # request bodies read and not yet answered, all connections
        self.starved: set[_Connection] = set()  # not read until bytes are freed
        self.open: set[_Connection] = set()
        self.waiting: deque[_Connection] = deque()  # accepted past the cap, not yet served
        self._cap_logged_at = float("-inf")
        self.port = 0
        self.shutting_down = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        return len(self.open)

    def admit(self, conn: _Connection) -> bool:
        """A new connection: served now (True), or left waiting past the cap."""
        if len(self.open) < self.max_connections and not self.waiting:
            self.open.add(conn)
            return True
        if len(self.waiting) >= self.max_waiting:
            log.warning(
                "%s port: %d connections open and %d waiting: closing a new one",
                self.name,
                len(self.open),
                len(self.waiting),
            )
            return False
        self.waiting.append(conn)
        now = self.clock()
        if now - self._cap_logged_at > 10:
            self._cap_logged_at = now
            log.warning(
                "%s port: %d connections open (the cap, max_connections): new ones wait",
                self.name,
                len(self.open),
            )
        return True

    def left(self, conn: _Connection) -> None:
        """A connection closed: free its place and its bytes, let a waiting one in."""
        if conn in self.open:
            self.open.discard(conn)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(conn)
        self.starved.discard(conn)
        conn.answering_bytes = 0  # counted in conn.held, released now
        self.release(conn, conn.held)
        while self.waiting and len(self.open) < self.max_connections:
            nxt = self.waiting.popleft()
            if nxt.transport is not None and not nxt.transport.is_closing():
                self.open.add(nxt)
                nxt.admitted()

    def hold(self, conn: _Connection, size: int) -> None:
        conn.held += size
        self.held_bytes += size

    def release(self, conn: _Connection, size: int) -> None:
        """Bytes of ``conn``'s requests answered or dropped: read the starved again."""
        if size <= 0:
            return
        conn.held -= size
        self.held_bytes -= size
        if self.starved and self.held_bytes < self.max_inflight_bytes:
            for other in list(self.starved):
                if other.held < self.connection_budget:
                    self.starved.discard(other)
                    other._resume_reading()

    def over_budget(self, conn: _Connection) -> bool:
        return conn.held > self.connection_budget or self.held_bytes > self.max_inflight_bytes

    async def start(
        self,
        host: str,
        port: int,
        ssl: ssl.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        """Listen on ``host:port`` (0: any free port, then in ``self.port``);
        ``reuse_port``: share the port with this user's other worker processes
        (``SO_REUSEPORT``: the kernel spreads new connections among them)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            ssl=ssl,
            backlog=2048,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Every tick, the sweep: one timer for all the connections."""
        while True:
            await asyncio.sleep(_TICK_S)
            self.sweep(self.clock())

    def sweep(self, now: float) -> None:
        """Enforce every connection's deadlines and idle timeout as of ``now`` (a
        ``clock()`` reading): answer 408 and close the late, close the idle."""
        for conn in list(self.open):
            conn.tick(now)

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop listening, answer what is in flight, close every connection."""
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.waiting):
            conn.abort()
        for conn in list(self.open):
            conn.close_when_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.open and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in [*self.open, *self.waiting]:
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


_TICK_S = 0.5  # a timeout fires between its time and half a second later


class _Connection(asyncio.Protocol):
    """One client connection: parser callbacks, the pipeline, flow control."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3
            # Answer the first request of a pipeline that ends in "close".
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.clock = server.clock  # bound once: read on every request
        self.active_at = self.clock()  # last bytes in, or an answer out
        self.phase_at = 0.0  # when the head (or the body) being read began
        self.held = 0  # bytes of request bodies read and not yet answered
        self.answering_bytes = 0  # of those, the request being answered
        self.busy = False  # a request is being answered
        self.pending: deque[tuple[Request | Response | _Streaming, int, bool]] = deque()
        self.read_paused = False
        self.write_paused = False
        self.closing = False  # close once the answers owed are written
        # The message being parsed.
        self.in_message = False
        self.in_head = False  # between on_message_begin and on_headers_complete
        self.head_raw = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.origin: bytes | None = None
        self.head_bytes = 0
        self.body: bytes | bytearray = b""  # a chunked body grows in one bytearray
        self.body_bytes = 0
        self.expect_continue = False
        self.rejected = False  # answered already (413/431): drop its body
        self.request: Request | None = None
        # The answer being computed (a task, or a Later's future), held: the
        # event loop references a task only weakly.
        self.answering: asyncio.Future[Any] | None = None
        # A streamed body being read (see Stream), and its rate window.
        self.stream: Body | None = None
        self.stream_spec: Stream | None = None
        self.stream_paused = False  # not read: the handler has HIGH_WATER bytes waiting
        self.window_bytes = 0  # stream.received when the rate window began (at phase_at)
        self.lingering_until = 0.0  # > 0: half-closed, dropping what arrives until then
        self.lingered = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.server.shutting_down or not self.server.admit(self):
            self.transport.close()
        elif self not in self.server.open:  # past the cap: wait, unread
            self.read_paused = True
            self.transport.pause_reading()

    def admitted(self) -> None:
        """Let in from the waiting line: read from now on."""
        self.active_at = self.clock()
        self.read_paused = True
        self._resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.abort(BodyAborted(400, "bad request", "the client closed the connection"))
            self.stream = None
        self.server.left(self)
        self.pending.clear()
        self.parser = None

    def data_received(self, data: bytes) -> None:
        self.active_at = self.clock()
        parser = self.parser
        if parser is None:  # no more requests on this connection
            if self.lingering_until:
                self.lingered += len(data)
                if self.lingered > LINGER_BYTES and self.transport is not None:
                    self.transport.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade (h2c, websocket) is not taken: the request is answered
            # as HTTP/1.1 and the connection closes after it.
            self.parser = None
            if self.in_message:
                self._fail(400, "bad request", "protocol upgrades are not supported")
            else:
                self.closing = True
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._fail(431, "request header fields too large", self._head_limit())
            elif isinstance(exc.__context__, _BadURL):
                self._fail(400, "bad request", "the request target is not a valid URL")
            else:
                log.info("invalid HTTP request: %s", exc)
                self._fail(400, "bad request", f"invalid HTTP request: {exc}")
            return
        if self.in_head:
            # A head that never ends grows inside the parser, unseen by
            # on_header: count what arrives until it is complete.
            self.head_raw += len(data)
            if self.head_raw > self.server.max_header_bytes:
                self._fail(431, "request header fields too large", self._head_limit())
                return
        if self.held and self.server.over_budget(self):
            # Bodies read and not yet answered fill this connection's (or every
            # connection's) budget: read no more from this client until they are.
            self.server.starved.add(self)
            self._pause_reading()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests and
        # answering those queued until it does.
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.active_at = self.clock()
        if not self.busy and self.pending:
            self._start(*self.pending.popleft())
        self._resume_reading()

    def eof_received(self) -> bool | None:
        # The client is done sending: answer what it asked, then close.
        if self.lingering_until:
            return None  # a lingering close: the client has read the answer
        if self.busy or self.pending:
            self.closing = True
            return True  # keep the transport open for the answers
        return None

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.in_head = True
        self.phase_at = self.clock()
        self.head_raw = 0
        self.url = b""
        self.headers = []
        self.host = self.origin = None
        self.head_bytes = 0
        self.body = b""
        self.body_bytes = 0
        self.expect_continue = False
        self.rejected = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.server.max_header_bytes:
            raise _HeadTooLarge  # becomes an HttpParserError in data_received
        name = name.lower()
        if name == b"host":
            self.host = value
        elif name == b"origin":
            self.origin = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.phase_at = self.clock()  # the body's deadline starts now
        parser = self.parser
        if parser is None:  # after a 413 that closes: the rest is not read
            return
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            raise _BadURL from None
        path = url.path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.request = Request(
            parser.get_method().decode("ascii"),
            path,
            url.query or b"",
            self.headers,
            host=self.host,
            origin=self.origin,
        )
        if self.server.stream is not None and self._stream_head(self.request, parser):
            return
        declared = self.request.header(b"content-length")
        limit = self.server.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._too_large(f"request body of {int(declared)} bytes exceeds the limit of {limit}")
            return
        if self.expect_continue and not (self.busy or self.pending):
            assert self.transport is not None
            self.transport.write(CONTINUE)
            self.expect_continue = False  # honoured: the body is on its way

    def on_body(self, body: bytes) -> None:
        if self.stream is not None:
            self._stream_body(body)
            return
        if self.rejected:
            return
        size = len(body)
        self.body_bytes += size
        if self.body_bytes > self.server.max_body_bytes:
            self._too_large(f"request body exceeds the limit of {self.server.max_body_bytes} bytes")
            return
        self.server.hold(self, size)
        if not self.body:
            self.body = body
        elif isinstance(self.body, bytearray):
            self.body += body
        else:
            self.body = bytearray(self.body) + body

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.stream is not None:
            self.stream.finish()
            self.stream = self.stream_spec = None
            return
        request = self.request
        if self.rejected or request is None:
            return
        self.request = None
        body = self.body
        if body:
            request.body = body if isinstance(body, bytes) else bytes(body)
            self.body = b""
        parser = self.parser
        assert parser is not None  # set to None only with self.rejected or no request
        if not parser.should_keep_alive():
            keep = _CLOSE
        elif parser.get_http_version() == "1.0":
            keep = _KEEP_10
        else:
            keep = _KEEP
        self._enqueue(request, keep, request.method == "HEAD")

    # -- streamed bodies -----------------------------------------------------------------

    def _stream_head(self, request: Request, parser: httptools.HttpRequestParser) -> bool:
        """Ask the stream hook about a head: False for an ordinary request; else
        True, the request answered now or queued with its body streamed to come."""
        hook = self.server.stream
        assert hook is not None
        try:
            decision = hook(request)
        except Exception as exc:
            decision = self._internal_error(request, exc)
        if decision is None:
            return False  # an ordinary request: the guard runs once it is read
        guard = self.server.guard
        refused = guard(request) if guard is not None else None
        if refused is not None:  # the Host/Origin guard, before the body too
            decision = self.server.error_page(request.path, refused[0], "forbidden", refused[1])
        self.request = None
        if isinstance(decision, Response):
            self._refuse_body(decision)
            return True
        declared = request.header(b"content-length")
        size = int(declared) if declared is not None and declared.isdigit() else None
        if size is not None and size > decision.max_bytes:
            self._refuse_body(
                self.server.error_page(
                    request.path,
                    413,
                    "request body too large",
                    f"request body of {size} bytes exceeds the limit of {decision.max_bytes}",
                )
            )
            return True
        body = Body(self, size)
        self.stream, self.stream_spec, self.window_bytes = body, decision, 0
        keep = _KEEP if parser.should_keep_alive() else _CLOSE
        if keep == _KEEP and parser.get_http_version() == "1.0":
            keep = _KEEP_10
        if self.expect_continue and not (self.busy or self.pending):
            assert self.transport is not None
            self.transport.write(CONTINUE)
            self.expect_continue = False
        self._enqueue(_Streaming(request, body, decision), keep, False)
        return True

    def _refuse_body(self, page: Response) -> None:
        """Answer a request before its body is read; its body is dropped, then the
        connection closes (lingering: the client reads the answer, not a reset)."""
        self.rejected = True
        self._enqueue(page, _CLOSE, False)

    def _stream_body(self, data: bytes) -> None:
        body, spec = self.stream, self.stream_spec
        assert body is not None and spec is not None
        if body.error is not None:
            return  # refused already: dropped
        if body.received + len(data) > spec.max_bytes:
            body.abort(
                BodyAborted(
                    413,
                    "request body too large",
                    f"request body exceeds the limit of {spec.max_bytes} bytes",
                )
            )
            return
        body.feed(data)
        if body.full:
            self.stream_paused = True
            self._pause_reading()

    def stream_drained(self) -> None:
        """The handler took what waited: read the client again."""
        if self.stream_paused:
            self.stream_paused = False
            self._resume_reading()

    def _stream_rate(self, now: float) -> None:
        """The sweep, for a streamed body being read: at least ``min_rate`` bytes a
        second over each window (the server's own pauses do not count)."""
        body, spec = self.stream, self.stream_spec
        assert body is not None and spec is not None
        elapsed = now - self.phase_at
        if elapsed < spec.rate_window_s or body.error is not None:
            return
        got = body.received - self.window_bytes
        if got < spec.min_rate * elapsed:
            cause = (
                f"the request's body arrived at {got / elapsed:.0f} bytes/s over "
                f"{elapsed:g} s, under the minimum of {spec.min_rate} bytes/s"
            )
            log.info("%s port: %s; closing the connection", self.server.name, cause)
            body.abort(BodyAborted(408, "request timeout", cause))
            self.closing = True
            return
        self.phase_at, self.window_bytes = now, body.received

    def _linger(self) -> None:
        """Close after an answer that leaves a body unread: half-close (the client
        reads the answer and an end of file) and drop what still arrives, for
        ``LINGER_S`` or ``LINGER_BYTES`` at most, then close."""
        transport = self.transport
        assert transport is not None
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        self.lingering_until = self.clock() + LINGER_S
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    # -- answering -----------------------------------------------------------------------

    def _enqueue(self, item: Request | Response | _Streaming, keep: int, head: bool) -> None:
        if not (self.busy or self.pending or self.write_paused):
            self._start(item, keep, head)
            return
        self.pending.append((item, keep, head))
        if len(self.pending) >= self.server.max_pipelined:
            self._pause_reading()

    def _start(self, item: Request | Response | _Streaming, keep: int, head: bool) -> None:
        self.busy = True
        if isinstance(item, Response):
            self._write(item, keep, head)
            return
        if isinstance(item, _Streaming):
            self.answering = asyncio.get_running_loop().create_task(self._answer_stream(item, keep))
            return
        self.answering_bytes = len(item.body)
        # The handler runs after this round of I/O callbacks, not inside it: a
        # read callback stays short, so a replica's result waiting behind it
        # in the same round is taken (and the replica given its next batch)
        # before the bodies just read are parsed.
        asyncio.get_running_loop().call_soon(self._handle, item, keep, head)

    def _handle(self, item: Request, keep: int, head: bool) -> None:
        if self.transport is None or self.transport.is_closing():  # the client left
            self.busy = False
            return
        guard = self.server.guard
        refused = guard(item) if guard is not None else None
        if refused is not None:
            status, cause = refused
            self._write(self.server.error_page(item.path, status, "forbidden", cause), keep, head)
            return
        try:
            result = self.server.handler(item)
        except Exception as exc:
            result = self._internal_error(item, exc)
        if isinstance(result, Response):
            self._write(result, keep, head)
        elif isinstance(result, Later):
            self.answering = result.future  # held: nothing else may hold it
            result.future.add_done_callback(
                lambda future: self._finish(item, result.finish, future, keep, head)
            )
        else:
            self.answering = asyncio.get_running_loop().create_task(
                self._answer(item, result, keep, head)
            )

    def _finish(
        self,
        request: Request,
        finish: Callable[[asyncio.Future[Any]], Response],
        future: asyncio.Future[Any],
        keep: int,
        head: bool,
    ) -> None:
        try:
            response = finish(future)
        except (Exception, asyncio.CancelledError) as exc:
            response = self._internal_error(request, exc)
        self._write(response, keep, head)

    async def _answer(
        self, request: Request, answer: Awaitable[Response], keep: int, head: bool
    ) -> None:
        try:
            response = await answer
        except Exception as exc:
            response = self._internal_error(request, exc)
        self._write(response, keep, head)

    async def _answer_stream(self, item: _Streaming, keep: int) -> None:
        """Run a streamed request's handler; a refused body is answered here."""
        body = item.body
        try:
            if self.transport is None or self.transport.is_closing():
                body.abort(BodyAborted(400, "bad request", "the client closed the connection"))
                self.busy = False
                return
            response = await item.stream.handler(item.request, body)
        except BodyAborted as exc:
            response = self.server.error_page(item.request.path, exc.status, exc.error, exc.cause)
        except Exception as exc:
            response = self._internal_error(item.request, exc)
        if body.error is not None:  # refused while the handler ran: that is the answer
            error = body.error
            response = self.server.error_page(
                item.request.path, error.status, error.error, error.cause
            )
        if not body.done:  # answered before the body was read whole: drop the rest, close
            body.abort(BodyAborted(400, "bad request", "answered before the body arrived"))
            keep = _CLOSE
        if self.transport is None:
            self.busy = False
            return
        self._write(response, keep, False)

    def _internal_error(self, request: Request, exc: BaseException) -> Response:
        """A 500 naming only the exception's type; the traceback goes to the log."""
        log.error("internal error on %s %s", request.method, request.path, exc_info=exc)
        return self.server.error_page(request.path, 500, "internal error", type(exc).__name__)

    def _write(self, response: Response, keep: int, head: bool) -> None:
        transport = self.transport
        assert transport is not None
        if self.answering_bytes:  # the request's body is answered: its bytes are free
            self.server.release(self, self.answering_bytes)
            self.answering_bytes = 0
        if transport.is_closing():  # the client left
            self.busy = False
            return
        if self.server.shutting_down or (self.closing and not self.pending):
            keep = _CLOSE
        transport.write(encode(response, keep, head))
        self.active_at = self.clock()
        if keep == _CLOSE:
            self.parser = None
            self.pending.clear()
            if self.in_message and (self.rejected or self.stream is not None):
                # A body still arriving, refused: let the client read this answer.
                self.in_message = False
                self.stream = self.stream_spec = None
                self._linger()
            else:
                transport.close()
            self.busy = False
            return
        self.busy = False
        if self.pending and not self.write_paused:
            self._start(*self.pending.popleft())
        self._resume_reading()

    def _too_large(self, cause: str) -> None:
        """A 413 for the message being read: in turn, before its body is read.

        Without ``Expect: 100-continue`` the client sends the body anyway: it
        is read and dropped, and the connection goes on. With it, the client
        waits for our word: the connection closes after the 413.
        """
        self.rejected = True
        self.server.release(self, len(self.body))
        self.body = b""
        request = self.request
        self.request = None
        page = self.server.error_page(
            request.path if request else "", 413, "request body too large", cause
        )
        if self.expect_continue:
            self.parser = None
            self._enqueue(page, _CLOSE, False)
        else:
            self._enqueue(page, _KEEP, False)

    def _fail(self, status: int, error: str, cause: str) -> None:
        """Answer a request that cannot be parsed, in turn, then close."""
        self.parser = None
        self.in_message = False
        self.in_head = False
        path = self.request.path if self.request is not None else ""
        self.request = None
        self._pause_reading()
        self._enqueue(self.server.error_page(path, status, error, cause), _CLOSE, False)

    def _head_limit(self) -> str:
        return f"the request's head exceeds the limit of {self.server.max_header_bytes} bytes"

    # -- flow control and timeouts -------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self.read_paused
            and not self.write_paused
            and not self.stream_paused
            and self not in self.server.starved
            and self in self.server.open
            and len(self.pending) < self.server.max_pipelined
            and self.parser is not None
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self.read_paused = False
            if self.in_message:  # the client could not send while unread: a fresh deadline
                self.phase_at = self.clock()
                if self.stream is not None:
                    self.window_bytes = self.stream.received
            self.transport.resume_reading()

    def tick(self, now: float) -> None:
        """The server's sweep: enforce the deadlines, close an idle connection."""
        server = self.server
        if self.transport is None:
            return
        if self.lingering_until:
            if now >= self.lingering_until:
                self.transport.close()
            return
        if self.write_paused:  # a client that stopped reading its answers
            if now - self.active_at >= server.header_timeout_s:
                self.transport.abort()
            return
        if self.in_message and not self.read_paused:
            # A request being read: its head, then its body, each have a total
            # deadline (while we do not read, the client cannot be late).
            if self.in_head:
                if now - self.phase_at >= server.header_timeout_s:
                    self._late("head", server.header_timeout_s)
            elif self.stream is not None:
                self._stream_rate(now)
            elif now - self.phase_at >= server.body_timeout_s:
                self._late("body", server.body_timeout_s)
            return
        if self.busy or self.pending or self.in_message:
            return
        if now - self.active_at >= server.keep_alive_s:
            self.transport.close()

    def _late(self, part: str, limit: float) -> None:
        """A 408 for a request that did not arrive in time, then close."""
        cause = f"the request's {part} did not arrive within {limit:g} s"
        log.info("%s port: %s; closing the connection", self.server.name, cause)
        self.server.release(self, len(self.body))
        self.body = b""
        if self.rejected:  # answered already (a 413): just stop reading its body
            self.parser = None
            self.in_message = False
            self._pause_reading()
            self.closing = True
            if not (self.busy or self.pending) and self.transport is not None:
                self.transport.close()
            return
        self._fail(408, "request timeout", cause)

    def close_when_idle(self) -> None:
        """Shutdown: close now if nothing is owed, else after the answers owed."""
        self.closing = True
        if not (self.busy or self.pending or self.in_message) and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the head is over the limit."""


class _BadURL(Exception):
    """Raised from a parser callback: the request target is not a URL."""
