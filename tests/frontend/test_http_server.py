"""The HTTP/1.1 server (``clipper.http.server``), black-box, over real sockets.

Each test starts an ``HTTPServer`` on 127.0.0.1 (any free port) in its own event
loop, once on asyncio's loop and once on uvloop (the production loop), and talks
to it with raw bytes through ``asyncio.open_connection`` (or with httpx). Every
wait has a deadline; a loop that reports an error (an exception escaping a
protocol callback, a task's exception never retrieved) fails the test.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import gc
import hashlib
import inspect
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from clipper.http.server import HTTPServer, Later, Request, Response, json_error
from tests.helpers import self_signed_cert

WAIT = 10.0  # the deadline for any single wait on the server
TEST_DEADLINE = 60.0  # the whole of one test


# -- running async tests ---------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return str(request.param)


def aio(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh loop of each kind; fail on errors the loop reports."""

    @functools.wraps(fn)
    def wrapper(*args: Any, loop_kind: str, **kwargs: Any) -> None:
        factory = None
        if loop_kind == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        errors: list[dict[str, Any]] = []
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.get_loop().set_exception_handler(lambda _loop, context: errors.append(context))
            runner.run(asyncio.wait_for(fn(*args, **kwargs), TEST_DEADLINE))
            gc.collect()  # report tasks whose exception nobody retrieved
        assert not errors, f"the event loop reported errors: {errors}"

    signature = inspect.signature(fn)
    kind = inspect.Parameter("loop_kind", inspect.Parameter.KEYWORD_ONLY)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), kind]
    )
    return wrapper


async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition()`` (a value or an awaitable) until truthy, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def settled(count: Callable[[], int], quiet: float = 0.5, timeout: float = WAIT) -> int:
    """Wait until ``count()`` has not changed for ``quiet`` seconds, and return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = count(), loop.time()
    while loop.time() - since < quiet:
        assert loop.time() < deadline, f"count still changing after {timeout}s"
        await asyncio.sleep(0.05)
        if (now := count()) != last:
            last, since = now, loop.time()
    return last


# -- the handler -----------------------------------------------------------------------------


class App:
    """A handler with a few routes; it records every request it is given.

    ``/sleep/<s>`` sleeps then echoes; ``/gate`` waits for ``release``; ``/boom`` raises;
    ``/status/<n>``; ``/text`` (extra headers); ``/fixed``; ``/fill/<n>/<size>``;
    ``/digest`` (the body's length and sha256); ``/big/<size>``; anything else echoes.
    """

    FIXED = b'{"hello": "world"}'

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = asyncio.Event()

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        route, *args = request.path.strip("/").split("/")
        match route:
            case "sleep":
                await asyncio.sleep(float(args[0]))
            case "gate":
                self.started.set()
                try:
                    await self.release.wait()
                finally:
                    self.finished.set()
            case "boom":
                raise KeyError("the secret detail")
            case "status":
                return Response(int(args[0]), b"{}")
            case "text":
                extra = ((b"x-extra", b"1"), (b"x-extra", b"2"), (b"x-other", b"yes"))
                return Response(200, b"plain", content_type=b"text/plain", headers=extra)
            case "fixed":
                return Response(200, self.FIXED)
            case "fill":
                body = f"{int(args[0]):08d}".encode().ljust(int(args[1]), b".")
                return Response(200, body, content_type=b"text/plain")
            case "digest":
                digest = {"length": len(request.body), "sha256": sha256(request.body)}
                return Response(200, json.dumps(digest).encode())
            case "big":
                return Response(200, b"b" * int(args[0]), content_type=b"application/octet-stream")
        echo = {
            "method": request.method,
            "path": request.path,
            "query": request.query.decode("latin-1"),
            "body": request.body.decode("latin-1"),
        }
        return Response(200, json.dumps(echo).encode(), headers=((b"x-handler", b"echo"),))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def serving(handler: Callable[[Request], Any], **options: Any) -> AsyncIterator[HTTPServer]:
    options.setdefault("max_body_bytes", 1_000_000)
    ssl_context = options.pop("ssl", None)
    server = HTTPServer(handler, **options)
    await asyncio.wait_for(server.start("127.0.0.1", 0, ssl=ssl_context), WAIT)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.shutdown(1.0), WAIT)
        assert server.connections == 0


# -- the client ------------------------------------------------------------------------------


@dataclass
class Reply:
    version: str
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def json(self) -> Any:
        assert self.header(b"content-type") == b"application/json"
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Reply:
    """One response: status line, headers up to the blank line, then content-length bytes."""

    async def read() -> Reply:
        lines = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
        version, _, rest = lines[0].decode("latin-1").partition(" ")
        status, _, reason = rest.partition(" ")
        assert version.startswith("HTTP/1."), lines[0]
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and name == name.strip(), f"bad header line {line!r}"
            headers.append((name.lower(), value.strip()))
        reply = Reply(version, int(status), reason, headers, b"")
        if head or reply.status < 200 or reply.status in (204, 304):
            return reply
        lengths = reply.all(b"content-length")
        assert len(lengths) == 1, f"want one content-length, got {reply.headers}"
        assert reply.header(b"transfer-encoding") is None
        reply.body = await reader.readexactly(int(lengths[0]))
        return reply

    return await asyncio.wait_for(read(), WAIT)


def request(
    method: str = "GET",
    target: str = "/",
    *,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
    version: str = "1.1",
) -> bytes:
    """A request's bytes; a ``content-length`` is added for a body unless headers frame it."""
    lines = [f"{method} {target} HTTP/{version}", "Host: test"]
    lines += [f"{name}: {value}" for name, value in headers]
    framed = {name.lower() for name, _ in headers} & {"content-length", "transfer-encoding"}
    if body is not None and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT)

    async def response(self, *, head: bool = False) -> Reply:
        return await read_response(self.reader, head=head)

    async def ask(self, method: str = "GET", target: str = "/", **kwargs: Any) -> Reply:
        await self.send(request(method, target, **kwargs))
        return await self.response(head=method == "HEAD")

    async def eof(self) -> bytes:
        """Read until the server closes the connection (EOF or reset); return what came."""
        chunks: list[bytes] = []

        async def drain() -> None:
            with suppress(ConnectionResetError):
                while chunk := await self.reader.read(65536):
                    chunks.append(chunk)

        try:
            await asyncio.wait_for(drain(), WAIT)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {WAIT}s") from None
        return b"".join(chunks)

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)


