"""The query port's OpenAPI 3.1 description, served at ``GET /openapi.json``.

The one place that describes the query routes: ``/{app}/predict``,
``/{app}/update``, ``/health``, ``/ready``, ``/metrics`` and the Open Inference
Protocol under ``/v2`` (whose errors have that protocol's shape,
``{"error": msg}``). ``tests/frontend/test_openapi.py`` checks it with
openapi-spec-validator and against the routes :class:`~.query.QueryFrontend`
and :class:`~.oip.OIPFrontend` really dispatch; docs/reference/openapi.md
publishes it.
"""

from __future__ import annotations

import functools
from typing import Any

from ..http.openapi import HTTP_ERRORS, Schema, document, errors, json_body, ok, ref
from ..types import _NAME_RE, InputType
from .oip_tensors import DATATYPES

NAME_PATTERN = f"^{_NAME_RE.pattern}$"

_ANY_KEY: list[dict[str, list[str]]] = [{}, {"apiKey": []}]  # open, unless the app has API keys

_DIGIT = [0, 0, 2, 10, 7, 0, 0, 0, 0, 0, 14, 16, 16, 15, 1, 0, 0, 4, 16, 7, 3, 16, 7, 0]
_DIGIT += [0, 5, 16, 10, 7, 16, 4, 0, 0, 0, 5, 14, 14, 16, 4, 0, 0, 0, 0, 0, 0, 16, 2, 0]
_DIGIT += [0, 0, 4, 7, 7, 16, 2, 0, 0, 0, 5, 12, 16, 12, 0, 0]

_INPUT: Schema = {
    "description": (
        "One input of the app's input type: "
        + ", ".join(f"`{t.value}`" for t in InputType)
        + ". `integers`, `floats`, `doubles`: an array of numbers (nested arrays for "
        "more dimensions; an app with an `input_shape` takes only that shape); "
        "`strings`: a string; `bytes`: a base64 string; `json`: any JSON value."
    ),
    "examples": [[1.5, 2.0, 3.0], "some text"],
}

SCHEMAS: dict[str, Schema] = {
    "Input": _INPUT,
    "Uid": {
        "description": "The user, for per-user selection state",
        "oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}],
    },
    "PredictRequest": {
        "type": "object",
        "description": "Exactly one of `input` and `input_batch`.",
        "properties": {
            "input": ref("Input"),
            "input_batch": {
                "type": "array",
                "minItems": 1,
                "items": ref("Input"),
                "description": "several queries, answered in order (at most --max-batch-inputs)",
            },
            "version": {
                "type": "string",
                "minLength": 1,
                "description": "run on this version of the model (an app with one linked model)",
            },
            "uid": ref("Uid"),
        },
        "oneOf": [{"required": ["input"]}, {"required": ["input_batch"]}],
        "additionalProperties": False,
    },
    "Prediction": {
        "type": "object",
        "properties": {
            "query_id": {"type": "integer", "description": "unique per server process"},
            "output": {"description": "the model's output (any JSON value), or the default"},
            "default": {"type": "boolean", "description": "`output` is the default output"},
            "default_explanation": {"type": "string", "description": "why, when `default`"},
            "confidence": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "combining policies: how likely `output` is right",
            },
            "missing_models": {
                "type": "array",
                "items": {"type": "string"},
                "description": "combining policies: linked models that did not answer in time",
            },
        },
        "required": ["query_id", "output", "default"],
        "additionalProperties": False,
    },
    "BatchPrediction": {
        "type": "object",
        "properties": {
            "batch_predictions": {
                "type": "array",
                "items": ref("Prediction"),
                "description": "one prediction per input, in order",
            }
        },
        "required": ["batch_predictions"],
        "additionalProperties": False,
    },
    "UpdateRequest": {
        "type": "object",
        "properties": {
            "uid": ref("Uid"),
            "input": ref("Input"),
            "label": {"not": {"type": "null"}, "description": "the true answer for `input`"},
        },
        "required": ["uid", "input", "label"],
        "additionalProperties": False,
    },
    "UpdateResponse": {
        "type": "object",
        "properties": {
            "accepted": {"type": "boolean"},
            "cause": {"type": "string", "description": "why not, when not accepted"},
        },
        "required": ["accepted"],
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "properties": {"status": {"const": "ok"}},
        "required": ["status"],
    },
    "Ready": {
        "type": "object",
        "properties": {"ready": {"type": "boolean"}},
        "required": ["ready"],
    },
    # -- the Open Inference Protocol -------------------------------------------------
    "OIPError": {
        "type": "object",
        "description": "The Open Inference Protocol's error shape",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "version", "extensions"],
    },
    "TensorMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["name", "datatype", "shape"],
    },
    "Datatype": {"type": "string", "enum": sorted(DATATYPES)},
    "ModelMetadata": {
        "type": "object",
        "description": "An app, as a model of the protocol",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": ref("TensorMetadata")},
            "outputs": {"type": "array", "items": ref("TensorMetadata")},
            "parameters": {"type": "object"},
        },
        "required": ["name", "platform", "inputs", "outputs"],
    },
    "ModelReady": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        "required": ["name", "ready"],
    },
    "Parameters": {"type": "object", "additionalProperties": True},
    "RequestInput": {
        "type": "object",
        "description": "A tensor whose rows are the queries",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": ref("Datatype"),
            "parameters": ref("Parameters"),
            "data": {"description": "the elements, flat or nested (absent with binary data)"},
        },
        "required": ["name", "shape", "datatype"],
    },
    "RequestOutput": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "parameters": ref("Parameters")},
        "required": ["name"],
    },
    "InferenceRequest": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": ref("Parameters"),
            "inputs": {"type": "array", "items": ref("RequestInput"), "minItems": 1},
            "outputs": {"type": "array", "items": ref("RequestOutput")},
        },
        "required": ["inputs"],
    },
    "ResponseOutput": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": ref("Datatype"),
            "parameters": ref("Parameters"),
            "data": {"type": "array"},
        },
        "required": ["name", "shape", "datatype"],
    },
    "InferenceResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": ref("Parameters"),
            "outputs": {"type": "array", "items": ref("ResponseOutput")},
        },
        "required": ["model_name", "outputs"],
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": "One of the app's API keys, for apps that have `api_keys` (app options)",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's `--metrics-token`, when one is set",
    },
}

