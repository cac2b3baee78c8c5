"""The query port describes itself: ``GET /openapi.json`` (OpenAPI 3.1).

The document is valid (openapi-spec-validator), open, cached, and lists exactly
the routes :class:`QueryFrontend` and :class:`OIPFrontend` dispatch, found by
asking them (tests/frontend/openapi_routes.py), not from a list kept here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from openapi_spec_validator import validate

from clipper.frontend import inputs
from clipper.frontend.oip import OIPFrontend
from clipper.frontend.openapi import query_openapi
from clipper.frontend.query import QueryFrontend, _is_v2
from clipper.http.openapi import OPENAPI_PATH
from clipper.http.server import Request, Response
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from tests.frontend.openapi_routes import (
    explore,
    no_route,
    request,
    run,
    sample,
    undescribed,
    vocabulary,
)

SAMPLES = {"app": "a", "model_name": "a", "model_version": "1"}


@pytest.fixture(scope="module")
def oip() -> OIPFrontend:
    return OIPFrontend(Catalog(MemoryStore()), None, max_body_bytes=10_000)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def frontend(oip: OIPFrontend) -> QueryFrontend:
    return QueryFrontend(
        Catalog(MemoryStore()),
        None,  # type: ignore[arg-type]  # no query reaches the models here
        v2=oip.handle,
        metrics=lambda r: Response(200, b"", b"text/plain"),
    )


def probe_of(frontend: QueryFrontend):  # type: ignore[no-untyped-def]
    def probe(method: str, path: str) -> Response | None:
        answer = run(frontend.handle(request(method, path)))
        return None if no_route(answer) else answer

    return probe


def schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A component schema, checkable by jsonschema (its $refs resolve in ``doc``)."""
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def check(doc: dict[str, Any], name: str, value: Any) -> None:
    jsonschema.Draft202012Validator(schema(doc, name)).validate(value)


def test_the_description_is_valid_openapi_3_1() -> None:
    doc = query_openapi()
    validate(doc)  # raises on an invalid document
    assert doc["openapi"].startswith("3.1")
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_every_dispatched_route_is_described_and_every_described_one_served(
    frontend: QueryFrontend, oip: OIPFrontend
) -> None:
    probe = probe_of(frontend)
    words = vocabulary(QueryFrontend.handle, _is_v2)
    served = explore(probe, words, depth=3)
    served |= explore(probe, vocabulary(OIPFrontend._route), depth=5, prefix="/v2")
    assert {"/{}/predict", "/{}/update", "/health", OPENAPI_PATH} <= served
    assert "/v2/models/{}/versions/{}/infer" in served
    doc = query_openapi()
    assert undescribed(served, doc) == [], "served, not in the OpenAPI description"
    for path, item in doc["paths"].items():
        for method in item:
            answer = probe(method.upper(), sample(path, SAMPLES))
            assert answer is not None, f"{method.upper()} {path} is described, not served"
            assert answer.status != 405, f"{method.upper()} {path}: 405"


def test_it_is_served_open_with_an_etag(frontend: QueryFrontend) -> None:
    answer = run(frontend.handle(request("GET", OPENAPI_PATH)))
    assert answer.status == 200 and answer.content_type == b"application/json"
    headers = dict(answer.headers)
    assert b"max-age" in headers[b"cache-control"]
    assert orjson.loads(answer.body) == orjson.loads(orjson.dumps(query_openapi()))
    again = run(
        frontend.handle(request("GET", OPENAPI_PATH, {"If-None-Match": headers[b"etag"].decode()}))
    )
    assert again.status == 304 and again.body == b""
    refused = run(frontend.handle(Request("POST", OPENAPI_PATH, b"", [], b"{}")))
    assert refused.status == 405 and set(orjson.loads(refused.body)) == {"error", "cause"}


def test_the_predict_body_lists_the_fields_the_parser_takes() -> None:
    props = query_openapi()["components"]["schemas"]["PredictRequest"]["properties"]
    assert set(props) == set(inputs._KNOWN_FIELDS)


def test_examples_and_real_answers_fit_the_schemas() -> None:
    doc = query_openapi()
    check(doc, "Prediction", {"query_id": 0, "output": 9, "default": False})
    check(
        doc,
        "BatchPrediction",
        {
            "batch_predictions": [
                {
                    "query_id": 1,
                    "output": "unknown",
                    "default": True,
                    "default_explanation": "No connected models found for query",
                }
            ]
        },
    )
    check(doc, "PredictRequest", {"input": [1, 2], "uid": 3, "version": "1"})
    check(doc, "Error", {"error": "unknown app", "cause": "no application named 'x'"})
    with pytest.raises(jsonschema.ValidationError):
        check(doc, "PredictRequest", {"input": [1], "input_batch": [[1]]})  # both
    with pytest.raises(jsonschema.ValidationError):
        check(doc, "PredictRequest", {"inputs": [1]})  # a typo
    with pytest.raises(jsonschema.ValidationError):
        check(doc, "Prediction", {"query_id": 0, "output": 1})  # no "default"
    # Every example in the document fits its schema.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            media = [
                *op.get("requestBody", {}).get("content", {}).values(),
                *(m for r in op["responses"].values() for m in r.get("content", {}).values()),
            ]
            for m in media:
                if "example" in m:
                    example_schema = {**m["schema"], "components": doc["components"]}
                    errors = jsonschema.Draft202012Validator(example_schema).iter_errors(
                        m["example"]
                    )
                    assert not list(errors), f"the example of {method} {path}"


def test_the_coverage_check_notices_a_missing_or_extra_route(frontend: QueryFrontend) -> None:
    """The checks above are not vacuous: a route dropped from the description is
    reported, and so is a described route no handler serves."""
    doc = query_openapi()
    served = {"/{}/predict", "/{}/update", "/health", "/v2/models/{}/ready"}
    assert undescribed(served, doc) == []
    fewer = {**doc, "paths": {p: v for p, v in doc["paths"].items() if p != "/{app}/update"}}
    assert undescribed(served, fewer) == ["/{}/update"]
    # A literal where a parameter is served does not cover it.
    literal = {**doc, "paths": {"/digits/predict": {}, "/{app}/update": {}}}
    assert undescribed({"/{}/predict"}, literal) == ["/{}/predict"]
    probe = probe_of(frontend)
    assert probe("GET", "/not-a-route") is None
    assert probe("POST", sample("/{app}/predict", SAMPLES)) is not None


def test_the_docs_site_publishes_the_same_documents() -> None:
    """docs/assets/hooks.py writes these documents and their route tables into the site."""
    path = Path(__file__).resolve().parents[2] / "docs" / "assets" / "hooks.py"
    spec = importlib.util.spec_from_file_location("docs_hooks", path)
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    published = hooks._openapi()
    assert published["query"] is query_openapi()
    table = hooks.routes_table(published["query"])
    for route, item in query_openapi()["paths"].items():
        for method in item:
            assert f"`{method.upper()} {route}`" in table
    page = (path.parents[1] / "reference" / "openapi.md").read_text()
    assert "<!-- openapi-routes: query -->" in page
    assert "<!-- openapi-routes: management -->" in page
    rendered = hooks.on_page_markdown(page, None, None, None)
    assert "openapi-routes" not in rendered
    assert rendered.count("| `GET /openapi.json` | This description") == 2