@asynccontextmanager
async def connect(server: HTTPServer, **kwargs: Any) -> AsyncIterator[Client]:
    address = {} if "sock" in kwargs else {"host": "127.0.0.1", "port": server.port}
    reader, writer = await asyncio.wait_for(asyncio.open_connection(**address, **kwargs), WAIT)
    client = Client(reader, writer)
    try:
        yield client
    finally:
        await client.close()


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    except OSError:
        return True
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return False


def assert_error_json(reply: Reply, status: int) -> None:
    assert reply.status == status
    body = reply.json()
    assert set(body) == {"error", "cause"}
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["cause"], str)


# -- 1. requests and responses ---------------------------------------------------------------


def test_json_error_is_the_default_error_page():
    page = json_error("/x", 404, "not found", "no route for /x")
    assert page.status == 404
    assert page.content_type == b"application/json"
    assert json.loads(page.body) == {"error": "not found", "cause": "no route for /x"}


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", b""),
        ("/a%20b", "/a b", b""),
        ("/a%20b?x=1&y=%20", "/a b", b"x=1&y=%20"),
        ("/caf%C3%A9", "/café", b""),
        ("/a+b?", "/a+b", b""),
        ("/p?q?r", "/p", b"q?r"),
    ],
)
@aio
async def test_get_sees_the_decoded_path_and_the_raw_query(target, path, query):
    app = App()
    async with serving(app) as server, connect(server) as client:
        reply = await client.ask("GET", target)
        assert (reply.version, reply.status, reply.reason) == ("HTTP/1.1", 200, "OK")
        seen = app.seen[-1]
        assert (seen.method, seen.path, seen.query, seen.body) == ("GET", path, query, b"")
        assert reply.json() == {"method": "GET", "path": path, "query": query.decode(), "body": ""}


@aio
async def test_the_handler_sees_lower_cased_headers_in_order_and_the_body():
    app = App()
    async with serving(app) as server, connect(server) as client:
        headers = (("X-Custom", "Value"), ("X-Dup", "1"), ("x-dup", "2"), ("Content-Type", "a/b"))
        reply = await client.ask("POST", "/upload", headers=headers, body=b"hello")
        assert reply.status == 200
        seen = app.seen[-1]
        assert seen.method == "POST" and seen.path == "/upload" and seen.body == b"hello"
        assert seen.headers == [
            (b"host", b"test"),
            (b"x-custom", b"Value"),
            (b"x-dup", b"1"),
            (b"x-dup", b"2"),
            (b"content-type", b"a/b"),
            (b"content-length", b"5"),
        ]
        assert seen.header(b"x-custom") == b"Value"
        assert seen.header(b"x-dup") == b"1"
        assert seen.header(b"x-missing") is None


@aio
async def test_the_response_carries_status_type_length_and_extra_headers():
    async with serving(App()) as server, connect(server) as client:
        reply = await client.ask("GET", "/")
        assert reply.header(b"content-type") == b"application/json"
        assert reply.header(b"content-length") == str(len(reply.body)).encode()
        assert reply.header(b"x-handler") == b"echo"

        reply = await client.ask("GET", "/text")
        assert reply.status == 200 and reply.body == b"plain"
        assert reply.all(b"content-type") == [b"text/plain"]
        assert reply.all(b"content-length") == [b"5"]
        assert reply.all(b"x-extra") == [b"1", b"2"]
        assert reply.header(b"x-other") == b"yes"

        for status, phrase in [(201, "Created"), (404, "Not Found"), (503, "Service Unavailable")]:
            reply = await client.ask("GET", f"/status/{status}")
            assert (reply.status, reply.reason, reply.body) == (status, phrase, b"{}")


@aio
async def test_a_request_sent_a_byte_at_a_time():
    app = App()
    async with serving(app) as server, connect(server) as client:
        for byte in request("POST", "/slow?x=1", body=b"trickle"):
            await client.send(bytes([byte]))
        reply = await client.response()
        assert reply.json() == {
            "method": "POST",
            "path": "/slow",
            "query": "x=1",
            "body": "trickle",
        }


