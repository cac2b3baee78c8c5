"""Prometheus metrics for one server: cheap counters on the hot path, the rest at scrape time.

The query path calls ``observe_*`` once per request; they bump plain
integers (no locks: everything runs on the event loop), a few microseconds
at most; a default output is counted by its ``DefaultReason``, the label
itself. What the dispatcher, cache and replicas already count is read, as
typed :class:`ServerStatistics` from a statistics provider, by a custom
collector when ``GET /metrics`` is scraped, so it costs the hot path
nothing. Each server has its own ``CollectorRegistry``: no global state, so
tests and several servers in one process never clash. This module makes
the exposition's bytes (:meth:`Metrics.exposition`); the frontend serves
them (``clipper.frontend.metrics_route``).

The dispatcher reports each finished batch to ``observe_batch`` (exact
batch-size and batch-latency histograms per model). A background task
(``start``/``stop``) ticks once a second: it refreshes the selection weights
(the store is read in a thread), feeds tick listeners (the dashboard's time
series) and, every ``slo_log_interval_s``, logs one
line per app that missed its SLO: ``slo_misses app=... count=... reasons=...``
(model errors apart: not SLO misses), and one line per model version that
failed queries: ``model_errors model=... count=... last="..."``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from .selection.policies import get_policy
from .selection.rollout import p_new_better
from .selection.state import SHARED
from .shed_log import ShedLog
from .store.catalog import Catalog
from .types import DefaultReason, ModelId

if TYPE_CHECKING:  # the typed statistics this module reads, not the layers that make them
    from .batching.dispatcher import ModelStatistics
    from .cache.prediction_cache import CacheStatistics
    from .gpu_metrics import GpuSample
    from .selection.processor import Prediction
    from .selection.rollout import Evidence
    from .types import RolloutSpec

K = TypeVar("K")
C = TypeVar("C")
# Each running rollout: its spec, evidence and the new version's share of queries.
RolloutSnapshot = Callable[[], "Sequence[tuple[RolloutSpec, Evidence, float]]"]

log = logging.getLogger("clipper.metrics")

# The ``reason`` label's values, in the order they are exported and logged.
REASONS: tuple[str, ...] = tuple(r.value for r in DefaultReason)
# Request latency buckets (seconds): fine around the usual 10-300 ms SLOs.
LATENCY_BUCKETS_S = (
    *(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075),
    *(0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
)
OPENMETRICS = "application/openmetrics-text"  # an Accept header that asks for it
LAG_SAMPLES = 10  # the event-loop lag gauge: the largest of this many samples
# The ``answer`` label's values: the models' output, or the app's default.
ANSWERS = ("computed", "default")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# A default's reason to its counter's index; a default that names none is "other".
_REASON_INDEX: dict[DefaultReason | None, int] = {r: i for i, r in enumerate(DefaultReason)}
_REASON_INDEX[None] = _REASON_INDEX[DefaultReason.OTHER]
_OVERLOADED = OVERLOADED_INDEX = _REASON_INDEX[DefaultReason.OVERLOADED]
_MODEL_ERROR = _REASON_INDEX[DefaultReason.MODEL_ERROR]


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaStatistics:
    """One replica, as its container manager (or, for one started by hand, the RPC
    layer) describes it, with how it batches while live."""

    model: ModelId
    replica: str  # its label
    live: bool
    restarts: int
    max_batch_size: int | None = None  # None unless live
    latency_estimate_ms: float | None = None  # None unless live
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # as described

    def to_json(self) -> dict[str, Any]:
        """As ``/admin/status`` and ``get_all_containers`` report it (``replicas``)."""
        latency = self.latency_estimate_ms
        return {
            **self.details,
            "live": self.live,
            "max_batch_size": self.max_batch_size,
            "latency_estimate_ms": None if latency is None else round(latency, 3),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStatistics:
    """What the abstraction layer and the container manager count, at one moment:
    what the metrics export and the dashboard samples (counters are cumulative)."""

    uptime_s: float
    models: Sequence[ModelStatistics] = ()
    cache: CacheStatistics | None = None
    replicas: Sequence[ReplicaStatistics] = ()
    gpus: Sequence[GpuSample] = ()  # empty on a machine without GPUs

    def to_json(self) -> dict[str, Any]:
        """Its part of ``/admin/status``: ``uptime_s``, ``replicas``, ``models``, ``cache``,
        and ``gpus`` where the machine has GPUs."""
        return {
            "uptime_s": self.uptime_s,
            "replicas": [r.to_json() for r in self.replicas],
            "models": [m.to_json() for m in self.models],
            "cache": self.cache.to_json() if self.cache is not None else None,
            **({"gpus": [g.to_json() for g in self.gpus]} if self.gpus else {}),
        }


# Where the metrics read the server's statistics (called at scrapes and ticks).
StatisticsProvider = Callable[[], ServerStatistics]
TickListener = Callable[[float, ServerStatistics], None]


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile from per-bucket (not cumulative) counts, interpolated linearly
    inside the bucket as Prometheus' ``histogram_quantile`` does; None when empty.
    ``counts`` has one more entry than ``bounds``: the +Inf bucket."""
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):  # the +Inf bucket: the largest finite bound is all we know
                return float(bounds[-1])
            low = 0.0 if i == 0 else float(bounds[i - 1])
            return low + (float(bounds[i]) - low) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


