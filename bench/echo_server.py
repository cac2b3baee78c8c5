"""The Python HTTP ceiling: a bare ASGI callable on uvicorn, no model, no RPC.

It does what every predict server must do and nothing else: read the body,
parse the JSON with orjson straight into a numpy array (``np.asarray``), and
answer a small JSON document. uvicorn runs one worker with httptools and
uvloop, access log off. ``python -m bench.echo_server --port N`` (used by
``bench/peers.py`` and ``bench/wrk.py``, which pin it to the server's core).

The same work under two other HTTP layers, for ``bench/http_ceiling.py``:
``--server protocol``, an ``asyncio.Protocol`` on httptools and uvloop with no
ASGI in between (what Clipper's own HTTP server is built on), and
``--server granian``, Granian (a Rust HTTP server) with one worker calling
:func:`rsgi_app` through its RSGI interface. Granian is not a dependency
(``.venv/bin/pip install granian``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import numpy as np
import orjson

Message = MutableMapping[str, Any]
HEADERS = [(b"content-type", b"application/json")]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # The work is spelled out here rather than calling answer(): this is the
    # baseline bench/peers.py and bench/wrk.py measure, left as it was.
    message = await receive()
    body: bytes = message.get("body", b"")
    if message.get("more_body", False):
        chunks = [body]
        while message.get("more_body", False):
            message = await receive()
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
    status = 200
    try:
        x = np.asarray(orjson.loads(body)["input"], dtype=np.float64)
        out = orjson.dumps({"output": int(x.shape[0])})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        status, out = 400, b'{"error":"bad input"}'
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": out})


def answer(body: bytes) -> tuple[int, bytes]:
    """What :func:`app` does with a body, for the other HTTP layers."""
    try:
        x = np.asarray(orjson.loads(body)["input"], dtype=np.float64)
        return 200, orjson.dumps({"output": int(x.shape[0])})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 400, b'{"error":"bad input"}'


# -- the same, without ASGI: an asyncio.Protocol on httptools --------------------------------

REASONS = {200: b"OK", 400: b"Bad Request"}


class EchoProtocol(asyncio.Protocol):
    """One connection: httptools parses, :func:`answer` answers, keep-alive as asked."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.error:
            self._send(400, b'{"error":"bad request"}', keep_alive=False)

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.chunks = []

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        status, out = answer(b"".join(self.chunks))
        self._send(status, out, keep_alive=self.parser.should_keep_alive())

    def _send(self, status: int, body: bytes, *, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
            % (status, REASONS[status], len(body), b"" if keep_alive else b"connection: close\r\n")
        )
        self.transport.write(head + body)
        if not keep_alive:
            self.transport.close()


def serve_protocol(host: str, port: int) -> None:
    import uvloop

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(EchoProtocol, host, port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


# -- the same under Granian (Rust), its RSGI interface ---------------------------------------

RSGI_HEADERS = [("content-type", "application/json")]


async def rsgi_app(scope: Any, protocol: Any) -> None:
    """The echo as an RSGI application (Granian's own interface, no ASGI layer)."""
    if scope.proto != "http":
        return
    status, out = answer(await protocol())
    protocol.response_bytes(status, RSGI_HEADERS, out)


def serve_granian(host: str, port: int) -> None:
    from granian import Granian  # not a dependency: pip install granian

    Granian(
        "bench.echo_server:rsgi_app",
        address=host,
        port=port,
        interface="rsgi",
        workers=1,
        log_level="warning",
    ).serve()


SERVERS = ("uvicorn", "protocol", "granian")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.echo_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="uvicorn",
        help="the HTTP layer: uvicorn (ASGI, the default), protocol (asyncio.Protocol on "
        "httptools), granian (RSGI; pip install granian)",
    )
    args = parser.parse_args(argv)
    if args.server == "protocol":
        serve_protocol(args.host, args.port)
        return
    if args.server == "granian":
        serve_granian(args.host, args.port)
        return
    import uvicorn

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