# -- 2. keep-alive ---------------------------------------------------------------------------


@aio
async def test_keep_alive_answers_several_requests_on_one_connection():
    app = App()
    async with serving(app) as server, connect(server) as client:
        for n in range(5):
            reply = await client.ask("POST", f"/n/{n}", body=f"body {n}".encode())
            assert reply.status == 200
            assert reply.json()["path"] == f"/n/{n}" and reply.json()["body"] == f"body {n}"
            assert (reply.header(b"connection") or b"").lower() != b"close"
        assert server.connections == 1


@aio
async def test_http_1_0_without_keep_alive_is_answered_then_closed():
    async with serving(App()) as server, connect(server) as client:
        reply = await client.ask("GET", "/old", version="1.0")
        assert reply.status == 200 and reply.json()["path"] == "/old"
        assert await client.eof() == b""


@aio
async def test_http_1_0_with_keep_alive_stays_open():
    async with serving(App()) as server, connect(server) as client:
        for n in range(3):
            reply = await client.ask(
                "GET", f"/{n}", version="1.0", headers=(("Connection", "keep-alive"),)
            )
            assert reply.status == 200 and reply.json()["path"] == f"/{n}"
            assert (reply.header(b"connection") or b"").lower() == b"keep-alive"


@aio
async def test_http_1_1_with_connection_close_is_answered_then_closed():
    async with serving(App()) as server, connect(server) as client:
        reply = await client.ask("GET", "/bye", headers=(("Connection", "close"),))
        assert reply.status == 200 and reply.json()["path"] == "/bye"
        assert (reply.header(b"connection") or b"").lower() == b"close"
        assert await client.eof() == b""


@aio
async def test_connections_counts_open_connections():
    async with serving(App()) as server:
        async with connect(server), connect(server), connect(server):
            await until(lambda: server.connections == 3, "three connections")
        await until(lambda: server.connections == 0, "no connections")


# -- 3. pipelining ---------------------------------------------------------------------------


@aio
async def test_pipelined_answers_come_in_request_order():
    async with serving(App()) as server, connect(server) as client:
        await client.send(
            request("GET", "/sleep/0.5?n=1")
            + request("GET", "/sleep/0.1?n=2")
            + request("POST", "/?n=3", body=b"third")
        )
        replies = [await client.response() for _ in range(3)]
        assert [r.json()["query"] for r in replies] == ["n=1", "n=2", "n=3"]
        assert replies[2].json()["body"] == "third"


@aio
async def test_a_long_pipeline_waits_behind_a_slow_answer_in_order():
    app = App()
    async with serving(app, max_pipelined=4) as server, connect(server) as client:
        await client.send(b"".join(request("GET", f"/gate?n={n}") for n in range(20)))
        await asyncio.wait_for(app.started.wait(), WAIT)
        taken = await settled(lambda: len(app.seen))
        assert taken <= 4, f"{taken} requests handed to the handler with max_pipelined=4"
        app.release.set()
        replies = [await client.response() for _ in range(20)]
        assert [r.json()["query"] for r in replies] == [f"n={n}" for n in range(20)]


# -- 4. chunked request bodies ---------------------------------------------------------------


@aio
async def test_a_chunked_body_arrives_de_chunked():
    app = App()
    async with serving(app) as server, connect(server) as client:
        chunked = (("Transfer-Encoding", "chunked"),)
        reply = await client.ask(
            "POST", "/c", headers=chunked, body=b"5\r\nhello\r\nA\r\n, chunked!\r\n0\r\n\r\n"
        )
        assert reply.json()["body"] == "hello, chunked!"
        assert app.seen[-1].body == b"hello, chunked!"

        # The same in pieces that split the framing anywhere.
        await client.send(request("POST", "/c", headers=chunked))
        for piece in [b"3\r", b"\nabc", b"\r\n", b"4\r\nde", b"fg\r\n0", b"\r\n\r\n"]:
            await client.send(piece)
        assert (await client.response()).json()["body"] == "abcdefg"


# -- 5. the body limit ------------------------------------------------------------------------


@aio
async def test_a_body_at_the_limit_is_accepted():
    app = App()
    async with serving(app, max_body_bytes=1000) as server, connect(server) as client:
        reply = await client.ask("POST", "/digest", body=b"x" * 1000)
        assert reply.json()["length"] == 1000
        chunk = b"3E8\r\n" + b"y" * 1000 + b"\r\n0\r\n\r\n"
        chunked = (("Transfer-Encoding", "chunked"),)
        reply = await client.ask("POST", "/digest", headers=chunked, body=chunk)
        assert reply.json()["length"] == 1000


@aio
async def test_a_content_length_over_the_limit_is_413_and_the_connection_goes_on():
    app = App()
    async with serving(app, max_body_bytes=1000) as server, connect(server) as client:
        await client.send(request("POST", "/upload", body=b"z" * 5000) + request("GET", "/next"))
        reply = await client.response()
        assert_error_json(reply, 413)
        reply = await client.response()
        assert reply.status == 200 and reply.json()["path"] == "/next"
        assert [r.path for r in app.seen] == ["/next"]