_APP = {
    "name": "app",
    "in": "path",
    "required": True,
    "description": "The application's name",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
    "example": "digits",
}
_MODEL = {**_APP, "name": "model_name", "description": "An application, as a model"}
_VERSION = {
    "name": "model_version",
    "in": "path",
    "required": True,
    "description": "A version of the app's linked model (an app with one linked model)",
    "schema": {"type": "string"},
}


def _predict() -> dict[str, Any]:
    return {
        "post": {
            "operationId": "predict",
            "tags": ["queries"],
            "summary": "One query, or a batch of queries",
            "description": (
                "Every query is answered within the app's SLO: by the models, or "
                "with the app's default output (`default: true`). The `Content-Type` "
                "is not checked."
            ),
            "parameters": [_APP],
            "security": _ANY_KEY,
            "requestBody": json_body(ref("PredictRequest"), "the query", {"input": _DIGIT}),
            "responses": {
                "200": ok(
                    {"oneOf": [ref("Prediction"), ref("BatchPrediction")]},
                    "A prediction for `input`; for `input_batch`, one per input, in order",
                    {"query_id": 0, "output": 9, "default": False},
                ),
                **errors(
                    [*HTTP_ERRORS, 401, 404, 405, 503],
                    notes={
                        401: "The app has API keys and `X-Api-Key` carries none of them",
                        503: 'Overloaded, when the app\'s option `overload` is `"503"`',
                    },
                ),
            },
        }
    }


def _update() -> dict[str, Any]:
    return {
        "post": {
            "operationId": "update",
            "tags": ["queries"],
            "summary": "Feedback for the app's selection policy",
            "parameters": [_APP],
            "security": _ANY_KEY,
            "requestBody": json_body(
                ref("UpdateRequest"), "the feedback", {"uid": 7, "input": [1.0, 2.0], "label": 3}
            ),
            "responses": {
                "200": ok(ref("UpdateResponse"), "Recorded, or why not", {"accepted": True}),
                **errors(
                    [*HTTP_ERRORS, 401, 404, 405, 503],
                    notes={503: "The config store could not record the feedback"},
                ),
            },
        }
    }


def _get(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    tags: list[str],
    parameters: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation_id,
        "tags": tags,
        "summary": summary,
        "security": security if security is not None else [],
        "responses": responses,
    }
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    return {"get": op}


def _oip_errors(*statuses: int) -> dict[str, Any]:
    return errors([*HTTP_ERRORS, 405, *statuses], schema=ref("OIPError"))


