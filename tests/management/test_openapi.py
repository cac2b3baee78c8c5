"""The management port describes itself: ``GET /openapi.json`` (OpenAPI 3.1).

The document is valid (openapi-spec-validator), open, and lists exactly the
routes the management frontend dispatches (its handler and its streamed-body
hook, asked path by path: tests/frontend/openapi_routes.py); each route's
fields, their types and which are required agree with the handlers' own
``f.get(...)`` calls. A real server's answers fit the schemas of both ports.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from clipper.dashboard import Dashboard
from clipper.frontend.openapi import query_openapi
from clipper.http.openapi import OPENAPI_PATH
from clipper.http.server import Request, Response
from clipper.management import api
from clipper.management.api import FIELDS, ROUTES, ManagementFrontend
from clipper.management.openapi import (
    FIELD_SCHEMAS,
    REQUIRED,
    RESPONSES,
    SUMMARIES,
    UPLOAD_PATH,
    management_openapi,
)
from clipper.management.service import ManagementService
from clipper.metrics import Metrics, ServerStatistics
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from tests.fixtures import running_clipper
from tests.frontend.openapi_routes import (
    explore,
    no_route,
    request,
    run,
    sample,
    undescribed,
    vocabulary,
)
from tests.management.test_service_checks import FakeManager

TOKEN = "t0ken-for-the-openapi-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def frontend(tmp_path: Path) -> ManagementFrontend:
    store = MemoryStore()
    catalog = Catalog(store)
    service = ManagementService(store, catalog, FakeManager(), tmp_path / "state")
    metrics = Metrics(lambda: ServerStatistics(0.0), catalog=catalog, registry=CollectorRegistry())
    return ManagementFrontend(
        service,
        lambda: {"replicas": [], "pid": 1},
        admin_token=TOKEN,
        dashboard=Dashboard(metrics, catalog),
    )


def probe_of(frontend: ManagementFrontend, headers: dict[str, str] | None = AUTH):  # type: ignore[no-untyped-def]
    """What the HTTP server does with a request's head: the stream hook first
    (routes whose body is streamed), then the handler."""
    stream = getattr(frontend, "stream", None)

    def probe(method: str, path: str) -> Response | None:
        req = request(method, path, headers)
        if stream is not None:
            taken = stream(req)
            if taken is not None:
                return taken if isinstance(taken, Response) else Response(202, b"{}")
        answer = run(frontend.handle(req))
        return None if no_route(answer) else answer

    return probe


def test_the_description_is_valid_openapi_3_1() -> None:
    doc = management_openapi()
    validate(doc)
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    # /admin/* needs the admin token, by Bearer or Basic; the rest is open.
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["basicAuth"]["scheme"] == "basic"
    assert doc["security"] == [{"bearerAuth": []}, {"basicAuth": []}]
    for path in ("/health", "/ready", OPENAPI_PATH):
        assert doc["paths"][path]["get"]["security"] == []
    for path, item in doc["paths"].items():
        if path.startswith("/admin/"):
            for op in item.values():
                assert "security" not in op and "401" in op["responses"], path


def test_every_dispatched_route_is_described_and_every_described_one_served(
    frontend: ManagementFrontend,
) -> None:
    probe = probe_of(frontend)
    dispatchers: list[Any] = [ManagementFrontend.handle, ManagementFrontend._dashboard]
    dispatchers += [Dashboard.handle]
    if hasattr(ManagementFrontend, "stream"):
        dispatchers.append(ManagementFrontend.stream)
    assert frontend.dashboard is not None
    tables = [ROUTES, FIELDS, frontend.dashboard.assets, getattr(api, "STREAM_ROUTES", ())]
    served = explore(probe, vocabulary(*dispatchers, tables=tables), depth=3)
    assert {"/admin/ping", "/admin/add_app", "/health", "/dashboard", OPENAPI_PATH} <= served
    doc = management_openapi()
    assert undescribed(served, doc) == [], "served, not in the OpenAPI description"
    samples = {"asset": sorted(frontend.dashboard.assets)[0]}
    for path, item in doc["paths"].items():
        for method in item:
            answer = probe(method.upper(), sample(path, samples))
            assert answer is not None, f"{method.upper()} {path} is described, not served"
            assert answer.status != 405, f"{method.upper()} {path}: 405"
    assert UPLOAD_PATH in served


def test_every_route_is_documented_with_its_fields_types_and_required_ones() -> None:
    """The description's per-route data covers every route and field in ``FIELDS``;
    types and required fields agree with the handlers' ``f.get(name, kind[, default])``."""
    assert set(SUMMARIES) == set(FIELDS), "add a summary in clipper/management/openapi.py"
    assert set(REQUIRED) == set(FIELDS), "say which fields the route requires"
    for route, fields in FIELDS.items():
        assert set(REQUIRED[route]) <= set(fields), route
        assert not set(fields) - set(FIELD_SCHEMAS), f"{route}: a field has no schema"
    assert set(RESPONSES) <= set(FIELDS)
    kinds = {"str": "string", "int": "integer", "bool": "boolean", "list": "array"}
    kinds |= {"dict": "object", "float": "number"}
    handlers = {fn.__name__: route for route, fn in ROUTES.items()}
    module = ast.parse(inspect.getsource(api))
    seen = 0
    for node in ast.walk(module):
        if not isinstance(node, ast.AsyncFunctionDef):
            continue
        route = handlers.get(node.name)
        for call in ast.walk(node):
            if not (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "get"
                and isinstance(call.func.value, ast.Name)
                and call.func.value.id == "f"
            ):
                continue
            field = ast.literal_eval(call.args[0])
            kind = call.args[1]
            names = [e.id for e in kind.elts] if isinstance(kind, ast.Tuple) else [kind.id]  # type: ignore[attr-defined]
            declared = FIELD_SCHEMAS[field]["type"]
            declared = {declared} if isinstance(declared, str) else set(declared)
            assert declared == {kinds[n] for n in names}, f"{field}: {declared} vs {names}"
            seen += 1
            if route is not None:
                required = len(call.args) == 2
                assert (field in REQUIRED[route]) == required, f"{route}.{field}"
    assert seen > 40