@aio
async def test_an_oversized_body_is_refused_before_it_arrives_and_then_skipped():
    app = App()
    async with serving(app, max_body_bytes=1000) as server, connect(server) as client:
        await client.send(request("POST", "/upload", headers=(("Content-Length", "200000"),)))
        assert_error_json(await client.response(), 413)
        for _ in range(25):  # the rest of the body, which the server discards
            await client.send(b"z" * 8000)
        reply = await client.ask("GET", "/next")
        assert reply.status == 200 and reply.json()["path"] == "/next"
        assert [r.path for r in app.seen] == ["/next"]


@aio
async def test_a_chunked_body_growing_over_the_limit_is_413():
    app = App()
    async with serving(app, max_body_bytes=1000) as server, connect(server) as client:
        chunked = (("Transfer-Encoding", "chunked"),)
        # Two chunks of 600 bytes and no last chunk: the server must not wait for the end.
        await client.send(request("POST", "/upload", headers=chunked) + b"258\r\n" + b"z" * 600)
        await client.send(b"\r\n258\r\n" + b"z" * 600 + b"\r\n")
        assert_error_json(await client.response(), 413)
        assert app.seen == []


@aio
async def test_the_error_page_renders_server_errors():
    pages = []

    def page(path: str, status: int, error: str, cause: str) -> Response:
        pages.append((path, status, error, cause))
        body = f"{path}|{status}|{error}|{cause}".encode()
        return Response(status, body, content_type=b"text/plain", headers=((b"x-page", b"mine"),))

    async with serving(App(), max_body_bytes=10, error_page=page) as server, connect(server) as c:
        reply = await c.ask("POST", "/upload", body=b"z" * 100)
        assert reply.status == 413
        assert reply.header(b"content-type") == b"text/plain"
        assert reply.header(b"x-page") == b"mine"
        assert reply.body.startswith(b"/upload|413|")
        assert pages[-1][:2] == ("/upload", 413)

        reply = await c.ask("GET", "/boom")
        assert reply.status == 500 and reply.header(b"x-page") == b"mine"
        assert reply.body.startswith(b"/boom|500|") and b"KeyError" in reply.body


# -- 6. Expect: 100-continue -----------------------------------------------------------------


@aio
async def test_expect_100_continue_gets_a_100_before_the_body():
    app = App()
    async with serving(app, max_body_bytes=1000) as server, connect(server) as client:
        expect = (("Expect", "100-continue"), ("Content-Length", "5"))
        await client.send(request("POST", "/e", headers=expect))
        interim = await client.response()
        assert (interim.status, interim.reason) == (100, "Continue")
        assert app.seen == []
        await client.send(b"hello")
        reply = await client.response()
        assert reply.status == 200 and reply.json()["body"] == "hello"
        # The connection carries on.
        assert (await client.ask("GET", "/after")).json()["path"] == "/after"


@aio
async def test_expect_100_continue_over_the_limit_gets_413_then_close():
    app = App()
    async with serving(app, max_body_bytes=1000) as server, connect(server) as client:
        expect = (("Expect", "100-continue"), ("Content-Length", "5000"))
        await client.send(request("POST", "/e", headers=expect))
        reply = await client.response()
        assert_error_json(reply, 413)  # and no 100 Continue first
        assert await client.eof() == b""
        assert app.seen == []


# -- 7. malformed requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # Both framings at once, the way request smuggling starts.
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["not-http", "bad-header", "bad-length", "bad-chunk", "length-and-chunked"],
)
@aio
async def test_a_malformed_request_is_400_then_close(data):
    app = App()
    async with serving(app) as server:
        async with connect(server) as client:
            await client.send(data)
            assert_error_json(await client.response(), 400)
            assert await client.eof() == b""
        async with connect(server) as client:
            assert (await client.ask("GET", "/fine")).status == 200
        assert [r.path for r in app.seen] == ["/fine"]


# -- 8. the header limit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        request(headers=(("X-Big", "a" * 8000),)),
        request(headers=tuple((f"X-H{n}", "v" * 30) for n in range(300))),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000,  # never ends
    ],
    ids=["one-big-header", "many-headers", "unterminated"],
)
@aio
async def test_headers_over_the_limit_are_431_then_close(data):
    app = App()
    async with serving(app, max_header_bytes=4096) as server:
        async with connect(server) as client:
            await client.send(data)
            assert (await client.response()).status == 431
            assert await client.eof() == b""
        async with connect(server) as client:
            reply = await client.ask(headers=(("X-Fits", "a" * 3000),))
            assert reply.status == 200
        assert len(app.seen) == 1


# -- 9. handler errors -----------------------------------------------------------------------


@aio
async def test_a_handler_exception_is_a_500_without_traceback_and_the_connection_lives():
    async with serving(App()) as server, connect(server) as client:
        reply = await client.ask("GET", "/boom")
        assert_error_json(reply, 500)
        assert b"KeyError" in reply.body
        assert b"Traceback" not in reply.body and b"File " not in reply.body
        reply = await client.ask("GET", "/after")
        assert reply.status == 200 and reply.json()["path"] == "/after"


