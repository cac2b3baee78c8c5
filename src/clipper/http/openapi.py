"""OpenAPI 3.1: what both ports' descriptions share, and ``GET /openapi.json``.

Each port describes itself from one place in code: :mod:`clipper.frontend.openapi`
(the query port) and :mod:`clipper.management.openapi` (the management port)
build a plain dict with the helpers here; the frontends serve it, and the
tests check it with a validator and against the routes the handlers really
dispatch (``tests/frontend/test_openapi.py``). The documentation site
publishes the same documents (``docs/assets/hooks.py``).

The description is served without credentials (it describes, it changes
nothing), as bytes made once, with an ``ETag`` and a short ``max-age``: it
changes only when the server is upgraded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from .. import __version__
from .server import Request, Response, json_error

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
CACHE_CONTROL = b"public, max-age=300"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to ``#/components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


ERROR_SCHEMA: Schema = {
    "type": "object",
    "description": "Clipper's error body: a short error and a detail naming the problem.",
    "properties": {
        "error": {"type": "string", "description": "what went wrong, in a few words"},
        "cause": {"type": "string", "description": "the detail: which field, name or limit"},
    },
    "required": ["error", "cause"],
    "additionalProperties": False,
    "examples": [{"error": "unknown app", "cause": "no application named 'nope'"}],
}

# What each status means, for the error responses of both ports.
STATUS_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: a body, field or value the route does not take (the cause names it)",
    401: "Unauthorized: the credentials the route needs are missing or wrong",
    403: "Forbidden: a Host or Origin header this server does not answer to",
    404: "Not found: no such route, or no such app",
    405: "Method not allowed on this route",
    408: "Request timeout: the request did not arrive in time; the connection then closes",
    413: "Request body too large",
    415: "Unsupported media type: the route takes a JSON body (Content-Type: application/json)",
    431: "Request header fields too large; the connection then closes",
    500: "Internal error: a bug; the cause is the exception's type only",
    503: "Unavailable: overloaded, not ready, or the config store is down",
    507: "Insufficient storage: the server's disk is too full to take the upload",
}

# Every route may meet these: the HTTP server answers them before any handler.
HTTP_ERRORS = (400, 403, 408, 413, 431, 500)


def json_content(schema: Schema, example: Any = None) -> dict[str, Any]:
    """A ``content`` map of one JSON media type."""
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def json_body(schema: Schema, description: str, example: Any = None) -> dict[str, Any]:
    """A required JSON request body."""
    return {"required": True, "description": description, "content": json_content(schema, example)}


def ok(schema: Schema, description: str, example: Any = None) -> dict[str, Any]:
    """A JSON response."""
    return {"description": description, "content": json_content(schema, example)}


def errors(
    statuses: Iterable[int],
    schema: Schema | None = None,
    notes: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Error responses by status (as strings, as OpenAPI keys them), in ``schema``
    (default: Clipper's ``{"error", "cause"}``); ``notes`` override a description."""
    shape = schema if schema is not None else ref("Error")
    notes = notes or {}
    return {
        str(status): {
            "description": notes.get(status, STATUS_DESCRIPTIONS[status]),
            "content": json_content(shape),
        }
        for status in sorted(set(statuses))
    }


def openapi_operation() -> dict[str, Any]:
    """``GET /openapi.json`` itself, the same on both ports."""
    return {
        "get": {
            "operationId": "openapi",
            "tags": ["meta"],
            "summary": "This description (OpenAPI 3.1)",
            "description": (
                "Open: no credentials. Cached for five minutes, with an ETag "
                "(If-None-Match answers 304)."
            ),
            "security": [],
            "responses": {
                "200": ok({"type": "object"}, "The OpenAPI document of this port"),
                "304": {"description": "Not modified (If-None-Match matched the ETag)"},
                **errors([405]),
            },
        }
    }


def document(
    *,
    title: str,
    description: str,
    paths: dict[str, Any],
    schemas: dict[str, Schema],
    security_schemes: dict[str, Any],
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    """An OpenAPI 3.1 document; ``/openapi.json`` and the ``Error`` schema are added."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": __version__,
            "description": description,
            "license": {"name": "Apache 2.0", "identifier": "Apache-2.0"},
        },
        "tags": [*tags, {"name": "meta", "description": "The server describes itself"}],
        "paths": {**paths, OPENAPI_PATH: openapi_operation()},
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **schemas},
            "securitySchemes": security_schemes,
        },
    }


def serve(doc: dict[str, Any]) -> Callable[[Request], Response]:
    """The handler of ``GET /openapi.json`` for ``doc``: its bytes made once."""
    body = orjson.dumps(doc)
    etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()
    headers = (
        (b"cache-control", CACHE_CONTROL),
        (b"etag", etag),
        (b"x-content-type-options", b"nosniff"),
    )

    def respond(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return json_error(request.path, 405, "method not allowed", "use GET for /openapi.json")
        if etag in (request.header(b"if-none-match") or b""):
            return Response(304, b"", b"application/json", headers)
        return Response(200, body, b"application/json", headers)

    return respond