def _oip_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2": _get(
            "v2ServerMetadata",
            "Server metadata",
            {
                "200": ok(
                    ref("ServerMetadata"),
                    "The server",
                    {"name": "clipper", "version": "0.1.0", "extensions": ["binary_tensor_data"]},
                ),
                **_oip_errors(),
            },
            tags=["oip"],
        ),
        "/v2/health/live": _get(
            "v2Live",
            "Liveness",
            {
                "200": ok(
                    {"type": "object", "properties": {"live": {"type": "boolean"}}},
                    "Live",
                    {"live": True},
                ),
                **_oip_errors(),
            },
            tags=["oip"],
        ),
        "/v2/health/ready": _get(
            "v2Ready",
            "Readiness",
            {
                "200": ok(ref("Ready"), "Ready", {"ready": True}),
                "503": ok(ref("Ready"), "Not ready yet", {"ready": False}),
                **_oip_errors(),
            },
            tags=["oip"],
        ),
    }
    for versioned in (False, True):
        base = "/v2/models/{model_name}" + ("/versions/{model_version}" if versioned else "")
        params = [_MODEL, _VERSION] if versioned else [_MODEL]
        suffix = "Version" if versioned else ""
        paths[base] = _get(
            f"v2ModelMetadata{suffix}",
            "Model metadata: the app's input type and shape, its policy and models",
            {
                "200": ok(ref("ModelMetadata"), "The app, as a model"),
                **_oip_errors(400, 401, 404),
            },
            tags=["oip"],
            parameters=params,
            security=_ANY_KEY,
        )
        paths[f"{base}/ready"] = _get(
            f"v2ModelReady{suffix}",
            "Whether a linked model has a live replica",
            {
                "200": ok(ref("ModelReady"), "Ready", {"name": "digits", "ready": True}),
                "503": ok(ref("ModelReady"), "Not ready", {"name": "digits", "ready": False}),
                **_oip_errors(400, 401, 404),
            },
            tags=["oip"],
            parameters=params,
            security=_ANY_KEY,
        )
        paths[f"{base}/infer"] = {
            "post": {
                "operationId": f"v2Infer{suffix}",
                "tags": ["oip"],
                "summary": "Inference: the rows of the input tensor are the queries",
                "description": (
                    "JSON, or the binary tensor extension: a JSON header of "
                    "`Inference-Header-Content-Length` bytes followed by the raw "
                    "tensors. A `Content-Encoding` of gzip or deflate is accepted."
                ),
                "parameters": [
                    *params,
                    {
                        "name": "Inference-Header-Content-Length",
                        "in": "header",
                        "required": False,
                        "description": "binary extension: the length of the JSON header",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "security": _ANY_KEY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": ref("InferenceRequest"),
                            "example": {
                                "inputs": [
                                    {
                                        "name": "input",
                                        "shape": [1, 3],
                                        "datatype": "FP64",
                                        "data": [1.0, 2.0, 3.0],
                                    }
                                ]
                            },
                        },
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            }
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The outputs (binary when the request asked for it)",
                        "headers": {
                            "Inference-Header-Content-Length": {
                                "description": "binary answers: the JSON header's length",
                                "schema": {"type": "integer"},
                            }
                        },
                        "content": {
                            "application/json": {"schema": ref("InferenceResponse")},
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                }
                            },
                        },
                    },
                    **_oip_errors(400, 401, 404, 503),
                },
            }
        }
    return paths


def _paths() -> dict[str, Any]:
    return {
        "/{app}/predict": _predict(),
        "/{app}/update": _update(),
        "/health": _get(
            "health",
            "Liveness",
            {"200": ok(ref("Health"), "The server is up", {"status": "ok"})},
            tags=["health"],
        ),
        "/ready": _get(
            "ready",
            "Readiness: the store is read and the server answers queries",
            {
                "200": ok(ref("Ready"), "Ready", {"ready": True}),
                "503": ok(ref("Ready"), "Not ready yet", {"ready": False}),
            },
            tags=["health"],
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics (text format, or OpenMetrics when asked)",
            {
                "200": {
                    "description": "The exposition",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                },
                **errors([401, 405], notes={401: "The server has a metrics token"}),
            },
            tags=["health"],
            security=[{}, {"metricsToken": []}],
        ),
        **_oip_paths(),
    }


@functools.cache
def query_openapi() -> dict[str, Any]:
    """The query port's OpenAPI 3.1 document (made once; do not modify it)."""
    return document(
        title="Clipper query API",
        description=(
            "The query port (1337 by default): Clipper's REST API and the Open "
            'Inference Protocol v2. Errors are `{"error", "cause"}`, except under '
            '`/v2`, whose errors are `{"error"}`. The admin token is never sent '
            "here, nor accepted."
        ),
        paths=_paths(),
        schemas=SCHEMAS,
        security_schemes=SECURITY_SCHEMES,
        tags=[
            {"name": "queries", "description": "Predictions and feedback"},
            {"name": "health", "description": "Liveness, readiness, metrics"},
            {"name": "oip", "description": "The Open Inference Protocol v2 (KServe v2)"},
        ],
    )
