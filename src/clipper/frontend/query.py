"""The query frontend: ``/{app}/predict``, ``/{app}/update``, ``/health``, ``/ready``.

No framework and no ASGI on this path: :mod:`.h1` hands :meth:`QueryFrontend.handle`
a whole request (body read, size checked) and writes the :class:`~.h1.Response`
it returns. It parses, validates, calls the query processor and encodes;
exceptions become JSON errors here and nowhere else. A prediction is answered
from callbacks (a :class:`~.h1.Later` on the processor's future): no task and no
coroutine per query. ``/v2`` (the Open Inference Protocol) and ``/metrics`` are
handlers of the same kind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson

from ..exceptions import InputError, StoreError, ValidationError
from ..http.auth import api_key_matches
from ..http.openapi import OPENAPI_PATH, serve
from ..http.server import Handler, Later, Request, Response, json_error, json_response
from ..selection.processor import Overloaded, Prediction, QueryProcessor
from ..store.catalog import AppRoute, Catalog
from ..types import AppSpec, DefaultReason, json_default
from .brownout import BROWNOUT, Brownout
from .inputs import parse_predict_body, parse_update_body
from .openapi import query_openapi

log = logging.getLogger("clipper.frontend")

_OK = orjson.dumps({"status": "ok"})


class QueryFrontend:
    """The query port's handler."""

    def __init__(
        self,
        catalog: Catalog,
        processor: QueryProcessor,
        *,
        is_ready: Callable[[], bool] = lambda: True,
        v2: Handler | None = None,
        v2_error: Callable[[int, str], Response] | None = None,
        metrics: Callable[[Request], Response] | None = None,
        max_batch_inputs: int = 10_000,
        brownout: Brownout | None = None,
    ) -> None:
        self.max_batch_inputs = max_batch_inputs
        # While the event loop runs late, a share of predict requests is
        # answered before its body is parsed (None: never).
        self.brownout = brownout
        self._unread: dict[str, tuple[AppSpec, bytes]] = {}  # app -> its unread answer's tail
        self.v2 = v2  # the Open Inference Protocol, under /v2
        self.v2_error = v2_error  # its error shape, for errors the HTTP layer answers
        self.metrics = metrics  # GET /metrics
        self.catalog = catalog
        self.processor = processor
        self.is_ready = is_ready
        self.openapi = serve(query_openapi())  # GET /openapi.json

    def error_page(self, path: str, status: int, error: str, cause: str) -> Response:
        """Errors the HTTP layer answers (400, 413, 431, 500), in the route's shape."""
        if self.v2_error is not None and _is_v2(path):
            return self.v2_error(status, f"{error}: {cause}")
        return json_error(path, status, error, cause)

    def handle(self, request: Request) -> Response | Later | Awaitable[Response]:
        path = request.path
        if self.v2 is not None and _is_v2(path):
            return self.v2(request)
        route = path.strip("/")
        if route.endswith("/predict") or route.endswith("/update"):
            parts = route.split("/")
            if len(parts) == 2:
                if request.method != "POST":
                    return _error(405, "method not allowed", f"use POST for {path}")
                if parts[1] == "predict":
                    return self._predict(parts[0], request)
                return self._update(parts[0], request)
        if path == "/health":
            return Response(200, _OK)
        if path == "/ready":
            ready = self.is_ready()
            return json_response(200 if ready else 503, {"ready": ready})
        if path == "/metrics" and self.metrics is not None:
            return self.metrics(request)
        if path == OPENAPI_PATH:
            return self.openapi(request)
        return _error(404, "not found", f"no route {request.method} {path}")

    def _route(self, app: str, request: Request) -> AppRoute | Response:
        """The app's route, or the error to answer."""
        route = self.catalog.app(app)
        if route is None:
            return _error(404, "unknown app", f"no application named {app!r}")
        keys = route.spec.options.api_key_sha256
        if keys and not api_key_matches(request.headers, list(keys)):
            return _error(401, "unauthorized", f"app {app!r} needs its API key in 'X-Api-Key'")
        return route

    def _predict(self, app: str, request: Request) -> Response | Later:
        """Parse and submit now; answer from the processor's callback (no task)."""
        route = self._route(app, request)
        if isinstance(route, Response):
            return route
        spec = route.spec
        brownout = self.brownout
        budget = None
        if brownout is not None:
            if brownout.sheds() and b'"input_batch"' not in request.body:
                return self._unread_answer(spec)
            budget = brownout.budget_s(spec.slo_micros / 1e6)
        try:
            query = parse_predict_body(
                request.body, spec.input_type, spec.input_shape, self.max_batch_inputs
            )
            pending = self.processor.predict_soon(
                route, query.inputs, query.version, query.uid, budget
            )
        except InputError as exc:
            return _error(400, "invalid input", str(exc))
        except ValidationError as exc:
            return _error(400, "invalid request", str(exc))
        if brownout is not None:
            brownout.answering(pending)
        return Later(pending, _batch_answer if query.is_batch else _single_answer)

    def _unread_answer(self, spec: AppSpec) -> Response:
        """The brownout's answer: the app's default output (or a 503), from bytes
        made once per app, the body never parsed."""
        processor = self.processor
        if spec.options.overload == "503":
            if processor.observer is not None:
                processor.observer.observe_overload(spec.name)
            return _error(503, "overloaded", BROWNOUT)
        cached = self._unread.get(spec.name)
        if cached is None or cached[0] is not spec:
            tail = orjson.dumps(
                {"output": spec.default_output, "default": True, "default_explanation": BROWNOUT}
            )
            cached = self._unread[spec.name] = (spec, b"," + tail[1:])
        qid = processor.next_query_id()
        if processor.observer is not None:
            default = Prediction(qid, spec.default_output, True, BROWNOUT, DefaultReason.OVERLOADED)
            processor.observer.observe_predictions(spec.name, 0.0, [default])
        return Response(200, b'{"query_id":%d%b' % (qid, cached[1]))

    async def _update(self, app: str, request: Request) -> Response:
        route = self._route(app, request)
        if isinstance(route, Response):
            return route
        try:
            feedback = parse_update_body(
                request.body, route.spec.input_type, route.spec.input_shape
            )
        except InputError as exc:
            return _error(400, "invalid feedback", str(exc))
        try:
            result = await self.processor.feedback(
                route, feedback.uid, feedback.input, feedback.label
            )
        except StoreError as exc:
            return _error(503, "store unavailable", f"feedback not recorded: {exc}")
        except ValueError as exc:  # a label the app's loss cannot score
            return _error(400, "invalid feedback", str(exc))
        return json_response(200, result)


def _answer(pending: asyncio.Future[list[Prediction]]) -> list[Prediction] | Response:
    """The predictions, or the response for why there are none."""
    try:
        return pending.result()
    except Overloaded as exc:
        return _error(503, "overloaded", str(exc))


def _single_answer(pending: asyncio.Future[list[Prediction]]) -> Response:
    predictions = _answer(pending)
    if isinstance(predictions, Response):
        return predictions
    return _json(predictions[0].to_json())


def _batch_answer(pending: asyncio.Future[list[Prediction]]) -> Response:
    predictions = _answer(pending)
    if isinstance(predictions, Response):
        return predictions
    return _json({"batch_predictions": [p.to_json() for p in predictions]})


def _json(payload: object) -> Response:
    return Response(
        200, orjson.dumps(payload, default=json_default, option=orjson.OPT_NON_STR_KEYS)
    )


def _error(status: int, error: str, cause: str) -> Response:
    return json_error("", status, error, cause)


def _is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")