class Kinds:
    """A handler that answers in each of the three ways ``h1`` takes: now (a
    ``Response``), from callbacks (a ``Later``) or from a coroutine.

    ``/now``; ``/later/<ms>`` (a future resolved ``ms`` later); ``/co/<ms>``;
    ``/fail`` (a Later whose future fails); ``/cancel`` (whose future is
    cancelled); ``/bad-finish`` (whose finish raises); ``/raise`` (the handler
    itself raises); ``/held`` (a Later resolved by the test, in ``held``).
    """

    def __init__(self) -> None:
        self.held: list[asyncio.Future[str]] = []

    def __call__(self, request: Request) -> Any:
        loop = asyncio.get_running_loop()
        route, *args = request.path.strip("/").split("/")
        future: asyncio.Future[str] = loop.create_future()
        match route:
            case "now":
                return Response(200, b'"now"')
            case "later":
                loop.call_later(float(args[0]) / 1000, future.set_result, "later")
            case "co":
                return self._co(float(args[0]) / 1000)
            case "fail":
                loop.call_soon(future.set_exception, LookupError("the secret detail"))
            case "cancel":
                loop.call_soon(future.cancel)
            case "bad-finish":
                future.set_result("x")
                return Later(future, lambda _f: {}["missing"])
            case "raise":
                raise ZeroDivisionError("the secret detail")
            case "held":
                self.held.append(future)
        return Later(future, lambda f: Response(200, json.dumps(f.result()).encode()))

    async def _co(self, seconds: float) -> Response:
        await asyncio.sleep(seconds)
        return Response(200, b'"co"')


@aio
async def test_answers_now_later_and_from_coroutines_keep_pipeline_order():
    async with serving(Kinds()) as server, connect(server) as client:
        targets = ["/later/80", "/now", "/co/40", "/later/0", "/now", "/co/0", "/later/20"]
        await client.send(b"".join(request("GET", t) for t in targets))
        bodies = [(await client.response()).json() for _ in targets]
        assert bodies == ["later", "now", "co", "later", "now", "co", "later"]


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("/fail", b"LookupError"),
        ("/cancel", b"CancelledError"),
        ("/bad-finish", b"KeyError"),
        ("/raise", b"ZeroDivisionError"),
    ],
)
@aio
async def test_a_failed_answer_of_any_kind_is_a_500_and_the_connection_lives(target, kind):
    async with serving(Kinds()) as server, connect(server) as client:
        reply = await client.ask("GET", target)
        assert_error_json(reply, 500)
        assert kind in reply.body and b"secret" not in reply.body
        assert (await client.ask("GET", "/now")).json() == "now"


@aio
async def test_a_later_finished_after_its_client_left_is_dropped_quietly():
    kinds = Kinds()
    async with serving(kinds) as server:
        async with connect(server) as client:
            await client.send(request("GET", "/held"))
            await until(lambda: kinds.held, "the request to reach the handler")
        # Its end of the connection waits for the answer owed (a client may
        # half-close); the answer goes out to nobody, and the connection closes.
        kinds.held[0].set_result("too late")
        await until(lambda: server.connections == 0, "the connection to be gone")
        async with connect(server) as client:
            assert (await client.ask("GET", "/now")).json() == "now"


# -- 10. HEAD --------------------------------------------------------------------------------


@aio
async def test_head_has_the_length_but_no_body():
    async with serving(App()) as server, connect(server) as client:
        await client.send(request("HEAD", "/fixed") + request("GET", "/fixed"))
        head = await client.response(head=True)
        assert head.status == 200
        assert head.header(b"content-length") == str(len(App.FIXED)).encode()
        get = await client.response()  # would not parse if the HEAD answer had a body
        assert get.status == 200 and get.body == App.FIXED


# -- 11. timeouts ----------------------------------------------------------------------------
# The server's clock is a FakeClock here: a test moves it and runs the sweep itself
# (jump), so no test waits for a timeout to pass. The "real time" tests check, on the
# real clock, that the sweeper task does run, and that it closes nothing early.


class FakeClock:
    """The server's ``clock``: time passes only when a test moves it (``jump``)."""

    def __init__(self) -> None:
        self.now = 1000.0  # whole eighths of a second from here add up exactly

    def __call__(self) -> float:
        return self.now


def jump(server: HTTPServer, clock: FakeClock, seconds: float) -> None:
    """Let ``seconds`` pass on the server's clock, then sweep, as its sweeper would."""
    clock.now += seconds
    server.sweep(clock.now)


def closing(server: HTTPServer) -> bool:
    """Whether the server has closed (or let go of) every connection it holds."""
    return all(c.transport is None or c.transport.is_closing() for c in server.open)


def kept(server: HTTPServer) -> bool:
    """Whether the server holds a connection and is closing none of them."""
    return server.connections > 0 and not any(
        c.transport is None or c.transport.is_closing() for c in server.open
    )


async def read_now(server: HTTPServer, clock: FakeClock) -> None:
    """Wait until the server has read the bytes sent since the clock last moved: its
    connection was active at the clock's now (or is closing: it reads no more)."""
    await until(
        lambda: all(
            c.active_at == clock.now or c.transport is None or c.transport.is_closing()
            for c in server.open
        ),
        "the server to read what was sent",
    )


@aio
async def test_an_idle_keep_alive_connection_is_closed():
    clock = FakeClock()
    async with serving(App(), keep_alive_s=1, clock=clock) as server, connect(server) as client:
        assert (await client.ask()).status == 200
        jump(server, clock, 1)
        assert await client.eof() == b""
        await until(lambda: server.connections == 0, "the connection to be gone")