def test_it_is_served_without_credentials_with_an_etag(frontend: ManagementFrontend) -> None:
    answer = run(frontend.handle(request("GET", OPENAPI_PATH)))  # no token
    assert answer.status == 200
    assert orjson.loads(answer.body)["paths"].keys() == management_openapi()["paths"].keys()
    etag = dict(answer.headers)[b"etag"].decode()
    again = run(frontend.handle(request("GET", OPENAPI_PATH, {"If-None-Match": etag})))
    assert again.status == 304
    refused = run(frontend.handle(Request("POST", OPENAPI_PATH, b"", [], b"{}")))
    assert refused.status == 405
    # The admin routes it describes still need the token.
    assert run(frontend.handle(request("GET", "/admin/ping"))).status == 401


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def _answer_schema(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    response = doc["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def fits(doc: dict[str, Any], method: str, path: str, answer: httpx.Response) -> None:
    """The answer's body fits what ``doc`` says ``method path`` answers with its status."""
    schema = _answer_schema(doc, method, path, answer.status_code)
    errors = list(_validator(doc, schema).iter_errors(answer.json()))
    assert not errors, f"{method} {path} {answer.status_code}: {errors[0].message}"


@pytest.mark.slow
def test_a_real_servers_answers_fit_the_descriptions(tmp_path: Path) -> None:
    with running_clipper(tmp_path / "state") as server, httpx.Client(timeout=30.0) as anonymous:
        # Both ports serve their description, open.
        docs = []
        for base, expected in (
            (server.query_url, query_openapi()),
            (server.admin_url, management_openapi()),
        ):
            answer = anonymous.get(base + OPENAPI_PATH)
            assert answer.status_code == 200, answer.text
            assert answer.json() == orjson.loads(orjson.dumps(expected))
            validate(answer.json())
            assert "max-age" in answer.headers["cache-control"]
            cached = anonymous.get(
                base + OPENAPI_PATH, headers={"If-None-Match": answer.headers["etag"]}
            )
            assert cached.status_code == 304
            docs.append(answer.json())
        query, management = docs
        app = {
            "name": "echo",
            "input_type": "strings",
            "default_output": "none",
            "latency_slo_micros": 20000,
        }
        fits(management, "post", "/admin/add_app", server.admin("add_app", app))
        fits(management, "post", "/admin/add_app", server.admin("add_app", {"name": "x"}))
        apps = server.admin("get_all_applications", {"verbose": True})
        fits(management, "post", "/admin/get_all_applications", apps)
        assert apps.json()[0]["name"] == "echo"
        fits(
            management, "post", "/admin/get_all_applications", server.admin("get_all_applications")
        )
        fits(
            management,
            "post",
            "/admin/get_application",
            server.admin("get_application", {"name": "echo"}),
        )
        fits(
            management,
            "post",
            "/admin/get_application",
            server.admin("get_application", {"name": "no"}),
        )
        fits(
            management,
            "post",
            "/admin/get_all_models",
            server.admin("get_all_models", {"verbose": True}),
        )
        fits(
            management,
            "post",
            "/admin/get_readiness",
            server.admin("get_readiness", {"app_name": "echo"}),
        )
        fits(
            management, "get", "/admin/status", server.http.get(server.admin_url + "/admin/status")
        )
        fits(management, "get", "/admin/ping", server.http.get(server.admin_url + "/admin/ping"))
        fits(
            management, "get", "/admin/ping", anonymous.get(server.admin_url + "/admin/ping")
        )  # 401
        fits(management, "get", "/ready", anonymous.get(server.admin_url + "/ready"))
        # The query port: a prediction (the default: no model), a batch, errors.
        predict = "/{app}/predict"
        one = anonymous.post(server.query_url + "/echo/predict", json={"input": "hi"})
        assert one.status_code == 200 and one.json()["default"] is True
        fits(query, "post", predict, one)
        batch = anonymous.post(server.query_url + "/echo/predict", json={"input_batch": ["a", "b"]})
        fits(query, "post", predict, batch)
        fits(
            query,
            "post",
            predict,
            anonymous.post(server.query_url + "/echo/predict", json={"input": 1}),
        )
        fits(
            query,
            "post",
            predict,
            anonymous.post(server.query_url + "/nope/predict", json={"input": "a"}),
        )
        fits(query, "post", predict, anonymous.get(server.query_url + "/echo/predict"))  # 405
        update = anonymous.post(
            server.query_url + "/echo/update", json={"uid": 1, "input": "a", "label": "b"}
        )
        fits(query, "post", "/{app}/update", update)
        fits(
            query,
            "get",
            "/v2/models/{model_name}",
            anonymous.get(server.query_url + "/v2/models/echo"),
        )
        fits(
            query,
            "get",
            "/v2/models/{model_name}",
            anonymous.get(server.query_url + "/v2/models/nope"),
        )
        fits(query, "get", "/v2", anonymous.get(server.query_url + "/v2"))
        fits(query, "get", "/health", anonymous.get(server.query_url + "/health"))
