"""The /v2 handler against a fake processor: routes, statuses, metadata, how a
request reaches QueryProcessor.predict, and the answer (no server, no models)."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import numpy as np
import orjson
import pytest

from clipper import __version__
from clipper.exceptions import ValidationError
from clipper.frontend.oip import OIPFrontend
from clipper.http.server import Request
from clipper.selection.processor import Overloaded, Prediction
from clipper.store.catalog import Catalog
from clipper.types import AppSpec, InputType, ModelId, ModelSpec


class FakeStore:
    def __init__(self) -> None:
        self.apps = [
            AppSpec("one", InputType.DOUBLES, "-1", 100_000, (2,)),
            AppSpec("two", InputType.STRINGS, "none", 100_000, policy="exp4"),
            AppSpec("lonely", InputType.INTEGERS, "0", 100_000),
        ]
        self.links = {"one": ["m"], "two": ["a", "b"], "lonely": []}
        self.models = [
            ModelSpec("m", "1", InputType.DOUBLES),
            ModelSpec("m", "2", InputType.DOUBLES),
            ModelSpec("a", "1", InputType.STRINGS),
            ModelSpec("b", "1", InputType.STRINGS),
        ]

    def generation(self) -> int:
        return 1

    def list_models(self) -> list[ModelSpec]:
        return self.models

    def get_current_version(self, name: str) -> str | None:
        return {"m": "2", "a": "1", "b": "1"}.get(name)

    def list_apps(self) -> list[AppSpec]:
        return self.apps

    def list_rollouts(self) -> list:
        return []

    def get_links(self, app: str) -> list[str]:
        return self.links[app]


class FakeDispatcher:
    def __init__(self) -> None:
        self.live: set[ModelId] = {ModelId("m", "2")}

    def live_replicas(self, model: ModelId) -> int:
        return int(model in self.live)


class FakeProcessor:
    def __init__(self) -> None:
        self.dispatcher = FakeDispatcher()
        self.calls: list[dict[str, Any]] = []
        self.answer: Any = None
        self.raises: Exception | None = None

    async def predict(self, route, inputs, version=None, uid=None, timeout_s=None):
        self.calls.append(
            {"app": route.spec.name, "inputs": inputs, "version": version, "uid": uid,
             "timeout_s": timeout_s}
        )  # fmt: skip
        if self.raises is not None:
            raise self.raises
        if self.answer is not None:
            return self.answer
        return [Prediction(i, float(np.sum(x)), False) for i, x in enumerate(inputs)]


@pytest.fixture
def processor() -> FakeProcessor:
    return FakeProcessor()


@pytest.fixture
def oip(processor) -> OIPFrontend:
    return OIPFrontend(Catalog(FakeStore()), processor, max_body_bytes=10_000)  # type: ignore[arg-type]


def call(
    app: OIPFrontend, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    raw_headers = [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    response = asyncio.run(app.handle(Request(method, path, b"", raw_headers, body)))
    headers = {"content-type": response.content_type.decode()}
    headers.update((k.decode(), v.decode()) for k, v in response.headers)
    return response.status, headers, response.body


def get(app: OIPFrontend, path: str) -> tuple[int, Any]:
    status, _, payload = call(app, "GET", path)
    return status, orjson.loads(payload)


def infer(app: OIPFrontend, path: str, doc: dict, **kw: Any) -> tuple[int, Any]:
    status, _, payload = call(app, "POST", path, orjson.dumps(doc), **kw)
    return status, orjson.loads(payload)


def fp64(shape: list[int], data: list) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP64", "shape": shape, "data": data}]}


def test_server_routes(oip):
    assert get(oip, "/v2") == (
        200,
        {"name": "clipper", "version": __version__, "extensions": ["binary_tensor_data"]},
    )
    assert get(oip, "/v2/health/live") == (200, {"live": True})
    assert get(oip, "/v2/health/ready") == (200, {"ready": True})
    oip.is_ready = lambda: False
    assert get(oip, "/v2/health/ready") == (503, {"ready": False})
    status, body = get(oip, "/v2/nothing")
    assert status == 404 and "no route GET /v2/nothing" in body["error"]
    status, body = call(oip, "POST", "/v2/health/live")[:2]
    assert status == 405
    assert get(oip, "/v2/models/one/infer")[0] == 405


def test_model_metadata(oip):
    status, meta = get(oip, "/v2/models/one")
    assert status == 200
    assert meta["name"] == "one" and meta["versions"] == ["1", "2"]
    assert meta["platform"] == "clipper"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 2]}]
    assert meta["outputs"] == [{"name": "output0", "datatype": "INT64", "shape": [-1]}]
    _, meta = get(oip, "/v2/models/two")
    assert meta["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["datatype"] == "BYTES" and meta["versions"] == []
    _, meta = get(oip, "/v2/models/lonely")
    assert meta["inputs"][0] == {"name": "input", "datatype": "INT32", "shape": [-1, -1]}
    assert get(oip, "/v2/models/one/versions/1")[0] == 200
    status, body = get(oip, "/v2/models/one/versions/9")
    assert status == 404 and "unknown version '9'" in body["error"]
    status, body = get(oip, "/v2/models/two/versions/1")
    assert status == 400 and "exactly one linked model" in body["error"]
    status, body = get(oip, "/v2/models/nope")
    assert status == 404 and "unknown model 'nope'" in body["error"]


def test_model_ready(oip, processor):
    assert get(oip, "/v2/models/one/ready") == (200, {"name": "one", "ready": True})
    assert get(oip, "/v2/models/one/versions/1/ready") == (503, {"name": "one", "ready": False})
    assert get(oip, "/v2/models/two/ready")[0] == 503
    processor.dispatcher.live.add(ModelId("b", "1"))
    assert get(oip, "/v2/models/two/ready")[0] == 200
    assert get(oip, "/v2/models/nope/ready")[0] == 404


def test_infer_json(oip, processor):
    doc = {**fp64([2, 2], [1, 2, 3, 4]), "id": "x", "parameters": {"timeout": 5000}}
    status, answer = infer(oip, "/v2/models/one/infer", doc)
    assert status == 200
    assert answer == {
        "model_name": "one",
        "model_version": "2",
        "id": "x",
        "outputs": [{"name": "output0", "datatype": "FP64", "shape": [2], "data": [3.0, 7.0]}],
    }
    (c,) = processor.calls
    assert c["version"] is None and c["timeout_s"] == pytest.approx(0.005)
    assert [q.tolist() for q in c["inputs"]] == [[1, 2], [3, 4]]


def test_infer_binary(oip, processor):
    raw = np.array([[1, 2], [3, 4], [5, 6]], dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [3, 2],
                 "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    )  # fmt: skip
    status, headers, payload = call(
        oip,
        "POST",
        "/v2/models/one/versions/1/infer",
        header + raw,
        {"Inference-Header-Content-Length": len(header)},
    )
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    n = int(headers["inference-header-content-length"])
    answer = orjson.loads(payload[:n])
    assert answer["model_version"] == "1" and processor.calls[0]["version"] == "1"
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert np.frombuffer(payload[n:], "<f8").tolist() == [3.0, 7.0, 11.0]


def test_infer_gzip_body(oip):
    body = gzip.compress(orjson.dumps(fp64([1, 2], [1, 2])))
    status, _, payload = call(
        oip, "POST", "/v2/models/one/infer", body, {"Content-Encoding": "gzip"}
    )
    assert status == 200 and orjson.loads(payload)["outputs"][0]["data"] == [3.0]


def test_infer_defaults_and_ensembles(oip, processor):
    processor.answer = [
        Prediction(0, "cat", False, confidence=0.75),
        Prediction(1, "none", True, "Failed within the SLO", confidence=None),
    ]
    doc = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    status, answer = infer(oip, "/v2/models/two/infer", doc)
    assert status == 200 and answer["model_version"] == "exp4"
    assert answer["outputs"][0] == {
        "name": "output0",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["cat", "none"],
    }
    assert answer["parameters"] == {
        "clipper_default": [False, True],
        "clipper_default_explanation": [None, "Failed within the SLO"],
        "clipper_confidence": [0.75, None],
    }
    assert processor.calls[0]["inputs"] == ["a", "b"]


@pytest.mark.parametrize(
    ("path", "doc", "status", "message"),
    [
        ("/v2/models/nope/infer", fp64([1, 2], [1, 2]), 404, "unknown model 'nope'"),
        ("/v2/models/two/versions/1/infer", fp64([1], [1]), 400, "exactly one linked model"),
        ("/v2/models/one/versions/7/infer", fp64([1, 2], [1, 2]), 404, "unknown version '7'"),
        ("/v2/models/one/infer", fp64([1, 3], [1, 2, 3]), 400, "expected shape [2] or [N, 2]"),
        ("/v2/models/one/infer", {"inputs": 3}, 400, "'inputs' must be a non-empty array"),
    ],
)
def test_infer_errors(oip, processor, path, doc, status, message):
    got, body = infer(oip, path, doc)
    assert got == status and message in body["error"]
    assert list(body) == ["error"] and not processor.calls


def test_infer_overloaded_and_processor_validation(oip, processor):
    processor.raises = Overloaded("a model of 'one' has a full queue")
    status, body = infer(oip, "/v2/models/one/infer", fp64([1, 2], [1, 2]))
    assert status == 503 and "full queue" in body["error"]
    processor.raises = ValidationError("model 'm' has no version '3'")
    status, body = infer(oip, "/v2/models/one/infer", fp64([1, 2], [1, 2]))
    assert status == 400 and body == {"error": "model 'm' has no version '3'"}


def test_infer_rows_are_capped_by_max_batch_inputs(processor):
    oip = OIPFrontend(
        Catalog(FakeStore()),  # type: ignore[arg-type]
        processor,  # type: ignore[arg-type]
        max_body_bytes=10_000,
        max_batch_inputs=3,
    )
    status, body = infer(oip, "/v2/models/one/infer", fp64([3, 2], [1, 2, 3, 4, 5, 6]))
    assert status == 200 and len(processor.calls[0]["inputs"]) == 3
    processor.calls.clear()
    status, body = infer(oip, "/v2/models/one/infer", fp64([4, 2], [1, 2, 3, 4, 5, 6, 7, 8]))
    assert status == 400 and body == {
        "error": "input 'input' has 4 queries (rows of shape [4, 2]); the limit is 3"
    }
    assert not processor.calls


@pytest.mark.parametrize("shape", [[300_000, 0], [100_000_000, 0], [0, 2]])
def test_infer_refuses_zero_size_dimensions(oip, processor, shape):
    status, body = infer(oip, "/v2/models/one/infer", fp64(shape, []))
    assert status == 400 and "has a zero-size dimension" in body["error"]
    assert list(body) == ["error"] and not processor.calls
