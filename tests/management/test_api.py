"""The management frontend's handler, in process: who gets in, and what must be JSON."""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from clipper.dashboard import Dashboard
from clipper.http.auth import Sessions
from clipper.http.server import Request, Response
from clipper.management.api import ManagementFrontend
from clipper.management.service import ManagementService
from clipper.metrics import Metrics, ServerStatistics
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from tests.management.test_service_checks import FakeManager

TOKEN = "t0ken-for-the-management-tests"


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


def call(
    frontend: ManagementFrontend,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: bytes = b"",
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
) -> Response:
    fields = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        fields.setdefault("authorization", f"Bearer {token}")
    raw = [(k.encode(), v.encode()) for k, v in fields.items() if v]
    data = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    answer = frontend.handle(Request(method, path, query, raw, data))
    if isinstance(answer, Response):
        return answer
    assert inspect.isawaitable(answer)
    return asyncio.run(_await(answer))


async def _await(answer: Awaitable[Response]) -> Response:
    return await answer


APP = {"name": "a", "input_type": "doubles", "default_output": "-1", "latency_slo_micros": 1000}


def test_every_admin_route_needs_the_token(frontend: ManagementFrontend) -> None:
    for method, path in (
        ("GET", "/admin/ping"),
        ("GET", "/admin/status"),
        ("POST", "/admin/add_app"),
    ):
        for token in (None, "wrong", TOKEN[:-1]):
            r = call(frontend, method, path, APP, token=token)
            assert r.status == 401, (path, token)
            assert dict(r.headers)[b"www-authenticate"].startswith(b"Bearer")
    assert frontend.service.store.list_apps() == []
    assert call(frontend, "GET", "/admin/ping").status == 200
    basic = "Basic " + base64.b64encode(f"clipper:{TOKEN}".encode()).decode()
    assert call(frontend, "GET", "/admin/ping", headers={"authorization": basic}).status == 200


def test_health_and_ready_stay_open(frontend: ManagementFrontend) -> None:
    assert call(frontend, "GET", "/health", token=None).status == 200
    assert call(frontend, "GET", "/ready", token=None).status == 200


def test_state_changes_must_say_json(frontend: ManagementFrontend) -> None:
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        r = call(frontend, "POST", "/admin/add_app", APP, headers={"content-type": kind})
        assert r.status == 415, kind
        assert orjson.loads(r.body)["error"] == "unsupported media type"
    assert frontend.service.store.list_apps() == []
    for kind in ("application/json", "Application/JSON; charset=utf-8"):
        r = call(
            frontend,
            "POST",
            "/admin/add_app",
            {**APP, "name": f"a{len(kind)}"},
            headers={"content-type": kind},
        )
        assert r.status == 200, kind
    # An empty body (a route without fields) needs no type.
    r = call(frontend, "POST", "/admin/get_all_applications", b"", headers={"content-type": ""})
    assert r.status == 200


def test_the_dashboard_signs_in_with_the_token_once(frontend: ManagementFrontend) -> None:
    page = call(frontend, "GET", "/dashboard", token=None)
    assert page.status == 401 and b"<form" in page.body
    assert page.content_type.startswith(b"text/html")
    assert call(frontend, "GET", "/dashboard/api/summary", token=None).status == 401
    wrong = call(frontend, "GET", "/dashboard", query=b"token=nope", token=None)
    assert wrong.status == 401 and not any(k == b"set-cookie" for k, _ in wrong.headers)
    signed = call(frontend, "GET", "/dashboard", query=f"token={TOKEN}".encode(), token=None)
    headers = dict(signed.headers)
    assert signed.status == 303 and headers[b"location"] == b"/dashboard"
    cookie = headers[b"set-cookie"].decode()
    assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = cookie.split(";")[0]
    assert session.startswith(f"{Sessions.COOKIE}=")
    with_cookie = {"cookie": session}
    assert call(frontend, "GET", "/dashboard", headers=with_cookie, token=None).status == 200
    summary = call(frontend, "GET", "/dashboard/api/summary", headers=with_cookie, token=None)
    assert summary.status == 200
    # The session opens the dashboard only, never the API.
    assert call(frontend, "GET", "/admin/status", headers=with_cookie, token=None).status == 401
    # A bearer token works too (scripts).
    assert call(frontend, "GET", "/dashboard/api/summary").status == 200


def test_the_frontend_refuses_to_run_without_a_token(frontend: ManagementFrontend) -> None:
    with pytest.raises(ValueError, match="token"):
        ManagementFrontend(frontend.service, frontend.status, admin_token="")
