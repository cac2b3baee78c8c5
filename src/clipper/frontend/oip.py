"""The Open Inference Protocol v2 ("KServe v2") under ``/v2``, beside Clipper's API.

Each app appears as a model of the same name, so ``tritonclient[http]`` and
other KServe v2 clients work unchanged. Queries go through the same layers as
``/{app}/predict`` (selection, cache, batching, the app's SLO); the rows of
the request's input tensor are the queries. See docs/oip.md.

Routes (errors are ``{"error": msg}``):

- ``GET /v2``: server metadata; ``GET /v2/health/live``, ``/v2/health/ready``
- ``GET /v2/models/{app}[/versions/{v}]``: model metadata
- ``GET /v2/models/{app}[/versions/{v}]/ready``: 200 when a linked model has a
  live replica, else 503
- ``POST /v2/models/{app}[/versions/{v}]/infer``

The version segment pins the linked model's version; it needs an app with
exactly one linked model (a 400 otherwise). The gRPC endpoint (:mod:`.oip_grpc`)
serves the same models through :class:`OIPFrontend`'s shared methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..exceptions import PayloadTooLarge, ValidationError
from ..http.auth import api_key_matches
from ..http.server import Request, Response, json_response
from ..selection.processor import Overloaded, Prediction, QueryProcessor
from ..store.catalog import AppRoute, Catalog, UnknownVersion
from ..types import NUMERIC_FORMATS, ModelId
from .oip_request import (
    DEFAULT_OUTPUT_NAME,
    InferRequest,
    app_queries,
    decompress,
    default_value,
    encode_response,
    parse_infer_request,
)
from .oip_tensors import DATATYPES

log = logging.getLogger("clipper.frontend.oip")

EXTENSIONS = ["binary_tensor_data"]
# The datatype metadata names for a numeric app: the protocol's name of its dtype.
_DATATYPE_OF = {dtype.str: name for name, dtype in DATATYPES.items() if dtype is not None}
_INPUT_DATATYPES = {t: _DATATYPE_OF[f.dtype] for t, f in NUMERIC_FORMATS.items()}


class OIPError(Exception):
    """An error answer: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OIPFrontend:
    """The handler of ``/v2/...`` on the query port."""

    def __init__(
        self,
        catalog: Catalog,
        processor: QueryProcessor,
        *,
        max_body_bytes: int,
        max_batch_inputs: int = 10_000,
        is_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.catalog = catalog
        self.processor = processor
        self.max_body_bytes = max_body_bytes
        self.max_batch_inputs = max_batch_inputs  # most queries (rows) one request may carry
        self.is_ready = is_ready

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except OIPError as exc:
            return error(exc.status, str(exc))
        except PayloadTooLarge as exc:
            return error(413, str(exc))
        except ValidationError as exc:  # InputError included
            return error(400, str(exc))
        except Overloaded as exc:
            return error(503, f"overloaded: {exc}")

    async def _route(self, request: Request) -> Response:
        method = request.method
        parts = request.path[3:].strip("/").split("/")  # after "/v2"
        if parts == [""]:
            self._method(method, "GET")
            return json_response(
                200, {"name": "clipper", "version": __version__, "extensions": EXTENSIONS}
            )
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            self._method(method, "GET")
            ok = parts[1] == "live" or self.is_ready()
            return json_response(200 if ok else 503, {parts[1]: ok})
        if parts[0] == "models" and len(parts) >= 2:
            name, rest = parts[1], parts[2:]
            self.check_api_key(name, request.headers)
            version = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if not rest:
                self._method(method, "GET")
                return json_response(200, self.metadata(name, version))
            if rest == ["ready"]:
                self._method(method, "GET")
                ready = self.ready(name, version)
                return json_response(200 if ready else 503, {"name": name, "ready": ready})
            if rest == ["infer"]:
                self._method(method, "POST")
                return await self._infer(name, version, request)
        raise OIPError(404, f"no route {method} {request.path}")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise OIPError(405, f"method {method} not allowed here; use {allowed}")

    # -- models (shared with the gRPC endpoint, .oip_grpc) --------------------------------

    def check_api_key(
        self, name: str, headers: list[tuple[bytes, bytes]], where: str = "'X-Api-Key'"
    ) -> None:
        """Refuse (401) a request for an app with API keys that lacks a matching
        ``X-Api-Key`` (over gRPC: the ``x-api-key`` metadata, ``where`` says)."""
        app = self.catalog.app(name)
        keys = app.spec.options.api_key_sha256 if app is not None else ()
        if keys and not api_key_matches(headers, list(keys)):
            raise OIPError(401, f"model '{name}' needs its API key in {where}")

    def resolve(self, name: str, version: str | None) -> AppRoute:
        """The app named ``name``, checking a version pin against its linked model."""
        route = self.catalog.app(name)
        if route is None:
            raise OIPError(404, f"unknown model '{name}': no application of that name")
        if version is not None:
            try:
                self.catalog.pinned(route, version)  # a ValidationError is a 400
            except UnknownVersion as exc:
                raise OIPError(
                    404, f"unknown version '{version}' of model '{name}' ({exc.model.name})"
                ) from None
        return route

    def _versions(self, route: AppRoute) -> list[str]:
        if len(route.models) != 1:
            return []
        linked = route.models[0]
        return sorted(m.version for m in self.catalog.snapshot.models if m.name == linked)

    def model_version(self, route: AppRoute, version: str | None) -> str:
        """The version an answer reports: the pin, the linked model's current
        version, or the selection policy's name for several models."""
        if version is not None:
            return version
        if len(route.models) == 1:
            return self.catalog.current_version(route.models[0]) or ""
        return route.spec.policy if route.models else ""

    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        route = self.resolve(name, version)
        spec = route.spec
        datatype = _INPUT_DATATYPES.get(spec.input_type, "BYTES")
        if spec.input_shape is not None and spec.input_type.is_numeric:
            shape = [-1, *spec.input_shape]
        else:
            shape = [-1, -1] if spec.input_type.is_numeric else [-1]
        return {
            "name": name,
            "versions": self._versions(route),
            "platform": "clipper",
            "inputs": [{"name": "input", "datatype": datatype, "shape": shape}],
            "outputs": [
                {
                    "name": DEFAULT_OUTPUT_NAME,
                    "datatype": _output_hint(spec.default_output),
                    "shape": [-1],
                }
            ],
            "parameters": {
                "clipper_input_type": spec.input_type.value,
                "clipper_selection_policy": spec.policy,
                "clipper_linked_models": list(route.models),
                "clipper_slo_micros": spec.slo_micros,
            },
        }

    def ready(self, name: str, version: str | None) -> bool:
        route = self.resolve(name, version)
        live = self.processor.dispatcher.live_replicas
        if version is not None:
            return live(ModelId(route.models[0], version)) > 0
        for model in route.models:
            current = self.catalog.current_version(model)
            if current is not None and live(ModelId(model, current)) > 0:
                return True
        return False

    # -- inference ---------------------------------------------------------------------

    async def _infer(self, name: str, version: str | None, http: Request) -> Response:
        route = self.resolve(name, version)
        body = http.body
        header_length = encoding = None
        for key, value in http.headers:
            if key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
        if encoding is not None:
            body = decompress(body, encoding, self.max_body_bytes)
        request = parse_infer_request(body, header_length, route.spec, self.max_batch_inputs)
        model_version, predictions = await self.predict(route, version, request)
        payload, json_length = encode_response(
            name,
            model_version,
            request,
            [p.output for p in predictions],
            [p.default for p in predictions],
            [p.explanation for p in predictions],
            [p.confidence for p in predictions],
        )
        if json_length is None:
            return Response(200, payload)
        return Response(
            200,
            payload,
            b"application/octet-stream",
            ((b"inference-header-content-length", json_length.encode()),),
        )

    async def predict(
        self, route: AppRoute, version: str | None, request: InferRequest
    ) -> tuple[str, list[Prediction]]:
        """The predictions for a parsed request's rows, and the version the answer
        reports; either transport encodes them."""
        inputs = app_queries(request.tensor, route.spec)
        predictions = await self.processor.predict(
            route, inputs, version, request.uid, timeout_s=request.timeout_s
        )
        return self.model_version(route, version), predictions


def error(status: int, message: str) -> Response:
    """The protocol's error shape: ``{"error": message}``."""
    return json_response(status, {"error": message})


def _output_hint(default_output: str) -> str:
    """The output datatype metadata reports: apps do not declare one, so infer it
    from the default output, as answers treat it (a number → INT64 or FP64)."""
    value = default_value(default_output)
    if isinstance(value, int):
        return "INT64"
    return "FP64" if isinstance(value, float) else "BYTES"
