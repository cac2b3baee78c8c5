"""Unit tests of the dashboard: the ring buffer of samples and the routes."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip

import orjson
import pytest
from prometheus_client import CollectorRegistry

from clipper.dashboard import Dashboard, SeriesRecorder
from clipper.http.server import Request, Response
from clipper.metrics import Metrics
from clipper.selection.processor import SLO_MISSED, Prediction
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from clipper.types import AppSpec, DefaultReason, InputType, ModelId, ModelSpec
from tests.observability.test_metrics import FakeServer, model_stats


@pytest.fixture
def catalog() -> Catalog:
    store = MemoryStore()
    store.add_app(AppSpec("a", InputType.DOUBLES, "-1", 50_000, policy="exp4"))
    store.add_model(ModelSpec("m", "1", InputType.DOUBLES))
    store.add_model(ModelSpec("n", "1", InputType.DOUBLES))
    store.add_links("a", ["m", "n"])
    return Catalog(store)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def metrics(server: FakeServer, catalog: Catalog) -> Metrics:
    return Metrics(server.statistics, catalog=catalog, registry=CollectorRegistry())


def test_samples_turn_running_totals_into_per_second_figures(
    server: FakeServer, metrics: Metrics
) -> None:
    wall = iter(range(1000, 2000))
    series = SeriesRecorder(metrics, metrics.catalog, history=3, wall_clock=lambda: next(wall))
    metrics.observe_predictions("a", 0.001, [Prediction(0, 1, False)])  # before the first tick
    server.models = [model_stats(batches=2, tasks=4, last=2)]
    for _ in range(2):
        metrics.observe_batch(ModelId("m", "1"), 2, 0.001)
    series.sample(0.0, server.statistics())
    assert not series.samples  # a first sample only sets the baseline
    for _ in range(30):
        metrics.observe_predictions("a", 0.004, [Prediction(0, 1, False)])
    for _ in range(10):
        slo = Prediction(0, "-1", True, SLO_MISSED, reason=DefaultReason.SLO)
        metrics.observe_predictions("a", 0.04, [slo])
    server.models = [model_stats(batches=6, tasks=24, last=5)]
    assert server.cache is not None
    server.cache = dataclasses.replace(server.cache, hits=40, misses=40)  # +30, +10
    for _ in range(4):
        metrics.observe_batch(ModelId("m", "1"), 5, 0.001)
    metrics.weights = {"a": {"m": 0.7, "n": 0.3}}
    series.sample(2.0, server.statistics())  # two seconds later
    (s,) = series.samples
    assert s["t"] == 1000  # the wall clock stamps appended samples
    assert s["apps"]["a"]["qps"] == 20.0
    assert s["apps"]["a"]["default_ratio"] == 0.25
    assert 3.0 <= s["apps"]["a"]["p50_ms"] <= 5.0
    assert 30.0 <= s["apps"]["a"]["p99_ms"] <= 50.0
    assert s["models"]["m:1"]["batch_size"] == 5.0  # 20 queries in 4 batches
    assert s["cache_hit_ratio"] == 0.75
    assert s["weights"] == {"a": {"m": 0.7, "n": 0.3}}
    for t in range(3, 8):  # the ring keeps the newest `history` samples
        series.sample(float(t), server.statistics())
    assert len(series.samples) == 3


def test_summary_holds_aggregates_and_only_new_samples(
    server: FakeServer, metrics: Metrics
) -> None:
    wall = iter(range(1000, 2000))
    series = SeriesRecorder(metrics, metrics.catalog, wall_clock=lambda: next(wall))
    before = series.summary()  # before the first tick: what the catalog knows
    assert before["uptime_s"] is None and before["cache"] is None and before["samples"] == []
    assert [(m["model"], m["version"], m["live"]) for m in before["models"]] == [
        ("m", "1", 0),
        ("n", "1", 0),
    ]
    for t in range(5):
        series.sample(float(t), server.statistics())
    full = series.summary()
    assert full["uptime_s"] == 12.5
    assert full["cache"] == {
        "hits": 10, "misses": 30, "entries": 30, "bytes": 4096, "max_bytes": 1 << 20,
        "evictions": 0,
    }  # fmt: skip
    assert [s["t"] for s in full["samples"]] == [1000, 1001, 1002, 1003]
    assert [s["t"] for s in series.summary(since=1001)["samples"]] == [1002, 1003]
    assert series.summary(since=1003)["samples"] == []
    (app,) = full["apps"]
    assert app == {
        "name": "a",
        "slo_ms": 50.0,
        "policy": "exp4",
        "models": ["m", "n"],
        "input_type": "doubles",
        "default_output": "-1",
    }
    rows = {(m["model"], m["version"]): m for m in full["models"]}
    assert rows[("m", "1")]["live"] == 1 and rows[("m", "1")]["dead"] == 1
    assert rows[("m", "1")]["restarts"] == 2 and rows[("m", "1")]["current"] is True
    assert rows[("n", "1")]["live"] == 0 and rows[("n", "1")]["max_batch_size"] is None


class Reply:
    def __init__(self, response: Response) -> None:
        self.status = response.status
        self.headers = {k.decode(): v.decode() for k, v in response.headers}
        self.headers["content-type"] = response.content_type.decode()
        self.body = response.body


def get(app: Dashboard, path: str, query: bytes = b"", **headers: str) -> Reply:
    method = headers.pop("method", "GET")
    fields = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Reply(app.handle(Request(method, path, query, fields)))


def test_the_page_and_its_assets_have_types_and_caching(metrics: Metrics) -> None:
    app = Dashboard(metrics, metrics.catalog)
    page = get(app, "/dashboard")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert b"/dashboard/static/dashboard.js" in page.body
    assert get(app, "/dashboard/").status == 200
    js = get(app, "/dashboard/static/dashboard.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert (
        get(app, "/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
    )
    vendor = get(app, "/dashboard/static/uPlot.iife.min.js")
    assert vendor.status == 200 and "max-age=86400" in vendor.headers["cache-control"]
    assert get(app, "/dashboard/static/uPlot.LICENSE").body.startswith(b"The MIT License")
    again = get(app, "/dashboard/static/dashboard.js", if_none_match=js.headers["etag"])
    assert again.status == 304 and again.body == b""
    zipped = get(app, "/dashboard/static/uPlot.iife.min.js", accept_encoding="gzip, br")
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == vendor.body
    assert get(app, "/dashboard/static/../__init__.py").status == 404
    assert get(app, "/dashboard/nope").status == 404
    assert get(app, "/dashboard", method="POST").status == 405
    head = get(app, "/dashboard", method="HEAD")  # the HTTP server drops a HEAD's body
    assert head.status == 200 and head.headers["content-type"].startswith("text/html")


def test_summary_endpoint(server: FakeServer, metrics: Metrics) -> None:
    app = Dashboard(metrics, metrics.catalog)
    for t in range(3):
        app.series.sample(float(t), server.statistics())
    r = get(app, "/dashboard/api/summary")
    assert r.status == 200 and r.headers["cache-control"] == "no-store"
    body = orjson.loads(r.body)
    assert [a["name"] for a in body["apps"]] == ["a"] and len(body["samples"]) == 2
    last = body["samples"][-1]["t"]
    assert (
        orjson.loads(get(app, "/dashboard/api/summary", b"since=" + str(last).encode()).body)[
            "samples"
        ]
        == []
    )
    assert get(app, "/dashboard/api/summary", b"since=soon").status == 400


def test_a_large_summary_is_gzipped(server: FakeServer, catalog: Catalog) -> None:
    metrics = Metrics(server.statistics, catalog=catalog, registry=CollectorRegistry())
    app = Dashboard(metrics, catalog)
    for t in range(300):
        for a in range(20):
            metrics.observe_predictions(f"app-{a}", 0.002, [Prediction(0, 1, False)])
        app.series.sample(float(t), server.statistics())
    plain = get(app, "/dashboard/api/summary")
    assert "content-encoding" not in plain.headers and len(plain.body) > 16_384
    zipped = get(app, "/dashboard/api/summary", accept_encoding="gzip")
    assert zipped.headers["content-encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(zipped.body)) == orjson.loads(plain.body)


def test_a_tick_forgets_deleted_apps_and_reads_weights(metrics: Metrics) -> None:
    metrics.observe_predictions("a", 0.001, [Prediction(0, 1, False)])
    metrics.observe_predictions("deleted", 0.001, [Prediction(0, 1, False)])
    asyncio.run(metrics.tick())
    assert set(metrics.apps) == {"a"}
    # exp4 without a store to read: every model starts level.
    assert metrics.weights == {"a": {"m": 0.5, "n": 0.5}}
