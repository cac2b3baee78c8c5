"""The query frontend: a thin ASGI app for ``/{app}/predict``, ``/health``, ``/ready``.

No framework sits on this path (DESIGN.md: measured 40 % faster than a
router). It parses, validates, calls the query processor and encodes;
exceptions become JSON errors here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from ..exceptions import InputError, PayloadTooLarge, StoreError, ValidationError
from ..selection.processor import Overloaded, QueryProcessor
from ..store.catalog import AppRoute, Catalog
from ..types import json_default
from .http import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    api_key_matches,
    read_body,
    send_bytes,
    send_error,
    send_json,
    serve,
)
from .inputs import parse_predict_body, parse_update_body

log = logging.getLogger("clipper.frontend")


class QueryFrontend:
    """ASGI application of the query port."""

    def __init__(
        self,
        catalog: Catalog,
        processor: QueryProcessor,
        *,
        max_body_bytes: int,
        is_ready: Callable[[], bool] = lambda: True,
        v2: ASGIApp | None = None,
        metrics: ASGIApp | None = None,
        max_batch_inputs: int = 10_000,
    ) -> None:
        self.max_batch_inputs = max_batch_inputs
        self.v2 = v2  # the Open Inference Protocol, under /v2
        self.metrics = metrics  # GET /metrics
        self.catalog = catalog
        self.processor = processor
        self.max_body_bytes = max_body_bytes
        self.is_ready = is_ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve(self._route, scope, receive, send, log)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/health":
            await send_json(send, 200, {"status": "ok"})
            return
        if path == "/ready":
            ready = self.is_ready()
            await send_json(send, 200 if ready else 503, {"ready": ready})
            return
        if self.v2 is not None and (path == "/v2" or path.startswith("/v2/")):
            await self.v2(scope, receive, send)
            return
        if path == "/metrics" and self.metrics is not None:
            await self.metrics(scope, receive, send)
            return
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[1] in ("predict", "update"):
            if method != "POST":
                await send_error(send, 405, "method not allowed", f"use POST for {path}")
                return
            if parts[1] == "predict":
                await self._predict(parts[0], scope, receive, send)
            else:
                await self._update(parts[0], scope, receive, send)
            return
        await send_error(send, 404, "not found", f"no route {method} {path}")

    async def _body(
        self, app: str, scope: Scope, receive: Receive, send: Send
    ) -> tuple[AppRoute, bytes] | None:
        """The app's route and the request body, or None once an error is sent."""
        route = self.catalog.app(app)
        if route is None:
            await send_error(send, 404, "unknown app", f"no application named {app!r}")
            return None
        keys = route.spec.options.get("api_key_sha256")
        if keys and not api_key_matches(scope, keys):
            await send_error(
                send, 401, "unauthorized", f"app {app!r} needs its API key in 'X-Api-Key'"
            )
            return None
        try:
            return route, await read_body(scope, receive, self.max_body_bytes)
        except PayloadTooLarge as exc:
            await send_error(send, 413, "request body too large", str(exc))
            return None

    async def _predict(self, app: str, scope: Scope, receive: Receive, send: Send) -> None:
        got = await self._body(app, scope, receive, send)
        if got is None:
            return
        route, body = got
        spec = route.spec
        try:
            request = parse_predict_body(body, spec.input_type, spec.input_shape)
            if len(request.inputs) > self.max_batch_inputs:
                raise InputError(
                    f"input_batch has {len(request.inputs)} inputs; the limit is "
                    f"{self.max_batch_inputs}"
                )
            predictions = await self.processor.predict(
                route, request.inputs, request.version, request.uid
            )
        except InputError as exc:
            await send_error(send, 400, "invalid input", str(exc))
            return
        except ValidationError as exc:
            await send_error(send, 400, "invalid request", str(exc))
            return
        except Overloaded as exc:
            await send_error(send, 503, "overloaded", str(exc))
            return
        if request.is_batch:
            payload: object = {"batch_predictions": [p.to_json() for p in predictions]}
        else:
            payload = predictions[0].to_json()
        await send_bytes(
            send, 200, orjson.dumps(payload, default=json_default, option=orjson.OPT_NON_STR_KEYS)
        )

    async def _update(self, app: str, scope: Scope, receive: Receive, send: Send) -> None:
        got = await self._body(app, scope, receive, send)
        if got is None:
            return
        route, body = got
        try:
            request = parse_update_body(body, route.spec.input_type, route.spec.input_shape)
        except InputError as exc:
            await send_error(send, 400, "invalid feedback", str(exc))
            return
        try:
            result = await self.processor.feedback(route, request.uid, request.input, request.label)
        except StoreError as exc:
            await send_error(send, 503, "store unavailable", f"feedback not recorded: {exc}")
            return
        except ValueError as exc:  # a label the app's loss cannot score
            await send_error(send, 400, "invalid feedback", str(exc))
            return
        await send_json(send, 200, result)