@dataclasses.dataclass(slots=True)
class _AppCounters:
    """Cumulative per-app counts, bumped on the event loop."""

    requests: int = 0  # predict requests answered (a batch request counts once)
    queries: int = 0  # inputs answered
    overloaded: int = 0  # requests refused with 503
    latency_sum: float = 0.0
    latency: list[int] = dataclasses.field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1)
    )
    defaults: list[int] = dataclasses.field(default_factory=lambda: [0] * len(REASONS))
    feedback: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # no, yes
    # Per query, by answer: [computed, default] latency buckets and sums.
    answers: list[list[int]] = dataclasses.field(
        default_factory=lambda: [[0] * (len(LATENCY_BUCKETS_S) + 1) for _ in ANSWERS]
    )
    answer_sums: list[float] = dataclasses.field(default_factory=lambda: [0.0] * len(ANSWERS))


@dataclasses.dataclass
class _BatchSizes:
    """Exact per-model histograms of batch sizes and batch latencies, fed by the
    dispatcher once per finished batch."""

    counts: list[int] = dataclasses.field(
        default_factory=lambda: [0] * (len(BATCH_SIZE_BUCKETS) + 1)
    )
    count: int = 0  # batches
    total: int = 0  # their summed sizes: the queries the model computed
    latency: list[int] = dataclasses.field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1)
    )
    latency_sum: float = 0.0

    def observe(self, size: int, latency_s: float) -> None:
        self.counts[bisect_left(BATCH_SIZE_BUCKETS, size)] += 1
        self.count += 1
        self.total += size
        self.latency[bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
        self.latency_sum += latency_s


def _add_app(into: _AppCounters, other: _AppCounters) -> None:
    into.requests += other.requests
    into.queries += other.queries
    into.overloaded += other.overloaded
    into.latency_sum += other.latency_sum
    for mine, theirs in (
        (into.latency, other.latency),
        (into.defaults, other.defaults),
        (into.feedback, other.feedback),
        *zip(into.answers, other.answers, strict=True),
    ):
        for i, n in enumerate(theirs):
            mine[i] += n
    for i, total in enumerate(other.answer_sums):
        into.answer_sums[i] += total


def _add_batches(into: _BatchSizes, other: _BatchSizes) -> None:
    into.count += other.count
    into.total += other.total
    into.latency_sum += other.latency_sum
    for mine, theirs in ((into.counts, other.counts), (into.latency, other.latency)):
        for i, n in enumerate(theirs):
            mine[i] += n


def _summed(
    own: dict[K, C],
    peers: Sequence[Mapping[K, C]],
    add: Callable[[C, C], None],
    known: Mapping[K, Any] | None,
) -> dict[K, C]:
    """``own`` counters with the peers' added (copies: ``own`` stays as it is); a
    key only peers have counts if ``known`` (the catalog) still has it."""
    if not peers:
        return own
    merged = {key: copy.deepcopy(c) for key, c in own.items()}
    for peer in peers:
        for key, c in peer.items():
            if key in merged:
                add(merged[key], c)
            elif known is None or key in known:
                merged[key] = copy.deepcopy(c)
    return merged


@dataclasses.dataclass(frozen=True)
class Counters:
    """What one process's metrics counted (cumulative), as a worker sends them to
    its supervisor (``--workers``), which sums them with its own."""

    apps: dict[str, _AppCounters]
    batch_sizes: dict[ModelId, _BatchSizes]
    loop_lag_s: float


def retire_counters(past: Counters | None, last: Counters) -> Counters:
    """The counters of worker processes that exited (``past``) with one more's last
    report added: the supervisor keeps adding them to the sums, so that a worker
    started again from zero does not set ``/metrics``' counters back."""
    if past is None:
        return Counters(copy.deepcopy(last.apps), copy.deepcopy(last.batch_sizes), 0.0)
    apps = _summed(past.apps, [last.apps], _add_app, None)
    return Counters(apps, _summed(past.batch_sizes, [last.batch_sizes], _add_batches, None), 0.0)


class _StateReader(Protocol):
    def get_policy_state(self, app: str, uid: str) -> dict[str, Any] | None: ...


def selection_weights(
    policy: str, models: Sequence[str], state: Mapping[str, Any] | None
) -> dict[str, float]:
    """How much an app's policy trusts each linked model.

    Exp3/Exp4: its share of the weight (sums to 1). Epsilon-greedy, UCB1 and
    Thompson: its mean reward so far (0-1; 0 before any feedback). Single:
    1 for the model that serves, 0 for the others.
    """
    if not models:
        return {}
    if policy == "single":
        return {m: float(i == 0) for i, m in enumerate(models)}
    impl = get_policy(policy)
    shares = getattr(impl, "weight_shares", None)
    if shares is not None:
        return dict(zip(models, shares(dict(state or {}), list(models)), strict=True))
    stats = (state or {}).get("stats")
    stats = stats if isinstance(stats, Mapping) else {}
    out = {}
    for m in models:
        mean = stats.get(m, {}).get("mean") if isinstance(stats.get(m), Mapping) else None
        out[m] = float(mean) if isinstance(mean, int | float) and math.isfinite(mean) else 0.0
    return out


_HELP = {
    "requests": "Predict requests answered (a batch request counts once)",
    "queries": "Queries (inputs) answered",
    "overloaded": "Predict requests refused with 503 (the app sheds load)",
    "defaults": "Queries answered with the default output, by reason",
    "feedback": "Feedback (/update) requests, by whether they were accepted",
    "latency": "Predict request latency in the server, from parsed request to answer",
    "answer_latency": "Per query: latency in the server from parsed request to answer, "
    "by whether the models' output (computed) or the app's default answered",
    "predictions": "Queries the model computed (in finished batches)",
    "batch_size": "Batch sizes sent to the model",
    "batch_latency": "Time from sending a batch to its result, seconds",
}
_Family = type[CounterMetricFamily] | type[GaugeMetricFamily]
_C, _G = CounterMetricFamily, GaugeMetricFamily
# Per model version, read from the dispatcher's ModelStatistics: (name, kind, help, value).
_MODEL: tuple[tuple[str, _Family, str, Callable[[ModelStatistics], float]], ...] = (
    ("batches", _C, "Batches finished", lambda m: m.batches),
    (
        "batch_errors",
        _C,
        "Batches the model failed on, in whole or in part (it raised or died)",
        lambda m: m.errors,
    ),
    (
        "errors",
        _C,
        "Queries the model failed (it raised on them, gave an unusable output, or its "
        "replica was lost with them), apart from SLO misses",
        lambda m: m.model_errors,
    ),
    ("enqueued", _C, "Tasks queued", lambda m: m.queue.enqueued),
    ("expired", _C, "Tasks dropped unsent: their deadline passed", lambda m: m.queue.expired),
    ("rejected", _C, "Tasks refused: the queue was full", lambda m: m.queue.rejected),
    (
        "shed",
        _C,
        "Queries answered at arrival, not queued: the queries ahead of them fill what "
        "the replicas can compute within the SLO (an overload)",
        lambda m: m.shed,
    ),
    ("coalesced", _C, "Queries joined to an identical pending one", lambda m: m.coalesced),
    (
        "max_batch_size",
        _G,
        "The largest of its replicas' batch-size maximums",
        lambda m: m.max_batch_size,
    ),
    ("queue_depth", _G, "Tasks waiting in the queue", lambda m: m.queue.depth),
    ("queue_capacity", _G, "The queue's bound", lambda m: m.queue.capacity),
    ("in_flight_batches", _G, "Batches on replicas now", lambda m: m.in_flight_batches),
    ("replicas", _G, "Live replicas", lambda m: m.replicas),
    (
        "last_batch_latency_seconds",
        _G,
        "The latest batch's round trip",
        lambda m: m.last_batch_latency_s,
    ),
)
_CACHE: tuple[tuple[str, _Family, str, Callable[[CacheStatistics], float]], ...] = (
    ("hits", _C, "Prediction cache hits (all models)", lambda c: c.hits),
    ("misses", _C, "Prediction cache misses (all models)", lambda c: c.misses),
    ("evictions", _C, "Entries evicted to stay under the byte bound", lambda c: c.evictions),
    ("entries", _G, "Entries in the prediction cache", lambda c: c.entries),
    ("bytes", _G, "Bytes held by the prediction cache", lambda c: c.bytes),
    ("max_bytes", _G, "The prediction cache's byte bound", lambda c: c.max_bytes),
)


class Metrics:
    """One server's metrics: the observer of the query path and ``GET /metrics``."""

    def __init__(
        self,
        statistics: StatisticsProvider,
        *,
        catalog: Catalog | None = None,
        store: _StateReader | None = None,
        registry: CollectorRegistry | None = None,
        sample_interval_s: float = 1.0,
        slo_log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.statistics = statistics
        self.catalog = catalog
        self.store = store
        self.sample_interval_s = sample_interval_s
        self.slo_log_interval_s = slo_log_interval_s
        self.clock = clock
        self.apps: dict[str, _AppCounters] = {}
        self.batch_sizes: dict[ModelId, _BatchSizes] = {}
        self.weights: dict[str, dict[str, float]] = {}
        self.listeners: list[TickListener] = []
        self.rollouts: RolloutSnapshot | None = None  # set by the server
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)
        with contextlib.suppress(Exception):  # /proc is Linux-only
            ProcessCollector(namespace="clipper", registry=self.registry)
        self._task: asyncio.Task[None] | None = None
        self._logged: dict[str, tuple[list[int], int, int]] = {}
        self._logged_errors: dict[ModelId, int] = {}
        self._next_log = 0.0
        self.shed_log = ShedLog()
        # A supervisor's sibling workers' counters (``--workers``), summed with
        # this process's own wherever they are read; None: a single process.
        self.peers: Callable[[], Sequence[Counters]] | None = None
        self.log_misses = True  # a worker leaves the log lines to its supervisor
        self.loop_lag_s = 0.0  # the largest of the last LAG_SAMPLES lags
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)

    # -- the hot path: called on the event loop once per request ------------------------

    def _app(self, app: str) -> _AppCounters:
        counters = self.apps.get(app)
        if counters is None:
            counters = self.apps[app] = _AppCounters()
        return counters

    def observe_predictions(
        self, app: str, latency_s: float, predictions: list[Prediction]
    ) -> None:
        """One predict request answered (200): its latency and each query's outcome."""
        c = self.apps.get(app) or self._app(app)
        c.requests += 1
        c.queries += len(predictions)
        bucket = bisect_left(LATENCY_BUCKETS_S, latency_s)
        c.latency[bucket] += 1
        c.latency_sum += latency_s
        defaulted = 0
        for p in predictions:
            if p.default:
                defaulted += 1
                c.defaults[_REASON_INDEX[p.reason]] += 1
        computed = len(predictions) - defaulted
        if computed:
            c.answers[0][bucket] += computed
            c.answer_sums[0] += latency_s * computed
        if defaulted:
            c.answers[1][bucket] += defaulted
            c.answer_sums[1] += latency_s * defaulted

    def observe_overload(self, app: str) -> None:
        """One predict request refused with 503 (the app sheds load)."""
        self._app(app).overloaded += 1

    def observe_feedback(self, app: str, accepted: bool) -> None:
        """One ``/update`` answered."""
        self._app(app).feedback[accepted] += 1

    # -- several worker processes: their sums ----------------------------------------------

    def counters(self) -> Counters:
        """This process's counters (what a worker sends its supervisor)."""
        return Counters(self.apps, self.batch_sizes, self.loop_lag_s)

    def all_apps(self) -> dict[str, _AppCounters]:
        """Per app: this process's counts, plus its workers' (``--workers``)."""
        known = self.catalog.snapshot.apps if self.catalog is not None else None
        return _summed(self.apps, [p.apps for p in self._peers()], _add_app, known)

    def all_batch_sizes(self) -> dict[ModelId, _BatchSizes]:
        """Per model version: this process's batch histograms, plus its workers'."""
        known = self.catalog.snapshot.models if self.catalog is not None else None
        batch_sizes = [p.batch_sizes for p in self._peers()]
        return _summed(self.batch_sizes, batch_sizes, _add_batches, known)

    def _peers(self) -> Sequence[Counters]:
        return self.peers() if self.peers is not None else ()

    def all_loop_lag(self) -> float:
        """The largest event-loop lag of this process and its workers."""
        return max([self.loop_lag_s, *(p.loop_lag_s for p in self._peers())])

    # -- GET /metrics ------------------------------------------------------------------

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in Prometheus' text format (or OpenMetrics, if ``accept``, the
        request's Accept header, asks for it): the body and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def render_formats(self) -> dict[str, bytes]:
        """The exposition in each format, by content type (what a supervisor sends
        its workers to serve)."""
        rendered = (self.exposition(accept) for accept in ("", OPENMETRICS))
        return {content_type: body for body, content_type in rendered}

    def collect(self) -> Iterator[Metric]:
        """The prometheus_client Collector interface: every ``clipper_`` family."""
        stats = self.statistics()
        yield from self._app_families()
        yield from self._model_families(stats.models)
        cache = stats.cache
        if cache is not None:
            for name, kind, doc, value in _CACHE:
                yield kind(f"clipper_cache_{name}", doc, value=float(value(cache)))
        rv = ["model", "version", "replica"]
        up = GaugeMetricFamily("clipper_replica_up", "1 if the replica is live, else 0", labels=rv)
        restarts = CounterMetricFamily("clipper_replica_restarts", "Replica restarts", labels=rv)
        for r in stats.replicas:
            labels = [r.model.name, r.model.version, r.replica]
            up.add_metric(labels, 1.0 if r.live else 0.0)
            restarts.add_metric(labels, float(r.restarts))
        weight = GaugeMetricFamily(
            "clipper_selection_weight", "The policy's trust in a model", labels=["app", "model"]
        )
        for app, shares in self.weights.items():
            for model, w in shares.items():
                weight.add_metric([app, model], w)
        uptime = GaugeMetricFamily("clipper_uptime_seconds", "Seconds since the server started")
        uptime.add_metric([], float(stats.uptime_s))
        lag = GaugeMetricFamily(
            "clipper_event_loop_lag_seconds",
            f"How late the server's event loop ran its once-a-second sampling timer: "
            f"the largest of the last {LAG_SAMPLES} times (of every worker process)",
        )
        lag.add_metric([], self.all_loop_lag())
        yield from (up, restarts, weight, uptime, lag)
        if stats.gpus:  # absent, not zero, without GPUs
            yield from gpu_families(stats.gpus)
        if self.rollouts is not None:
            yield from rollout_families(self.rollouts())

    def _app_families(self) -> Iterator[Metric]:
        a, ar, ay = ["app"], ["app", "reason"], ["app", "accepted"]
        requests = CounterMetricFamily("clipper_app_requests", _HELP["requests"], labels=a)
        queries = CounterMetricFamily("clipper_app_queries", _HELP["queries"], labels=a)
        overloaded = CounterMetricFamily("clipper_app_overloaded", _HELP["overloaded"], labels=a)
        defaults = CounterMetricFamily("clipper_app_default_outputs", _HELP["defaults"], labels=ar)
        feedback = CounterMetricFamily("clipper_app_feedback", _HELP["feedback"], labels=ay)
        latency = HistogramMetricFamily(
            "clipper_app_request_latency_seconds", _HELP["latency"], labels=a
        )
        answers = HistogramMetricFamily(
            "clipper_app_answer_latency_seconds", _HELP["answer_latency"], labels=["app", "answer"]
        )
        for name, c in self.all_apps().items():
            requests.add_metric([name], c.requests)
            queries.add_metric([name], c.queries)
            overloaded.add_metric([name], c.overloaded)
            for reason, n in zip(REASONS, c.defaults, strict=True):
                defaults.add_metric([name, reason], n)
            feedback.add_metric([name, "true"], c.feedback[1])
            feedback.add_metric([name, "false"], c.feedback[0])
            latency.add_metric([name], _cumulative(LATENCY_BUCKETS_S, c.latency), c.latency_sum)
            for answer, buckets, total in zip(ANSWERS, c.answers, c.answer_sums, strict=True):
                answers.add_metric([name, answer], _cumulative(LATENCY_BUCKETS_S, buckets), total)
        yield from (requests, queries, overloaded, defaults, feedback, latency, answers)

    def _model_families(self, models: Sequence[ModelStatistics]) -> Iterator[Metric]:
        mv = ["model", "version"]
        families = [
            (kind(f"clipper_model_{n}", doc, labels=mv), value) for n, kind, doc, value in _MODEL
        ]
        predictions = CounterMetricFamily(
            "clipper_model_predictions", _HELP["predictions"], labels=mv
        )
        sizes = HistogramMetricFamily("clipper_model_batch_size", _HELP["batch_size"], labels=mv)
        latencies = HistogramMetricFamily(
            "clipper_model_batch_latency_seconds", _HELP["batch_latency"], labels=mv
        )
        batch_sizes = self.all_batch_sizes()
        for m in models:
            labels = [m.model.name, m.model.version]
            for family, value in families:
                family.add_metric(labels, float(value(m)))
            h = batch_sizes.get(m.model) or _BatchSizes()
            # Exact: the dispatcher's count of queries computed.
            predictions.add_metric(labels, float(m.predictions))
            sizes.add_metric(labels, _cumulative(BATCH_SIZE_BUCKETS, h.counts), float(h.total))
            latencies.add_metric(labels, _cumulative(LATENCY_BUCKETS_S, h.latency), h.latency_sum)
        yield from (f for f, _ in families)
        yield from (predictions, sizes, latencies)

    # -- background: batch sizes, weights, listeners, SLO-miss log lines -------------------

    def observe_batch(self, model: ModelId, size: int, latency_s: float) -> None:
        """A batch finished (called by the dispatcher on the event loop)."""
        h = self.batch_sizes.get(model)
        if h is None:
            h = self.batch_sizes[model] = _BatchSizes()
        h.observe(size, latency_s)

    def _read_weights(
        self, apps: list[tuple[str, str, tuple[str, ...]]]
    ) -> dict[str, dict[str, float]]:
        out = {}
        for app, policy, models in apps:
            state = None
            if policy != "single" and self.store is not None:
                state = self.store.get_policy_state(app, SHARED)
            out[app] = selection_weights(policy, models, state)
        return out

    async def refresh_weights(self) -> None:
        """Re-read every app's shared policy state (in a thread: it may touch the store)."""
        if self.catalog is None:
            return
        apps = [(n, r.spec.policy, r.models) for n, r in self.catalog.snapshot.apps.items()]
        self.weights = await asyncio.to_thread(self._read_weights, apps)

    async def tick(self) -> None:
        """One sample: feed the listeners, maybe log SLO misses."""
        stats = self.statistics()
        now = self.clock()
        if self.catalog is not None:  # forget deleted apps
            for gone in self.apps.keys() - self.catalog.snapshot.apps.keys():
                del self.apps[gone]
                self._logged.pop(gone, None)
            # and deleted model versions: their batch series leave /metrics and the
            # status; one deployed again counts its model errors afresh.
            known = self.catalog.snapshot.models.keys()
            for deleted in self.batch_sizes.keys() - known:
                del self.batch_sizes[deleted]
            for deleted in self._logged_errors.keys() - known:
                del self._logged_errors[deleted]
        for listener in self.listeners:
            listener(now, stats)
        if not self.log_misses:
            await self.refresh_weights()
            return
        self.shed_log.observe(now, ((m.model, m.shed) for m in stats.models))
        if now >= self._next_log:
            if self._next_log:
                self.log_slo_misses()
                self.log_model_errors(stats.models)
            self._next_log = now + self.slo_log_interval_s
        await self.refresh_weights()

    def log_slo_misses(self) -> None:
        """One line per app whose queries missed (default outputs, 503s) since the
        last call; model errors are not SLO misses (``log_model_errors``)."""
        for app, c in self.all_apps().items():
            before, queries, overloaded = self._logged.get(app, ([0] * len(REASONS), 0, 0))
            misses = [now - then for now, then in zip(c.defaults, before, strict=True)]
            misses[_OVERLOADED] += c.overloaded - overloaded
            misses[_MODEL_ERROR] = 0
            self._logged[app] = (list(c.defaults), c.queries, c.overloaded)
            if sum(misses):
                reasons = ",".join(f"{r}:{n}" for r, n in zip(REASONS, misses, strict=True) if n)
                log.warning(
                    "slo_misses app=%s count=%d queries=%d reasons=%s interval_s=%g",
                    *(app, sum(misses), c.queries - queries, reasons, self.slo_log_interval_s),
                )

    def log_model_errors(self, models: Sequence[ModelStatistics]) -> None:
        """One line per model version that failed queries since the last call,
        with the last one's explanation (the traceback is in the replica's log)."""
        for m in models:
            before = self._logged_errors.get(m.model, 0)
            self._logged_errors[m.model] = m.model_errors
            if m.model_errors > before:
                log.warning(
                    "model_errors model=%s version=%s count=%d interval_s=%g last=%s",
                    m.model.name,
                    m.model.version,
                    m.model_errors - before,
                    self.slo_log_interval_s,
                    json.dumps(m.last_model_error[:300], ensure_ascii=False),
                )

    async def _run(self) -> None:
        next_at = self.clock()
        while True:  # on a fixed schedule; after a stall, resume from now (no burst)
            next_at = max(next_at + self.sample_interval_s, self.clock())
            await asyncio.sleep(next_at - self.clock())
            # How late the loop woke this timer: a frontend starved of CPU (or
            # running long callbacks) answers late, defaults included.
            self._lags.append(max(0.0, self.clock() - next_at))
            self.loop_lag_s = max(self._lags)
            try:
                await self.tick()
            except Exception:
                log.exception("metrics sampling failed")

    def start(self) -> None:
        """Start the once-a-second background task (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics-sampler")

    async def stop(self) -> None:
        """Stop the background task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def add_listener(self, listener: TickListener) -> None:
        """Call ``listener(monotonic_now, statistics)`` at every tick (once a second)."""
        self.listeners.append(listener)

    # -- inspect_instance ------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """What only the metrics know, as a dict (``/admin/status``'s ``metrics`` key);
        the dispatcher's, cache's and replicas' figures sit beside it in the status."""
        apps = {}
        for name, c in self.all_apps().items():
            p50, p99 = (bucket_quantile(q, LATENCY_BUCKETS_S, c.latency) for q in (0.5, 0.99))
            apps[name] = {
                "requests": c.requests,
                "queries": c.queries,
                "overloaded": c.overloaded,
                "default_outputs": dict(zip(REASONS, c.defaults, strict=True)),
                "feedback": {"accepted": c.feedback[1], "rejected": c.feedback[0]},
                "latency_s": {"count": c.requests, "sum": c.latency_sum, "p50": p50, "p99": p99},
                "selection_weights": dict(self.weights.get(name, {})),
            }
        batch_sizes = {
            str(model): {
                "count": h.count,
                "sum": h.total,
                "buckets": dict(_cumulative(BATCH_SIZE_BUCKETS, h.counts)),
            }
            for model, h in self.all_batch_sizes().items()
        }
        return {"apps": apps, "batch_sizes": batch_sizes}


