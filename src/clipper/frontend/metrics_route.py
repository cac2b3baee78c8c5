"""``GET /metrics`` on the query port: the HTTP side of the Prometheus exposition.

The metrics layer makes the bytes and their content type
(:meth:`clipper.metrics.Metrics.exposition`); this adapter checks the method
and, when the server has a ``metrics_token``, the bearer token, and answers.
"""

from __future__ import annotations

from collections.abc import Callable

from ..http.auth import token_matches
from ..http.server import Request, Response, json_error

# Renders the exposition for a request's Accept header: (body, content type).
Exposition = Callable[[str], tuple[bytes, str]]

_NO_STORE = ((b"cache-control", b"no-store"),)


def metrics_route(exposition: Exposition, token: str = "") -> Callable[[Request], Response]:
    """The handler of ``GET /metrics``: open (for Prometheus), or behind ``token``
    (``Authorization: Bearer <token>``) when one is given."""
    secret = token.encode()

    def respond(request: Request) -> Response:
        if secret and not token_matches(request.header(b"authorization"), secret):
            return json_error(
                request.path,
                401,
                "unauthorized",
                "/metrics needs 'Authorization: Bearer <metrics_token>'",
            )
        if request.method not in ("GET", "HEAD"):
            return json_error(request.path, 405, "method not allowed", "use GET for /metrics")
        accept = (request.header(b"accept") or b"").decode("latin-1")
        body, content_type = exposition(accept)
        return Response(200, body, content_type.encode(), _NO_STORE)

    return respond
