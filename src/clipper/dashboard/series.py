"""The dashboard's time series: one sample a second, kept server-side in a ring buffer.

Each sample turns the metrics' running totals into per-second figures (the
difference from the previous sample): per app the throughput, p50/p99
latency (from the latency histogram's buckets) and the share of default
outputs; per model version the mean batch size; the cache hit ratio; the
selection weights. Taking a sample and answering the page are both
O(apps + models): nothing here ever looks at a single query.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from ..metrics import (
    LATENCY_BUCKETS_S,
    OVERLOADED_INDEX,
    Metrics,
    ServerStatistics,
    bucket_quantile,
)
from ..selection.rollout import report as rollout_report
from ..store.catalog import Catalog
from ..types import ModelId

HISTORY = 300  # samples kept: five minutes at one a second


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


class SeriesRecorder:
    """Samples the metrics at each tick; answers the dashboard's summary."""

    def __init__(
        self,
        metrics: Metrics,
        catalog: Catalog | None,
        *,
        history: int = HISTORY,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.catalog = catalog
        self.wall_clock = wall_clock
        self.samples: deque[dict[str, Any]] = deque(maxlen=history)
        self.stats: ServerStatistics | None = None  # the latest tick's
        # Running totals at the previous tick, to difference against.
        self._last_at: float | None = None
        # Per app: queries, defaults, shed (overloaded), latency, default answers' latency.
        self._apps: dict[str, tuple[int, int, int, list[int], list[int]]] = {}
        self._models: dict[ModelId, tuple[int, int]] = {}
        self._cache = (0, 0)
        metrics.add_listener(self.sample)

    def sample(self, now: float, stats: ServerStatistics) -> None:
        """Record one sample (``now`` on the monotonic clock, ``stats`` the server's)."""
        elapsed = now - self._last_at if self._last_at is not None else None
        self._last_at = now
        self.stats = stats
        apps: dict[str, dict[str, float | None]] = {}
        last_apps, self._apps = self._apps, {}
        for name, c in self.metrics.all_apps().items():
            queries, defaults = c.queries, sum(c.defaults)
            shed = c.defaults[OVERLOADED_INDEX] + c.overloaded  # answered at once, or 503
            answered_default = c.answers[1]
            before = last_apps.get(name)
            self._apps[name] = (queries, defaults, shed, list(c.latency), list(answered_default))
            if before is None or not elapsed:
                continue
            dq = queries - before[0]
            latency = [n - m for n, m in zip(c.latency, before[3], strict=True)]
            by_default = [n - m for n, m in zip(answered_default, before[4], strict=True)]
            apps[name] = {
                "qps": round(dq / elapsed, 3),
                "p50_ms": _ms(bucket_quantile(0.5, LATENCY_BUCKETS_S, latency)),
                "p99_ms": _ms(bucket_quantile(0.99, LATENCY_BUCKETS_S, latency)),
                "default_ratio": _ratio(defaults - before[1], dq),
                # Overload: queries shed per second, and how fast defaults left.
                "shed_qps": round((shed - before[2]) / elapsed, 3),
                "default_p99_ms": _ms(bucket_quantile(0.99, LATENCY_BUCKETS_S, by_default)),
            }
        models: dict[str, dict[str, float | None]] = {}
        last_models, self._models = self._models, {}
        batch_sizes = self.metrics.all_batch_sizes()
        for m in stats.models:
            key, h = m.model, batch_sizes.get(m.model)
            totals = (h.count, h.total) if h is not None else (0, 0)
            before_m = last_models.get(key)
            self._models[key] = totals
            if before_m is not None and elapsed:
                batches = totals[0] - before_m[0]
                models[str(key)] = {"batch_size": _ratio(totals[1] - before_m[1], batches)}
        cache = stats.cache
        hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
        dh, dm = hits - self._cache[0], misses - self._cache[1]
        self._cache = (hits, misses)
        if elapsed:
            self.samples.append(
                {
                    "t": round(self.wall_clock(), 3),
                    "apps": apps,
                    "models": models,
                    "cache_hit_ratio": _ratio(dh, dh + dm) if cache is not None else None,
                    "weights": {a: dict(w) for a, w in self.metrics.weights.items()},
                }
            )

    def summary(self, since: float | None = None) -> dict[str, Any]:
        """Apps, models and replicas, and the samples newer than ``since`` (all if None)."""
        samples = []
        for s in reversed(self.samples):  # newest first: only the new ones are read
            if since is not None and s["t"] <= since:
                break
            samples.append(s)
        samples.reverse()
        stats = self.stats
        cache = stats.cache if stats is not None else None
        return {
            "uptime_s": stats.uptime_s if stats is not None else None,
            "interval_s": self.metrics.sample_interval_s,
            "history": self.samples.maxlen,
            "apps": self._apps_table(),
            "models": _models_table(stats, self._current_versions(), self._known_versions()),
            "cache": cache.to_json() if cache is not None else None,
            "samples": samples,
            **({"gpus": [g.to_json() for g in stats.gpus]} if stats and stats.gpus else {}),
            "rollouts": self._rollouts(),
        }

    def _rollouts(self) -> list[dict[str, Any]]:
        """The running rollouts' live figures per version (the rollouts panel)."""
        running = self.metrics.rollouts() if self.metrics.rollouts is not None else []
        return [
            {"model": spec.model, **rollout_report(spec, evidence, share)}
            for spec, evidence, share in sorted(running, key=lambda r: r[0].model)
        ]

    def _apps_table(self) -> list[dict[str, Any]]:
        if self.catalog is None:
            return []
        return [
            {
                "name": name,
                "slo_ms": route.spec.slo_micros / 1000,
                "policy": route.spec.policy,
                "models": list(route.models),
                "input_type": route.spec.input_type.value,
                "default_output": route.spec.default_output,
            }
            for name, route in sorted(self.catalog.snapshot.apps.items())
        ]

    def _current_versions(self) -> dict[str, str]:
        return dict(self.catalog.snapshot.current) if self.catalog is not None else {}

    def _known_versions(self) -> Collection[ModelId] | None:
        return self.catalog.snapshot.models.keys() if self.catalog is not None else None


def _models_table(
    stats: ServerStatistics | None,
    current: dict[str, str],
    known: Collection[ModelId] | None = None,
) -> list[dict[str, Any]]:
    """Per model version: replicas live and dead, restarts, and the batcher's state.
    With ``known`` (the catalog's versions), a deleted version has no row, even
    while its last replicas stop."""
    rows: dict[ModelId, dict[str, Any]] = {}

    def row(key: ModelId) -> dict[str, Any]:
        if known is not None and key not in known:
            return {"live": 0, "dead": 0, "restarts": 0}  # counted nowhere
        if key not in rows:
            rows[key] = {
                "model": key.name,
                "version": key.version,
                "current": current.get(key.name) == key.version,
                "live": 0,
                "dead": 0,
                "restarts": 0,
                "max_batch_size": None,
                "queue_depth": None,
                "devices": [],
            }
        return rows[key]

    for name, version in current.items():
        row(ModelId(name, version))
    for r in stats.replicas if stats is not None else ():
        entry = row(r.model)
        entry["live" if r.live else "dead"] += 1
        entry["restarts"] += r.restarts
        runtime = r.details.get("runtime")
        device = (runtime.get("device") if isinstance(runtime, dict) else None) or r.details.get(
            "device"
        )
        if device and device not in entry.setdefault("devices", []):
            entry["devices"].append(device)
    for m in stats.models if stats is not None else ():
        entry = row(m.model)
        entry["max_batch_size"] = m.max_batch_size
        entry["queue_depth"] = m.queue.depth
    return sorted(rows.values(), key=lambda r: (r["model"], r["version"]))