def pick_format(rendered: Mapping[str, bytes], accept: str) -> tuple[bytes, str] | None:
    """From ``render_formats``' output, the body a request's Accept header asks
    for, and its content type (None: not rendered)."""
    _, content_type = choose_encoder(accept)
    body = rendered.get(content_type)
    return None if body is None else (body, content_type)


def rollout_families(rollouts: Sequence[tuple[RolloutSpec, Evidence, float]]) -> Iterator[Metric]:
    """Per-version series of the running rollouts (``role`` is base or new)."""
    mv, m = ["model", "version", "mode", "role"], ["model"]
    counters = {
        key: CounterMetricFamily(f"clipper_rollout_{key}", doc, labels=mv)
        for key, doc in (
            ("queries", "Queries a rollout's version answered (shadow's new: copies sent)"),
            ("errors", "A rollout's version's queries that failed in the model"),
            ("slo_misses", "A rollout's version's queries without an output by the deadline"),
            ("feedback", "Labels scored against a rollout's version's output"),
        )
    }
    accuracy = GaugeMetricFamily(
        "clipper_rollout_accuracy", "1 - mean loss over a version's labels", labels=mv
    )
    latency = GaugeMetricFamily(
        "clipper_rollout_latency_seconds",
        "A rollout's version's latency over its last queries, by quantile",
        labels=[*mv, "quantile"],
    )
    share = GaugeMetricFamily("clipper_rollout_new_share", "The new version's share", labels=m)
    better = GaugeMetricFamily(
        "clipper_rollout_p_new_better", "P(the new version is more accurate)", labels=m
    )
    agreement = GaugeMetricFamily(
        "clipper_rollout_shadow_agreement", "Share of shadow copies with equal outputs", labels=m
    )
    dropped = CounterMetricFamily(
        "clipper_rollout_shadow_dropped", "Shadow copies not sent: the new one was busy", labels=m
    )

    for spec, evidence, new_share in rollouts:
        share.add_metric([spec.model], new_share)
        for role, version, figures in (
            ("base", spec.base_version, evidence.base),
            ("new", spec.new_version, evidence.new),
        ):
            labels = [spec.model, version, spec.mode, role]
            counters["queries"].add_metric(labels, float(figures.queries))
            counters["errors"].add_metric(labels, float(figures.errors))
            counters["slo_misses"].add_metric(labels, float(figures.slo_misses))
            counters["feedback"].add_metric(labels, float(figures.feedback))
            if figures.accuracy is not None:
                accuracy.add_metric(labels, figures.accuracy)
            for q in (0.5, 0.99):
                value = figures.latency_quantile(q)
                if value is not None:
                    latency.add_metric([*labels, str(q)], value)
        if evidence.base.feedback and evidence.new.feedback:
            better.add_metric([spec.model], p_new_better(evidence.base, evidence.new))
        if spec.mode == "shadow":
            if evidence.compared:
                agreement.add_metric([spec.model], evidence.agreed / evidence.compared)
            dropped.add_metric([spec.model], float(evidence.shadow_dropped))
    yield from counters.values()
    yield from (accuracy, latency, share, better, agreement, dropped)


def gpu_families(gpus: Sequence[GpuSample]) -> Iterator[Metric]:
    """Per-GPU gauges, labelled by index and model name."""
    labels = ["gpu", "name"]
    families = (
        ("utilization_ratio", "Share of the last sample period a kernel ran on the GPU"),
        ("memory_used_bytes", "GPU memory in use (all processes)"),
        ("memory_total_bytes", "GPU memory in all"),
    )
    out = [GaugeMetricFamily(f"clipper_gpu_{n}", doc, labels=labels) for n, doc in families]
    for g in gpus:
        values = (g.utilization, g.memory_used_bytes, g.memory_total_bytes)
        for family, value in zip(out, values, strict=True):
            family.add_metric([str(g.index), g.name], float(value))
    yield from out


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, n in zip([*bounds, math.inf], counts, strict=True):
        running += n
        out.append((floatToGoString(bound), float(running)))
    return out
