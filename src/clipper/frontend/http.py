"""Small ASGI helpers shared by the query and management frontends."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from logging import Logger
from typing import Any

import orjson

from ..exceptions import PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


def content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, or PayloadTooLarge as soon as it exceeds ``limit``."""
    declared = content_length(scope)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS
) -> None:
    # An explicit length: clients need not parse chunked encoding.
    if not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any) -> None:
    await send_bytes(send, status, orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))


async def send_error(send: Send, status: int, error: str, cause: str) -> None:
    """Clipper's error shape: ``{"error": short, "cause": detail}``."""
    await send_json(send, status, {"error": error, "cause": cause})


Route = Callable[[Scope, Receive, Send], Awaitable[None]]
ASGIApp = Route


async def serve(route: Route, scope: Scope, receive: Receive, send: Send, log: Logger) -> None:
    """Run one ASGI call: lifespan events, HTTP through ``route``, errors as JSON.

    The last line of defence: an unexpected exception becomes a JSON 500 with
    the exception's type only, never a traceback to the client.
    """
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    try:
        await route(scope, receive, send)
    except Exception as exc:
        log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
        await send_error(send, 500, "internal error", type(exc).__name__)


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge ASGI lifespan events; the server process owns start-up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _unused_api_key_matches(headers: list[tuple[bytes, bytes]], digests: list[str]) -> bool:
    """Whether the request's ``X-Api-Key`` hashes to one of the app's key digests."""
    offered = b""
    for name, value in headers:
        if name == b"x-api-key":
            offered = value
    digest = hashlib.sha256(offered).hexdigest().encode()
    # Compare against every key, in constant time each, without stopping early.
    return sum(hmac.compare_digest(digest, d.encode()) for d in digests) > 0