@aio
async def test_an_idle_connection_is_kept_for_keep_alive_s_at_least():
    # Clients reuse a connection idle for less than the server's promise; one
    # closed early costs them a reconnect (or a failed request).
    clock = FakeClock()
    async with serving(App(), keep_alive_s=1.5, clock=clock) as server, connect(server) as client:
        assert (await client.ask()).status == 200
        jump(server, clock, 1.375)
        assert kept(server)
        assert (await client.ask()).status == 200  # the same connection, still served
        jump(server, clock, 1.375)
        assert kept(server)
        jump(server, clock, 0.125)  # keep_alive_s since the last answer: closed
        assert await client.eof() == b""


@aio
async def test_a_connection_that_never_sends_is_closed():
    clock = FakeClock()
    options = {"keep_alive_s": 1, "header_timeout_s": 1, "clock": clock}
    async with serving(App(), **options) as server, connect(server) as client:
        await until(lambda: server.connections == 1, "the connection to be served")
        jump(server, clock, 0.875)
        assert kept(server)
        jump(server, clock, 0.125)
        assert await client.eof() == b""


@aio
async def test_headers_that_never_finish_time_out():
    clock = FakeClock()
    async with serving(App(), header_timeout_s=1, clock=clock) as server, connect(server) as client:
        jump(server, clock, 0.125)
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await read_now(server, clock)
        jump(server, clock, 0.875)
        assert kept(server)
        jump(server, clock, 0.125)  # header_timeout_s since its first byte
        data = await client.eof()
        assert data.startswith(b"HTTP/1.1 408") and b"head" in data, data[:120]


@aio
async def test_a_busy_connection_is_not_closed_for_idleness():
    app, clock = App(), FakeClock()
    async with (
        serving(app, keep_alive_s=1, header_timeout_s=1, clock=clock) as server,
        connect(server) as client,
    ):
        await client.send(request("GET", "/gate"))
        await asyncio.wait_for(app.started.wait(), WAIT)
        jump(server, clock, 10)  # the handler takes ten times keep_alive_s
        assert kept(server)
        app.release.set()
        reply = await client.response()
        assert reply.status == 200 and reply.json()["path"] == "/gate"
        assert (await client.ask("GET", "/again")).status == 200


@aio
async def test_a_slow_upload_is_not_closed_for_idleness():
    clock = FakeClock()
    async with serving(App(), keep_alive_s=1, clock=clock) as server, connect(server) as client:
        jump(server, clock, 0.125)
        await client.send(request("POST", "/up", headers=(("Content-Length", "9"),)))
        await read_now(server, clock)
        for piece in [b"abc", b"def", b"ghi"]:  # 1.5 s in all, over keep_alive_s
            jump(server, clock, 0.5)
            assert kept(server)
            await client.send(piece)
            await read_now(server, clock)
        assert (await client.response()).json()["body"] == "abcdefghi"


@aio
async def test_the_idle_timer_restarts_with_each_request():
    clock = FakeClock()
    async with serving(App(), keep_alive_s=1.5, clock=clock) as server, connect(server) as client:
        for n in range(4):  # 4 s in all, each gap under keep_alive_s
            assert (await client.ask("GET", f"/{n}")).status == 200
            jump(server, clock, 1)
            assert kept(server)
        jump(server, clock, 0.5)  # keep_alive_s since the last request
        assert await client.eof() == b""


@aio
async def test_real_time_the_sweeper_closes_an_idle_connection_not_sooner():
    async with serving(App(), keep_alive_s=0.25) as server, connect(server) as client:
        assert (await client.ask()).status == 200
        answered = time.monotonic()
        assert await client.eof() == b""
        assert time.monotonic() - answered >= 0.25 - 0.05  # the clock's resolution
        await until(lambda: server.connections == 0, "the connection to be gone")


@aio
async def test_real_time_the_sweeper_answers_a_late_head_408():
    async with serving(App(), header_timeout_s=0.25) as server, connect(server) as client:
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data = await client.eof()
        assert data.startswith(b"HTTP/1.1 408") and b"head" in data, data[:120]


@aio
async def test_real_time_the_sweeper_answers_a_late_body_408():
    async with serving(App(), body_timeout_s=0.25) as server, connect(server) as client:
        await client.send(request("POST", "/up", headers=(("Content-Length", "100"),)) + b"x")
        data = await client.eof()
        assert data.startswith(b"HTTP/1.1 408") and b"body" in data, data[:120]
        assert server.held_bytes == 0


# -- 12. clients that go away ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "abort"])
@aio
async def test_a_client_leaving_mid_request_harms_nothing(how, caplog):
    app = App()
    async with serving(app) as server:
        async with connect(server) as client:
            await client.send(request("GET", "/gate"))
            await asyncio.wait_for(app.started.wait(), WAIT)
            if how == "abort":
                client.writer.transport.abort()
            else:
                client.writer.close()
        app.release.set()
        await asyncio.wait_for(app.finished.wait(), WAIT)
        await until(lambda: server.connections == 0, "the connection to be gone")
        async with connect(server) as client:
            assert (await client.ask("GET", "/next")).status == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@aio
