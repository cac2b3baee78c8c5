"""Unit tests of the metrics: a fresh registry each, fake server statistics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clipper.batching.controllers import ControllerStatistics, FixedBatchSize
from clipper.batching.dispatcher import Dispatcher, ModelConfig, ModelStatistics
from clipper.batching.queue import QueueStatistics
from clipper.cache import CacheStatistics
from clipper.frontend.metrics_route import metrics_route
from clipper.http.server import Request
from clipper.metrics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS_S,
    REASONS,
    Metrics,
    ReplicaStatistics,
    ServerStatistics,
    _BatchSizes,
    bucket_quantile,
    selection_weights,
)
from clipper.rpc import protocol as p
from clipper.rpc.server import FrameSender, Replica
from clipper.selection.processor import Prediction, QueryProcessor
from clipper.selection.state import PolicyStates
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from clipper.types import AppSpec, DefaultReason, InputType, ModelId, ModelSpec

DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
MODEL = ModelId("m", "1")


def model_stats(
    model: ModelId = MODEL, batches: int = 0, tasks: int = 0, last: int = 0
) -> ModelStatistics:
    return ModelStatistics(
        model=model,
        replicas=2,
        idle_replicas=1,
        in_flight_batches=1,
        batches=batches,
        errors=1,
        max_batch_size=16,
        mean_batch_size=tasks / batches if batches else 0.0,
        last_batch_size=last,
        last_batch_latency_s=0.004,
        max_delay_s=0.0,
        coalesced=3,
        controller=ControllerStatistics("aimd", 16, batches),
        queue=QueueStatistics(
            depth=5, capacity=100, enqueued=tasks + 5, dispatched=tasks, expired=7, rejected=2
        ),
        predictions=tasks,
    )


class FakeServer:
    """What ``ClipperServer.statistics()`` returns, editable by the test."""

    def __init__(self) -> None:
        self.models = [model_stats()]
        self.cache: CacheStatistics | None = CacheStatistics(
            hits=10, misses=30, entries=30, bytes=4096, max_bytes=1 << 20, evictions=0
        )
        self.replicas = [
            ReplicaStatistics(MODEL, "m-1-0", live=True, restarts=0, max_batch_size=16,
                              latency_estimate_ms=2.0, details={"pid": 1}),
            ReplicaStatistics(MODEL, "m-1-1", live=False, restarts=2, details={"pid": 2}),
        ]  # fmt: skip

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            uptime_s=12.5, models=self.models, cache=self.cache, replicas=self.replicas
        )


def scrape(metrics: Metrics) -> dict[str, dict[tuple, float]]:
    """Every sample as {name: {sorted label items: value}}, parsed back from the text."""
    text = generate_latest(metrics.registry).decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def ok(qid: int = 0) -> Prediction:
    return Prediction(qid, "out", False)


def default(reason: DefaultReason | None, explanation: str = "why") -> Prediction:
    return Prediction(0, "-1", True, explanation, reason=reason)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def metrics(server: FakeServer) -> Metrics:
    return Metrics(server.statistics, registry=CollectorRegistry())


def test_counts_equal_what_was_observed(metrics: Metrics) -> None:
    for _ in range(7):
        metrics.observe_predictions("a", 0.004, [ok()])
    metrics.observe_predictions("a", 0.02, [ok(), ok(), default(DefaultReason.SLO)])
    metrics.observe_predictions("b", 0.5, [default(DefaultReason.NO_MODELS)])
    metrics.observe_overload("a")
    metrics.observe_feedback("a", True)
    metrics.observe_feedback("a", True)
    metrics.observe_feedback("a", False)
    got = scrape(metrics)
    app_a, app_b = (("app", "a"),), (("app", "b"),)
    assert got["clipper_app_requests_total"] == {app_a: 8, app_b: 1}
    assert got["clipper_app_queries_total"] == {app_a: 10, app_b: 1}
    assert got["clipper_app_overloaded_total"][app_a] == 1
    defaults = got["clipper_app_default_outputs_total"]
    assert defaults[(("app", "a"), ("reason", "slo"))] == 1
    assert defaults[(("app", "b"), ("reason", "no_models"))] == 1
    assert sum(defaults.values()) == 2
    assert {r for (_, (_, r)) in defaults} == set(REASONS)  # every reason, zero or not
    feedback = got["clipper_app_feedback_total"]
    assert feedback[(("accepted", "true"), ("app", "a"))] == 2
    assert feedback[(("accepted", "false"), ("app", "a"))] == 1
    assert got["clipper_app_request_latency_seconds_count"] == {app_a: 8, app_b: 1}
    assert got["clipper_app_request_latency_seconds_sum"][app_a] == pytest.approx(0.048)
    buckets = got["clipper_app_request_latency_seconds_bucket"]
    assert buckets[(("app", "a"), ("le", "0.003"))] == 0
    assert buckets[(("app", "a"), ("le", "0.005"))] == 7
    assert buckets[(("app", "a"), ("le", "0.02"))] == 8  # le is inclusive
    assert buckets[(("app", "a"), ("le", "+Inf"))] == 8
    assert buckets[(("app", "b"), ("le", "0.3"))] == 0
    assert buckets[(("app", "b"), ("le", "0.5"))] == 1


def test_model_cache_and_replica_figures_come_from_statistics_at_scrape_time(
    server: FakeServer, metrics: Metrics
) -> None:
    server.models = [model_stats(batches=4, tasks=10, last=1)]
    for size in (1, 2, 3, 4):  # what the dispatcher reports, batch by batch
        metrics.observe_batch(ModelId("m", "1"), size, 0.002)
    got = scrape(metrics)
    mv = (("model", "m"), ("version", "1"))
    assert got["clipper_model_batches_total"][mv] == 4
    assert got["clipper_model_batch_errors_total"][mv] == 1
    assert got["clipper_model_predictions_total"][mv] == 10
    assert got["clipper_model_expired_total"][mv] == 7
    assert got["clipper_model_rejected_total"][mv] == 2
    assert got["clipper_model_enqueued_total"][mv] == 15
    assert got["clipper_model_coalesced_total"][mv] == 3
    assert got["clipper_model_max_batch_size"][mv] == 16
    assert got["clipper_model_queue_depth"][mv] == 5
    assert got["clipper_model_queue_capacity"][mv] == 100
    assert got["clipper_model_replicas"][mv] == 2
    assert got["clipper_model_in_flight_batches"][mv] == 1
    assert got["clipper_model_last_batch_latency_seconds"][mv] == pytest.approx(0.004)
    assert got["clipper_model_batch_size_count"][mv] == 4  # equals the batches
    assert got["clipper_model_batch_size_sum"][mv] == 10
    assert got["clipper_cache_hits_total"][()] == 10
    assert got["clipper_cache_misses_total"][()] == 30
    assert got["clipper_cache_entries"][()] == 30
    up = got["clipper_replica_up"]
    assert up[(("model", "m"), ("replica", "m-1-0"), ("version", "1"))] == 1
    assert up[(("model", "m"), ("replica", "m-1-1"), ("version", "1"))] == 0
    restarts = got["clipper_replica_restarts_total"]
    assert restarts[(("model", "m"), ("replica", "m-1-1"), ("version", "1"))] == 2
    assert got["clipper_uptime_seconds"][()] == 12.5
    # More batches later: the counters follow the statistics, nothing per query.
    server.models = [model_stats(batches=9, tasks=30, last=4)]
    for _ in range(5):
        metrics.observe_batch(ModelId("m", "1"), 4, 0.003)
    server.cache = None  # a server without a cache reports no cache figures
    got = scrape(metrics)
    assert got["clipper_model_batches_total"][mv] == 9
    assert got["clipper_model_batch_size_count"][mv] == 9
    assert got["clipper_model_batch_size_sum"][mv] == 30
    assert "clipper_cache_hits_total" not in got


def test_every_family_is_prefixed_and_documented(metrics: Metrics) -> None:
    metrics.observe_predictions("a", 0.001, [ok()])
    text = generate_latest(metrics.registry).decode()
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("clipper_") for f in families)
    assert all(f.documentation for f in families)


def test_each_server_has_its_own_registry(server: FakeServer) -> None:
    one, two = Metrics(server.statistics), Metrics(server.statistics)
    assert one.registry is not two.registry
    one.observe_predictions("a", 0.001, [ok()])
    assert scrape(one)["clipper_app_requests_total"] == {(("app", "a"),): 1}
    assert (
        "clipper_app_requests_total" not in scrape(two)
        or not scrape(two)["clipper_app_requests_total"]
    )


def test_the_reasons_are_the_documented_labels_in_order() -> None:
    # Dashboards and alerts match these strings: they never change.
    assert REASONS == ("slo", "model_error", "no_models", "overloaded", "low_confidence", "other")
    assert [r.value for r in DefaultReason] == list(REASONS)
    section = DOCS.read_text().split("### Default-output reasons", 1)[1].split("\n### ", 1)[0]
    assert re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE) == list(REASONS)


def test_free_text_never_becomes_a_label(metrics: Metrics) -> None:
    for i in range(50):
        why = f"model m:1 raised E{i}: message {i}"
        metrics.observe_predictions("a", 0.001, [default(DefaultReason.MODEL_ERROR, why)])
    metrics.observe_predictions("a", 0.001, [default(None)])  # a default naming no reason
    defaults = scrape(metrics)["clipper_app_default_outputs_total"]
    assert len(defaults) == len(REASONS)
    assert defaults[(("app", "a"), ("reason", "model_error"))] == 50
    assert defaults[(("app", "a"), ("reason", "other"))] == 1


def test_batch_sizes_and_latencies_land_in_exact_buckets() -> None:
    h = _BatchSizes()
    for size, latency in ((3, 0.0004), (8, 0.003), (8, 0.003)):
        h.observe(size, latency)
    assert h.count == 3 and h.total == 19
    index = {b: i for i, b in enumerate(BATCH_SIZE_BUCKETS)}
    assert h.counts[index[4]] == 1 and h.counts[index[8]] == 2
    assert sum(h.latency) == 3 and h.latency_sum == pytest.approx(0.0064)


def test_bucket_quantile_interpolates_like_prometheus() -> None:
    assert list(LATENCY_BUCKETS_S) == sorted(LATENCY_BUCKETS_S)
    bounds = (1.0, 2.0, 4.0)
    assert bucket_quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert bucket_quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(1.5)
    assert bucket_quantile(0.99, bounds, [0, 0, 0, 5]) == 4.0  # +Inf: the last bound
    assert bucket_quantile(0.25, bounds, [2, 2, 0, 0]) == pytest.approx(0.5)


def test_selection_weights_per_policy() -> None:
    assert selection_weights("single", ["a", "b"], None) == {"a": 1.0, "b": 0.0}
    shares = selection_weights("exp4", ["a", "b"], {"log_weights": {"a": 0.0, "b": -1.0}})
    assert sum(shares.values()) == pytest.approx(1.0) and shares["a"] > shares["b"]
    assert selection_weights("exp3", ["a", "b"], None) == {"a": 0.5, "b": 0.5}
    stats = {"stats": {"a": {"count": 4, "mean": 0.75}, "b": "garbage"}}
    assert selection_weights("ucb1", ["a", "b", "c"], stats) == {"a": 0.75, "b": 0.0, "c": 0.0}
    assert selection_weights("thompson", [], None) == {}


def test_slo_misses_are_logged_once_per_interval_per_app(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clipper.metrics")
    slo = default(DefaultReason.SLO)
    metrics.observe_predictions("a", 0.1, [slo, slo, ok()])
    metrics.observe_predictions("a", 0.01, [default(DefaultReason.MODEL_ERROR)])
    metrics.observe_overload("a")
    metrics.observe_predictions("calm", 0.01, [ok()])
    metrics.log_slo_misses()
    lines = [r.getMessage() for r in caplog.records]
    # Model errors are not SLO misses: they have their own line (per model version).
    assert lines == ["slo_misses app=a count=3 queries=4 reasons=slo:2,overloaded:1 interval_s=10"]
    caplog.clear()
    metrics.log_slo_misses()  # nothing new: nothing logged
    metrics.observe_predictions("a", 0.01, [default(DefaultReason.NO_MODELS)])
    metrics.log_slo_misses()
    assert [r.getMessage() for r in caplog.records] == [
        "slo_misses app=a count=1 queries=1 reasons=no_models:1 interval_s=10"
    ]


def test_figures_match_the_scrape(server: FakeServer, metrics: Metrics) -> None:
    server.models = [model_stats(batches=2, tasks=5, last=3)]
    metrics.observe_batch(ModelId("m", "1"), 2, 0.001)
    metrics.observe_batch(ModelId("m", "1"), 3, 0.001)
    for _ in range(4):
        metrics.observe_predictions("a", 0.004, [ok(), default(DefaultReason.SLO)])
    metrics.observe_feedback("a", False)
    got = scrape(metrics)
    figures = metrics.figures()
    app = figures["apps"]["a"]
    assert app["requests"] == got["clipper_app_requests_total"][(("app", "a"),)] == 4
    assert app["queries"] == 8
    assert app["default_outputs"]["slo"] == 4
    assert app["feedback"] == {"accepted": 0, "rejected": 1}
    assert app["latency_s"]["count"] == 4
    assert 0.003 <= app["latency_s"]["p50"] <= 0.005
    sizes = figures["batch_sizes"]["m:1"]
    assert sizes["count"] == 2 and sizes["sum"] == 5 and sizes["buckets"]["+Inf"] == 2


def test_ticks_feed_listeners_and_the_batch_histograms(server: FakeServer) -> None:
    metrics = Metrics(server.statistics, sample_interval_s=0.01)
    seen: list[float] = []
    metrics.add_listener(lambda now, stats: seen.append(now))
    server.models = [model_stats(batches=1, tasks=2, last=2)]

    async def run() -> None:
        metrics.start()
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        await metrics.stop()

    asyncio.run(run())
    assert seen == sorted(seen) and len(seen) >= 3
    metrics.observe_batch(ModelId("m", "1"), 2, 0.001)
    assert metrics.batch_sizes[ModelId("m", "1")].count == 1


def test_get_metrics_answers_the_registry(metrics: Metrics) -> None:
    metrics.observe_predictions("a", 0.001, [ok()])
    respond = metrics_route(metrics.exposition)
    response = respond(Request("GET", "/metrics", b"", []))
    assert response.status == 200 and response.content_type.startswith(b"text/plain")
    assert (b"cache-control", b"no-store") in response.headers
    assert b'clipper_app_requests_total{app="a"} 1.0' in response.body
    accept = [(b"accept", b"application/openmetrics-text; version=1.0.0")]
    response = respond(Request("GET", "/metrics", b"", accept))
    assert response.content_type.startswith(b"application/openmetrics-text")
    assert respond(Request("POST", "/metrics", b"", [])).status == 405


def test_a_metrics_token_guards_get_metrics(metrics: Metrics) -> None:
    respond = metrics_route(metrics.exposition, "s3cret")
    assert respond(Request("GET", "/metrics", b"", [])).status == 401
    wrong = [(b"authorization", b"Bearer nope")]
    assert respond(Request("GET", "/metrics", b"", wrong)).status == 401
    right = [(b"authorization", b"Bearer s3cret")]
    assert respond(Request("GET", "/metrics", b"", right)).status == 200
    assert respond(Request("POST", "/metrics", b"", right)).status == 405


def test_statistics_render_as_the_status_json(server: FakeServer) -> None:
    rendered = server.statistics().to_json()
    assert rendered["uptime_s"] == 12.5
    assert rendered["cache"] == {
        "hits": 10, "misses": 30, "entries": 30, "bytes": 4096, "max_bytes": 1 << 20,
        "evictions": 0,
    }  # fmt: skip
    (model,) = rendered["models"]
    assert model["model"] == "m:1" and "predictions" not in model
    assert model["queue"]["expired"] == 7 and model["controller"]["policy"] == "aimd"
    assert rendered["replicas"] == [
        {"pid": 1, "live": True, "max_batch_size": 16, "latency_estimate_ms": 2.0},
        {"pid": 2, "live": False, "max_batch_size": None, "latency_estimate_ms": None},
    ]
    assert ServerStatistics(1.0).to_json() == {
        "uptime_s": 1.0, "replicas": [], "models": [], "cache": None
    }  # fmt: skip


def test_observing_a_request_costs_a_few_microseconds(metrics: Metrics) -> None:
    """The hot path: measured here, and reported in docs/observability.md."""
    one = [ok()]
    batch = [ok(i) for i in range(8)] + [default(DefaultReason.SLO)]
    n = 20_000
    for predictions in (one, batch):
        start = time.perf_counter()
        for _ in range(n):
            metrics.observe_predictions("a", 0.0042, predictions)
        per_call = (time.perf_counter() - start) / n
        print(f"observe_predictions({len(predictions)} predictions): {per_call * 1e6:.2f} us")
        # Generous for slow CI machines; measured well under 2 us here.
        assert per_call < 20e-6


# -- every reason, from a real processor and dispatcher -------------------------------------

# Scripted replicas: how each model answers a batch of doubles (None: never).
_REPLICAS = {
    "ok": lambda xs: [float(x.sum()) for x in xs],
    "alt": lambda xs: [float(x.sum()) + 1 for x in xs],  # always disagrees with "ok"
    "late": None,
    "boom": "error",
    "tiny": lambda xs: [float(x.sum()) for x in xs],  # a queue of one
}
# app -> (linked models, policy, policy params, inputs, the reason its defaults give)
_APPS: dict[str, tuple[list[str], str, dict[str, Any], list[Any], DefaultReason]] = {
    "a-slo": (["late"], "single", {}, [np.ones(1)], DefaultReason.SLO),
    "a-error": (["boom"], "single", {}, [np.ones(1)], DefaultReason.MODEL_ERROR),
    "a-none": (["gone"], "single", {}, [np.ones(1)], DefaultReason.NO_MODELS),
    # Two queries for a queue of one: the second is refused (the app answers its default).
    "a-full": (["tiny"], "single", {}, [np.ones(1), np.ones(1)], DefaultReason.OVERLOADED),
    "a-unsure": (
        ["ok", "alt"],
        "exp4",
        {"min_confidence": 0.9},
        [np.ones(1)],
        DefaultReason.LOW_CONFIDENCE,
    ),
    # Not a number for a model of doubles: the batch cannot be encoded (a server bug).
    "a-other": (["ok"], "single", {}, ["not a number"], DefaultReason.OTHER),
}


def _serving(observer: Metrics) -> tuple[QueryProcessor, Catalog]:
    store = MemoryStore()
    for name in [*_REPLICAS, "gone"]:
        store.add_model(ModelSpec(name, "1", InputType.DOUBLES))
    for app, (models, policy, params, _, _) in _APPS.items():
        store.add_app(AppSpec(app, InputType.DOUBLES, "-1", 50_000, policy=policy,
                              policy_params=params))  # fmt: skip
        store.add_links(app, models)
    dispatcher = Dispatcher(
        configure=lambda m: ModelConfig(
            FixedBatchSize(64), queue_capacity=1 if m.name == "tiny" else 100
        )
    )
    replicas = {}
    for name in _REPLICAS:
        replica = Replica(name.encode(), ModelId(name, "1"), "doubles", None, name, 0.0, 0.0)
        replicas[replica.identity] = replica

    def send(identity: bytes, frames: list[bytes]) -> bool:
        header = p.unpack(frames[0])
        inputs = p.decode_inputs(header, frames[1:])
        replica = replicas[identity]
        script = _REPLICAS[replica.model.name]
        if script is None:
            return True
        if script == "error":
            result = p.encode_result_error(header["id"], "ValueError", "boom")
        else:
            result = p.encode_result_ok(header["id"], script(inputs))
        decoded = p.decode_result(p.unpack(result[0]), result[1:])
        asyncio.get_running_loop().call_soon(dispatcher.batch_done, replica, header["id"], decoded)
        return True

    dispatcher.set_transport(FrameSender(send))
    for replica in replicas.values():
        dispatcher.replica_joined(replica)
    catalog = Catalog(store)
    return QueryProcessor(catalog, dispatcher, PolicyStates(store), observer=observer), catalog


def test_every_default_reason_is_a_label_when_such_a_default_happens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="clipper.dispatcher")  # the encoding failure
    metrics = Metrics(lambda: ServerStatistics(0.0), registry=CollectorRegistry())

    async def main() -> dict[str, list[Prediction]]:
        processor, catalog = _serving(metrics)
        out = {}
        for app, (_, _, _, inputs, _) in _APPS.items():
            route = catalog.app(app)
            assert route is not None
            out[app] = await processor.predict(route, inputs)
        return out

    answers = asyncio.run(asyncio.wait_for(main(), 30))
    defaults = scrape(metrics)["clipper_app_default_outputs_total"]
    for app, (_, _, _, _, reason) in _APPS.items():
        *_, last = answers[app]
        assert last.default and last.reason is reason and last.explanation, (app, last)
        counted = {r: n for ((_, a), (_, r)), n in defaults.items() if a == app and n}
        assert counted == {reason.value: 1}, app
    assert {reason for *_, reason in _APPS.values()} == set(DefaultReason)
