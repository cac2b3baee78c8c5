"""The Python HTTP ceiling: a bare ASGI callable on uvicorn, no model, no RPC.

It does what every predict server must do and nothing else: read the body,
parse the JSON with orjson straight into a numpy array (``np.asarray``), and
answer a small JSON document. uvicorn runs one worker with httptools and
uvloop, access log off. ``python -m bench.echo_server --port N`` (used by
``bench/peers.py``, which pins it to the server's core).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
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