async def test_a_client_leaving_mid_body_harms_nothing():
    app = App()
    async with serving(app) as server:
        async with connect(server) as client:
            await client.send(request("POST", "/p", headers=(("Content-Length", "100"),)) + b"x")
        await until(lambda: server.connections == 0, "the connection to be gone")
        async with connect(server) as client:
            assert (await client.ask("GET", "/next")).status == 200
        assert [r.path for r in app.seen] == ["/next"]


# -- 13. flow control ------------------------------------------------------------------------


@aio
async def test_a_client_that_does_not_read_stalls_the_server_then_gets_every_answer():
    # 32 MB of answers, far more than the kernel holds (a 32 KB receive buffer here, and
    # Linux's default at most 4 MB send buffer there): a server that stops answering
    # when its transport is full has handled a few hundred when the count settles.
    count, size = 2000, 16384
    app = App()
    async with serving(app) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port)), WAIT
        )
        async with connect(server, sock=sock) as client:
            # Written, not drained: the client only writes until it starts reading.
            client.writer.write(b"".join(request("GET", f"/fill/{n}/{size}") for n in range(count)))
            handled = await settled(lambda: len(app.seen))
            assert handled < count, "every request was answered into a buffer nobody reads"
            for n in range(count):
                reply = await client.response()
                assert reply.status == 200 and reply.body[:8] == f"{n:08d}".encode()
                assert len(reply.body) == size
            await asyncio.wait_for(client.writer.drain(), WAIT)
            assert (await client.ask("GET", "/last")).status == 200


# -- 14. shutdown ----------------------------------------------------------------------------


@aio
async def test_shutdown_closes_idle_connections_at_once():
    async with serving(App()) as server, connect(server) as used, connect(server) as fresh:
        assert (await used.ask()).status == 200
        await until(lambda: server.connections == 2, "two connections")
        await asyncio.wait_for(server.shutdown(timeout_s=30), 5)
        assert await used.eof() == b""
        assert await fresh.eof() == b""
        assert server.connections == 0
        assert await refused(server.port)


@aio
async def test_shutdown_answers_the_request_in_flight_then_closes():
    app = App()
    async with serving(app) as server, connect(server) as busy, connect(server) as idle:
        assert (await idle.ask()).status == 200
        await busy.send(request("GET", "/gate"))
        await asyncio.wait_for(app.started.wait(), WAIT)
        stopping = asyncio.create_task(server.shutdown(timeout_s=30))
        await until(lambda: refused(server.port), "new connections to be refused")
        assert await idle.eof() == b""
        assert not stopping.done()
        app.release.set()
        reply = await busy.response()
        assert reply.status == 200 and reply.json()["path"] == "/gate"
        assert (reply.header(b"connection") or b"").lower() == b"close"
        assert await busy.eof() == b""
        await asyncio.wait_for(stopping, WAIT)
        assert server.connections == 0


@aio
async def test_shutdown_aborts_what_is_left_after_its_timeout():
    app = App()
    async with serving(app) as server, connect(server) as client:
        await client.send(request("GET", "/gate"))
        await asyncio.wait_for(app.started.wait(), WAIT)
        await asyncio.wait_for(server.shutdown(timeout_s=0.5), WAIT)
        assert await client.eof() == b""
        assert server.connections == 0
        app.release.set()


# -- 15. TLS ---------------------------------------------------------------------------------


@aio
async def test_tls(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    async with serving(App(), ssl=server_context) as server:
        async with connect(server, ssl=client_context, server_hostname="localhost") as client:
            reply = await client.ask("POST", "/secure", body=b"over tls")
            assert reply.json()["body"] == "over tls"
            reply = await client.ask("GET", "/big/1000000")
            assert reply.status == 200 and len(reply.body) == 1_000_000
        url = f"https://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=url, verify=client_context, timeout=WAIT) as http:
            response = await http.post("/secure", content=b"via httpx")
            assert response.status_code == 200 and response.json()["body"] == "via httpx"


# -- 16. a real client -----------------------------------------------------------------------


@aio
async def test_httpx_json_keep_alive_and_large_bodies():
    app = App()
    async with serving(app, max_body_bytes=8_000_000) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
            for n in range(5):
                response = await http.post("/predict?v=1", json={"input": [n, n + 1]})
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/json"
                echoed = response.json()
                assert echoed["path"] == "/predict" and echoed["query"] == "v=1"
                assert json.loads(echoed["body"]) == {"input": [n, n + 1]}
                assert server.connections == 1  # httpx kept the one connection

            upload = os.urandom(6_000_000)
            response = await http.post("/digest", content=upload)
            assert response.json() == {"length": len(upload), "sha256": sha256(upload)}

            async def pieces() -> AsyncIterator[bytes]:  # sent chunked
                for start in range(0, len(upload), 1 << 20):
                    yield upload[start : start + (1 << 20)]

            response = await http.post("/digest", content=pieces())
            assert response.json() == {"length": len(upload), "sha256": sha256(upload)}

            response = await http.get("/big/5000000")
            assert response.status_code == 200 and len(response.content) == 5_000_000

            response = await http.post("/digest", content=b"z" * 8_000_001)
            assert response.status_code == 413
            assert set(response.json()) == {"error", "cause"}


# -- 9. deadlines, budgets and the guard (the security issue) --------------------------------


@aio
async def test_every_response_carries_a_date():
    async with serving(App()) as server, connect(server) as client:
        reply = await client.ask("GET", "/fixed")
        date = reply.header(b"date")
        assert date is not None and date.endswith(b" GMT")
        parsed = email.utils.parsedate_to_datetime(date.decode())
        assert abs(parsed.timestamp() - time.time()) < 60


@aio
async def test_a_head_sent_a_byte_at_a_time_past_its_deadline_is_408_then_close():
    # Slowloris: each byte comes well inside any idle timeout, the whole head never does.
    clock = FakeClock()
    async with serving(App(), header_timeout_s=1.5, keep_alive_s=1, clock=clock) as server:
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        data, took = await trickle(server, clock, head)
        assert data.startswith(b"HTTP/1.1 408"), data[:120]
        assert b'"request timeout"' in data and b"head" in data
        assert took == 1.5  # from its first byte: at the deadline, not a sweep later
        async with connect(server) as other:  # others are still served
            assert (await other.ask("GET", "/fixed")).status == 200


@aio
async def test_a_body_trickled_past_its_deadline_is_408_then_close():
    clock = FakeClock()
    async with serving(App(), body_timeout_s=1.5, keep_alive_s=1, clock=clock) as server:
        head = request("POST", "/up", headers=(("Content-Length", "1000"),))
        data, took = await trickle(server, clock, b"x" * 200, first=head)
        assert data.startswith(b"HTTP/1.1 408") and b"body" in data, data[:120]
        assert took == 1.5  # from the end of its head
        assert server.held_bytes == 0


async def trickle(
    server: HTTPServer, clock: FakeClock, data: bytes, first: bytes = b""
) -> tuple[bytes, float]:
    """Send ``first``, then ``data`` a byte every 1/8 s of the server's clock (a sweep
    each time) until the server answers and closes; return what it sent and how long
    that took on its clock from the first bytes. The answer is read as it comes."""
    async with connect(server) as client:
        answer = asyncio.create_task(client.eof())
        pieces = [first] if first else []
        pieces += [bytes([byte]) for byte in data]
        jump(server, clock, 0.125)
        started = clock.now
        for n, piece in enumerate(pieces):
            if n:
                jump(server, clock, 0.125)  # never idle for long
                if closing(server):
                    break
            await client.send(piece)
            await read_now(server, clock)
        return await answer, clock.now - started


@aio
async def test_connections_past_the_cap_wait_and_are_served_in_turn():
    app = App()
    async with serving(app, max_connections=2) as server, connect(server) as a:  # noqa: SIM117
        async with connect(server) as b:  # b closes first, inside
            await a.send(request("GET", "/gate"))
            await until(app.started.is_set, "the gate to be taken")
            assert (await b.ask("GET", "/fixed")).status == 200
            async with connect(server) as c:  # accepted, not reset: it waits its turn
                await c.send(request("GET", "/fixed"))
                await until(lambda: len(server.waiting) == 1, "the third connection to wait")
                assert server.connections == 2
                await b.close()  # a place frees: the waiting one is served
                reply = await c.response()
                assert reply.status == 200 and reply.body == App.FIXED
                app.release.set()
                assert (await a.response()).status == 200
    assert not server.waiting


@aio
async def test_a_connection_over_its_byte_budget_is_not_read_until_answered():
    app = App()
    async with serving(app, max_body_bytes=10_000) as server, connect(server) as client:
        await client.send(request("GET", "/gate"))
        await until(app.started.is_set, "the gate to be taken")
        body = b"y" * 9_000
        for _ in range(20):  # 180 KB of pipelined bodies behind a request not yet answered
            client.writer.write(request("POST", "/digest", body=body))
        await until(
            lambda: server.held_bytes > 0 and not client.writer.transport.is_closing(),
            "bodies to be held",
        )
        await settled(lambda: server.held_bytes)
        assert server.held_bytes <= server.connection_budget + 65536
        app.release.set()
        assert (await client.response()).status == 200
        for _ in range(20):
            reply = await client.response()
            assert reply.json() == {"length": 9_000, "sha256": sha256(body)}
        await until(lambda: server.held_bytes == 0, "every body's bytes to be released")


@aio
async def test_a_chunked_body_of_tiny_chunks_is_one_buffer():
    async with serving(App(), max_body_bytes=100_000) as server, connect(server) as client:
        chunks = b"".join(b"1\r\nz\r\n" for _ in range(50_000)) + b"0\r\n\r\n"
        head = request("POST", "/digest", headers=(("Transfer-Encoding", "chunked"),))
        await client.send(head + chunks)
        reply = await client.response()
        assert reply.json() == {"length": 50_000, "sha256": sha256(b"z" * 50_000)}
        assert server.held_bytes == 0


@aio
async def test_the_guard_refuses_before_the_handler_runs():
    app = App()

    def guard(req: Request) -> tuple[int, str] | None:
        if req.origin is not None:
            return 403, f"origin {req.origin.decode()} is not allowed"
        return None

    async with serving(app, guard=guard) as server, connect(server) as client:
        reply = await client.ask(
            "POST", "/x", headers=(("Origin", "http://evil.test"),), body=b"{}"
        )
        assert_error_json(reply, 403)
        assert "evil.test" in reply.json()["cause"]
        assert not app.seen
        assert (await client.ask("GET", "/fixed")).status == 200
        assert app.seen[0].host == b"test"
