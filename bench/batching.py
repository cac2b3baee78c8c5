"""The batching benchmark (``make bench``): what adaptive batching buys, as in the paper.

For a linear SVM and an MLP (bench/models.py), each served by a real Clipper
server (its own process, started through the admin client) at an SLO of
20 ms, it measures every batching configuration: batch size 1, fixed 8, 32
and 64, AIMD, quantile regression, and AIMD with 1, 2 and 5 ms of delayed
batching; a random forest in six of them (batch size 1, fixed 8 and 64,
AIMD, quantile, AIMD + 2 ms) and a no-op model in two (batch size 1, AIMD).
For each:

- goodput: the highest Poisson arrival rate at which the client-side p99
  latency is within the SLO and no query got the default output (and none
  failed), found by a short search of open-loop probes (each after a short
  unmeasured warm-up at its rate; a near miss is confirmed by a second probe);
- at a fixed moderate load (the same rate for every configuration of a
  model): p50/p99 latency, the mean batch size and the CPU time the server
  and the model replica spent per query.

Each configuration is measured ``--repeats`` times (3), each time on a
fresh server; the report gives medians and, per repeat, the ratio to batch
size 1 measured in that repeat. Finally one AIMD run is traced (batch size
every 50 ms) while the model is slowed down in the middle of the run.

Every probe also measures how much CPU *other* processes on the machine
used meanwhile; a probe disturbed by them is run again (``--retries``).

Writes bench/results/batching.json, the batching section of
docs/benchmarks.md and two plots in docs/img/ (``--quick``: a ~2 minute
subset, written to bench/results/batching-quick.json only, unless ``--docs``).
The per-probe measurements and the AIMD trace go to the raw file of the same
name in bench/results/raw/ only (not committed; bench/store.py); ``--render
FILE`` rewrites the section and the plots from saved results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loadgen, models, report, store
from .harness import (
    BENCHMARKS_DOC,
    IMG,
    RESULTS,
    ROOT,
    BenchServer,
    CpuPlan,
    loop_factory,
    machine_info,
    own_cpu_seconds,
    system_busy_seconds,
    wait_for,
    write_doc_section,
)
from .loadgen import LoadResult, Pool, Workload

DOC = BENCHMARKS_DOC
COMMON_FLAGS = ("--cache-bytes", "0", "--log-level", "WARNING")
INPUT_POOL = 2000  # distinct inputs cycled per workload (the cache is off anyway)


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    batch_size: int  # -1: the server's adaptive policy
    flags: tuple[str, ...]

    def app(self, model: str) -> str:
        return f"{model}-{self.key}".replace("_", "-")


AIMD = ("--batching", "aimd")
CONFIGS = [
    Config("b1", "batch size 1", 1, AIMD),
    Config("fixed8", "fixed 8", 8, AIMD),
    Config("fixed32", "fixed 32", 32, AIMD),
    Config("fixed64", "fixed 64", 64, AIMD),
    Config("aimd", "AIMD", -1, AIMD),
    Config("quantile", "quantile", -1, ("--batching", "quantile")),
    Config("aimd-d1", "AIMD + 1 ms delay", -1, (*AIMD, "--max-batch-delay-ms", "1")),
    Config("aimd-d2", "AIMD + 2 ms delay", -1, (*AIMD, "--max-batch-delay-ms", "2")),
    Config("aimd-d5", "AIMD + 5 ms delay", -1, (*AIMD, "--max-batch-delay-ms", "5")),
]
QUICK_CONFIGS = ("b1", "fixed32", "aimd", "aimd-d2")


@dataclass(frozen=True)
class ModelKind:
    key: str
    label: str
    make: Callable[[], Any]
    inputs: Callable[[int], list[Any]]
    describe: str
    configs: tuple[str, ...] | None = None  # None: every configuration
    in_quick: bool = True

    def runs(self, config: Config) -> bool:
        return self.configs is None or config.key in self.configs


MODELS = [
    ModelKind(
        "svm",
        "linear SVM",
        models.LinearSVM,
        models.digits_inputs,
        "scikit-learn LinearSVC on the bundled digits data, 64 doubles per query",
    ),
    ModelKind(
        "mlp",
        "MLP",
        models.MLP,
        models.mlp_inputs,
        "numpy MLP 784-512-512-10 (float32, fixed seed), 784 integers per query",
    ),
    ModelKind(
        "forest",
        "random forest",
        models.RandomForest,
        models.digits_inputs,
        "scikit-learn RandomForestClassifier, 25 trees, one thread, on the bundled digits "
        "data, 64 doubles per query",
        configs=("b1", "fixed8", "fixed64", "aimd", "quantile", "aimd-d2"),
        in_quick=False,
    ),
    ModelKind(
        "noop",
        "no-op",
        models.NoOp,
        models.digits_inputs,
        "answers 0 at once, 64 doubles per query: what the serving system costs alone",
        configs=("b1", "aimd"),
        in_quick=False,
    ),
]


def _rounded(rate: float) -> float:
    return max(10.0, round(rate / 10) * 10)


def _bracket(
    passes: Callable[[float], bool],
    start: float,
    lo: float,
    up: float,
    down: float,
    precision: float,
    max_probes: int,
) -> float:
    """Step up (``up``) or down (``down``) from ``start`` to a bracket, then
    bisect; ``lo``: a rate already known to pass (0: none). The highest rate
    that passed."""
    hi = float("inf")
    rate = start
    for _ in range(max_probes):
        rate = _rounded(rate)
        if passes(rate):
            lo = max(lo, rate)
        else:
            hi = rate
        if lo > 0 and hi < float("inf") and hi - lo <= precision * lo:
            break
        if hi == float("inf"):
            rate = max(rate, lo) * up
        elif lo == 0:
            if rate <= 10:
                break
            rate = rate / down
        else:
            rate = (lo + hi) / 2
    return lo


def search_rate(
    passes: Callable[[float], bool],
    start: float,
    *,
    hinted: bool,
    precision: float,
    max_probes: int,
    recheck: float = 1.5,
) -> float:
    """The highest rate at which ``passes`` (one probe, confirmed as the caller
    likes): step up (x1.5) or down (/2) from ``start`` to a bracket, then
    bisect; smaller steps when ``start`` is an earlier result.

    Then one probe at ``recheck`` times the result: latency need not grow with
    the load. On a model whose small batches cost much more per query than
    large ones, p99 can be higher at 500/s, where lone queries keep the
    replica busy, than at 1,000/s, where the queue fills batches (see
    docs/benchmarks.md, the heavy MLP on one shared core), and a search that
    failed one probe in such a band stopped below what the server sustains.
    If the probe above passes, the search climbs on from it (x1.5, with half
    the probes). Goodput is the highest rate that passes, so the same search
    serves every server: where latency does grow with the load, the recheck
    fails and costs one probe.
    """
    up, down = (1.15, 1.3) if hinted else (1.5, 2.0)
    lo = _bracket(passes, start, 0.0, up, down, precision, max_probes)
    if lo > 0 and recheck > 1:
        above = _rounded(lo * recheck)
        if passes(above):
            climb = max(2, max_probes // 2)
            lo = _bracket(passes, above * 1.5, above, 1.5, 2.0, precision, climb)
    return lo


@dataclass
class Options:
    repeats: int = 3
    configs: tuple[str, ...] = tuple(c.key for c in CONFIGS)
    slo_ms: float = 20.0
    probe_s: float = 1.2
    warmup_s: float = 0.3  # unmeasured load at the probe's rate before each probe
    quiet_budget_s: float = 180.0  # total waiting for quiet per run
    moderate_s: float = 2.0
    precision: float = 0.08
    max_probes: int = 8
    retries: int = 2
    foreign_limit: float = 0.15  # cores used by other processes that spoil a probe
    quiet_wait_s: float = 15.0  # how long to wait for the machine to go quiet per probe
    moderate_fraction: float = 0.8  # of batch size 1's goodput (first repeat)
    timeline_phase_s: float = 6.0
    # While slowed, each batch sleeps this many ms, plus per query what fills
    # this share of the model's time at the trace's rate.
    timeline_batch_ms: float = 1.0
    timeline_utilisation: float = 0.7
    timeline_load: float = 0.6  # of AIMD's median goodput on the MLP
    timeline_rate: float | None = None  # or this rate
    connections: int = 256
    quick: bool = False
    pin: bool = True


@dataclass
class Probe:
    rate: float
    passed: bool
    load: dict[str, Any]
    mean_batch_size: float
    max_batch_size: int
    server_cpu_per_query_us: float
    replica_cpu_per_query_us: float
    foreign_cores: float
    disturbed: bool
    attempts: int
    starved: bool = False  # queries came, the model got no batch at all


@dataclass
class Measurement:
    model: str
    config: str
    repeat: int
    capacity_closed_loop: float
    goodput: float
    probes: list[Probe] = field(default_factory=list)
    moderate: Probe | None = None


class Bench:
    def __init__(self, opts: Options, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.log = log
        self.cpus = CpuPlan.choose(opts.pin)
        self.runner = asyncio.Runner(loop_factory=loop_factory())
        self.moderate_rate: dict[str, float] = {}
        self.measurements: list[Measurement] = []
        self.disturbed_probes = 0
        self.quiet_wait_total_s = 0.0

    # -- one probe ---------------------------------------------------------------

    def probe(
        self,
        server: BenchServer,
        pool: Pool,
        workload: Workload,
        app: str,
        rate: float,
        secs: float,
    ) -> Probe:
        """One open-loop run at ``rate``; run again if other processes disturbed it
        (keeping the least disturbed attempt)."""
        probe: Probe | None = None
        for attempt in range(1 + self.opts.retries):
            if attempt:
                self.wait_quiet(server)
            before = self._counters(server, app)
            load = self.runner.run(
                loadgen.run_open(
                    pool,
                    workload,
                    rate,
                    secs,
                    connections=self.opts.connections,
                    seed=attempt,
                    warmup_s=self.opts.warmup_s,
                )
            )
            after = self._counters(server, app)
            this = self._probe(rate, load, before, after, attempt + 1)
            self.settle(server, app)
            if probe is None or this.foreign_cores < probe.foreign_cores:
                probe = this
            probe.attempts = attempt + 1
            if not this.disturbed:
                break
            self.disturbed_probes += 1
            self.log(
                f"    {rate:.0f}/s disturbed: other processes used {this.foreign_cores:.2f} "
                "cores; again"
            )
        assert probe is not None
        return probe

    def foreign_cores(self, server: BenchServer, window_s: float) -> float:
        """Cores that processes other than the benchmark's used over ``window_s``."""

        def ours() -> float:
            cpu = server.cpu()
            return own_cpu_seconds() + cpu["server"] + cpu["replicas"]

        t0, busy0, ours0 = time.perf_counter(), system_busy_seconds(), ours()
        time.sleep(window_s)  # a measurement window, not a wait for readiness
        t1, busy1, ours1 = time.perf_counter(), system_busy_seconds(), ours()
        return max(0.0, (busy1 - busy0 - (ours1 - ours0)) / (t1 - t0))

    def wait_quiet(self, server: BenchServer) -> None:
        """Wait (bounded) until other processes leave the CPUs to the benchmark."""
        t0 = time.perf_counter()
        budget = self.opts.quiet_budget_s - self.quiet_wait_total_s
        deadline = t0 + max(0.0, min(self.opts.quiet_wait_s, budget))
        foreign = self.foreign_cores(server, 0.2)
        while foreign > self.opts.foreign_limit and time.perf_counter() < deadline:
            foreign = self.foreign_cores(server, 0.5)
        waited = time.perf_counter() - t0
        self.quiet_wait_total_s += waited
        if waited > 1.0:
            self.log(f"    waited {waited:.0f}s for other processes to leave the CPUs")

    def _counters(self, server: BenchServer, app: str) -> dict[str, float]:
        m = server.model_status(app)
        cpu = server.cpu()
        return {
            "t": time.perf_counter(),
            "busy": system_busy_seconds(),
            "own": own_cpu_seconds(),
            "server": cpu["server"],
            "replicas": cpu["replicas"],
            "batches": m.get("batches", 0),
            "tasks": m.get("mean_batch_size", 0.0) * m.get("batches", 0),
            "max_batch_size": m.get("max_batch_size", 0),
        }

    def _probe(
        self,
        rate: float,
        load: LoadResult,
        b: dict[str, float],
        a: dict[str, float],
        attempts: int,
    ) -> Probe:
        wall = a["t"] - b["t"]
        ours = (a["own"] - b["own"]) + (a["server"] - b["server"]) + (a["replicas"] - b["replicas"])
        foreign = max(0.0, (a["busy"] - b["busy"] - ours) / wall) if wall > 0 else 0.0
        batches = a["batches"] - b["batches"]
        done = max(1, load.answered_total)  # the counters span the warm-up too
        passed = (
            load.p99_ms <= self.opts.slo_ms
            and load.defaults == 0
            and load.errors == 0
            and load.unsent == 0
            and load.completed > 0
        )
        return Probe(
            rate=rate,
            passed=passed,
            load=load.to_dict(),
            mean_batch_size=(a["tasks"] - b["tasks"]) / batches if batches else 0.0,
            max_batch_size=int(a["max_batch_size"]),
            server_cpu_per_query_us=(a["server"] - b["server"]) / done * 1e6,
            replica_cpu_per_query_us=(a["replicas"] - b["replicas"]) / done * 1e6,
            foreign_cores=foreign,
            disturbed=foreign > self.opts.foreign_limit,
            attempts=attempts,
            starved=batches == 0 and load.answered_total > 0,
        )

    def marginal(self, p: Probe) -> bool:
        """A failed probe that is no clear overload: few defaults, p99 near the SLO."""
        load = p.load
        return (
            load["default_ratio"] < 0.01
            and load["p99_ms"] < 2 * self.opts.slo_ms
            and load["client_backlogged"] == 0
            and load["errors"] == 0
        )

    def settle(self, server: BenchServer, app: str) -> None:
        """Wait until the model's queue is empty and no batch is in flight."""

        def idle() -> bool:
            m = server.model_status(app)
            return not m or (m["queue"]["depth"] == 0 and m["in_flight_batches"] == 0)

        wait_for(idle, 10, f"{app} to go idle")

    # -- one configuration ------------------------------------------------------------

    def measure(
        self, server: BenchServer, kind: ModelKind, config: Config, repeat: int, hint: float | None
    ) -> Measurement:
        app = config.app(kind.key)
        workload = Workload.predict(server.host, server.query_port, app, kind.inputs(INPUT_POOL))
        pool = Pool(server.host, server.query_port)
        try:
            self.wait_quiet(server)
            capacity = 0.0
            if not hint:
                # A first guess at the capacity: closed loop, 96 clients.
                closed = self.runner.run(loadgen.run_closed(pool, workload, 96, 1.0))
                self.settle(server, app)
                capacity = closed.achieved_rate * (1 - closed.default_ratio)
            m = Measurement(kind.key, config.key, repeat, capacity, 0.0)
            start = hint if hint else max(100.0, capacity)
            m.goodput = self.search(server, pool, workload, app, start, m, hinted=bool(hint))
            if kind.key not in self.moderate_rate:
                # The same moderate load for every configuration of this model.
                rate = round(max(50.0, self.opts.moderate_fraction * m.goodput) / 50) * 50
                self.moderate_rate[kind.key] = rate
            m.moderate = self.probe(
                server, pool, workload, app, self.moderate_rate[kind.key], self.opts.moderate_s
            )
        finally:
            pool.close()
        mod = m.moderate
        starved = sum(p.starved for p in [*m.probes, mod])
        if starved:
            self.log(f"  ! {app}: the model got no batch at all in {starved} probe(s) (starved)")
        self.log(
            f"  {kind.label:13s} {config.label:18s} goodput {m.goodput:7.0f}/s "
            f"({len(m.probes)} probes); at {mod.rate:.0f}/s: p99 {mod.load['p99_ms']:.1f} ms, "
            f"mean batch {mod.mean_batch_size:.1f}, defaults {mod.load['defaults']}"
        )
        return m

    def search(
        self,
        server: BenchServer,
        pool: Pool,
        workload: Workload,
        app: str,
        start: float,
        m: Measurement,
        *,
        hinted: bool = False,
    ) -> float:
        """Highest passing rate (``search_rate``)."""

        def passes(rate: float) -> bool:
            p = self.probe(server, pool, workload, app, rate, self.opts.probe_s)
            m.probes.append(p)
            if not p.passed and self.marginal(p):
                # A near miss may be a hiccup rather than the limit: confirm it once.
                p = self.probe(server, pool, workload, app, rate, self.opts.probe_s)
                m.probes.append(p)
            return p.passed

        o = self.opts
        return search_rate(
            passes, start, hinted=hinted, precision=o.precision, max_probes=o.max_probes
        )

    # -- the whole sweep ------------------------------------------------------------------

    def run_sweep(self) -> None:
        configs = [c for c in CONFIGS if c.key in self.opts.configs]
        groups: dict[tuple[str, ...], list[Config]] = {}
        for c in configs:
            groups.setdefault(c.flags, []).append(c)
        hints: dict[tuple[str, str], float] = {}
        kinds = [k for k in MODELS if k.in_quick or not self.opts.quick]
        for repeat in range(1, self.opts.repeats + 1):
            self.log(f"repeat {repeat}/{self.opts.repeats}")
            for flags, group in groups.items():
                t0 = time.perf_counter()
                with BenchServer([*COMMON_FLAGS, *flags], self.cpus, self.log) as server:
                    for kind in kinds:
                        for config in filter(kind.runs, group):
                            server.deploy(
                                config.app(kind.key),
                                kind.make(),
                                slo_ms=self.opts.slo_ms,
                                batch_size=config.batch_size,
                            )
                    self.log(f" server {' '.join(flags)}: up in {time.perf_counter() - t0:.1f}s")
                    for kind in kinds:
                        for config in filter(kind.runs, group):
                            hint = hints.get((kind.key, config.key))
                            m = self.measure(server, kind, config, repeat, hint)
                            self.measurements.append(m)
                            if m.goodput > 0:
                                hints[(kind.key, config.key)] = m.goodput

    # -- AIMD under a slow-down -------------------------------------------------------------

    def run_timeline(self) -> dict[str, Any]:
        """AIMD's batch size every 50 ms while the model is slowed down mid-run."""
        kind = next(k for k in MODELS if k.key == "mlp")
        phase = self.opts.timeline_phase_s
        # Slowed: each batch sleeps 1 ms plus a per-query time that keeps the
        # model busy 85 % of the time at this rate, so the queue fills batches
        # to the cap and the batches that miss AIMD's latency target make it
        # back off: the batch size has to find its new level.
        flag_dir = Path(tempfile.mkdtemp(prefix="clipper-bench-flag-"))
        flag = str(flag_dir / "slow")
        samples: list[dict[str, Any]] = []
        trace: list[loadgen.TracePoint] = []
        try:
            with BenchServer([*COMMON_FLAGS, *AIMD], self.cpus, self.log) as server:
                app = "mlp-timeline"
                server.deploy(app, models.Slowable(kind.make(), flag), slo_ms=self.opts.slo_ms)
                goodputs = [
                    m.goodput
                    for m in self.measurements
                    if m.model == kind.key and m.config == "aimd" and m.goodput > 0
                ]
                if self.opts.timeline_rate:
                    rate = self.opts.timeline_rate
                else:
                    rate = self.opts.timeline_load * statistics.median(goodputs or [2500.0])
                    rate = round(rate / 50) * 50
                slow = (
                    self.opts.timeline_batch_ms,
                    round(self.opts.timeline_utilisation / rate * 1000, 4),
                )
                workload = Workload.predict(
                    server.host, server.query_port, app, kind.inputs(INPUT_POOL)
                )
                pool = Pool(server.host, server.query_port)
                try:
                    self.wait_quiet(server)
                    before = self._counters(server, app)
                    load = self.runner.run(
                        self._timeline(
                            server, pool, workload, app, rate, phase, flag, slow, samples, trace
                        )
                    )
                    foreign = self._probe(rate, load, before, self._counters(server, app), 1)
                finally:
                    pool.close()
                    models.set_slowdown(flag, None)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(flag_dir)
        self.log(
            f" AIMD timeline: {rate:.0f}/s, {len(samples)} samples, other processes used "
            f"{foreign.foreign_cores:.2f} cores, slowed from "
            f"{phase:.0f}s to {2 * phase:.0f}s; {load.summary()}"
        )
        starved_from = starved_since(samples)
        if starved_from is not None:
            self.log(f"  ! the model got no batch from {starved_from:.1f}s on (starved)")
        return {
            "model": kind.key,
            "starved_from_s": starved_from,
            "rate": rate,
            "slo_ms": self.opts.slo_ms,
            "target_ms": self.opts.slo_ms * 0.5,
            "slow_from_s": phase,
            "slow_until_s": 2 * phase,
            "slowdown": {"per_batch_ms": slow[0], "per_query_ms": slow[1]},
            "load": load.to_dict(),
            "samples": samples,
            "client_windows": windows(trace, 0.25),
            "foreign_cores": foreign.foreign_cores,
        }

    async def _timeline(
        self,
        server: BenchServer,
        pool: Pool,
        workload: Workload,
        app: str,
        rate: float,
        phase: float,
        flag: str,
        slow: tuple[float, float],
        samples: list[dict[str, Any]],
        trace: list[loadgen.TracePoint],
    ) -> LoadResult:
        done = False
        model = f"{app}:1"

        def sink(t: float, status: dict[str, Any]) -> None:
            for m in status["models"]:
                if m["model"] == model:
                    samples.append(
                        {
                            "t": round(t, 3),
                            "max_batch_size": m["max_batch_size"],
                            "last_batch_size": m["last_batch_size"],
                            "last_batch_latency_ms": round(m["last_batch_latency_s"] * 1000, 3),
                            "expired": m["queue"]["expired"],
                            "batches": m["batches"],
                        }
                    )

        async def phases() -> None:
            await asyncio.sleep(phase)
            models.set_slowdown(flag, slow)
            await asyncio.sleep(phase)
            models.set_slowdown(flag, None)

        poller = asyncio.create_task(
            loadgen.poll_json(
                server.host,
                server.admin_port,
                "/admin/status",
                0.05,
                lambda: done,
                sink,
                server.admin_headers,
            )
        )
        switcher = asyncio.create_task(phases())
        try:
            load = await loadgen.run_open(
                pool, workload, rate, 3 * phase, connections=self.opts.connections, trace=trace
            )
        finally:
            done = True
            switcher.cancel()
            await asyncio.gather(poller, switcher, return_exceptions=True)
        return load


def starved_since(samples: list[dict[str, Any]], min_s: float = 1.0) -> float | None:
    """When the model's batch count stopped for good (for at least ``min_s`` to
    the end of the trace, while the load went on), else None."""
    if not samples:
        return None
    last = samples[-1]
    since = last["t"]
    for point in reversed(samples):
        if point["batches"] != last["batches"]:
            break
        since = point["t"]
    return since if last["t"] - since >= min_s else None


def windows(trace: list[loadgen.TracePoint], width_s: float) -> list[dict[str, float]]:
    """Client-side view of a traced run: p99 latency and default share per window."""
    by_window: dict[int, list[tuple[float, bool]]] = {}
    for t, latency, default in trace:
        by_window.setdefault(int(t / width_s), []).append((latency, default))
    out = []
    for index in sorted(by_window):
        points = by_window[index]
        latencies = sorted(p[0] for p in points)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        out.append(
            {
                "t": round((index + 0.5) * width_s, 3),
                "count": len(points),
                "p99_ms": round(p99 * 1000, 3),
                "default_share": sum(p[1] for p in points) / len(points),
            }
        )
    return out


# -- summary -------------------------------------------------------------------------------


def summarise(measurements: list[Measurement], opts: Options) -> dict[str, Any]:
    """Medians over repeats, and per-repeat ratios to batch size 1."""
    out: dict[str, Any] = {}
    base = {(m.model, m.repeat): m.goodput for m in measurements if m.config == "b1"}
    for kind in MODELS:
        rows = {}
        for config in CONFIGS:
            ms = [m for m in measurements if m.model == kind.key and m.config == config.key]
            if not ms:
                continue
            goodputs = [m.goodput for m in ms]
            ratios = [
                m.goodput / base[(m.model, m.repeat)] for m in ms if base.get((m.model, m.repeat))
            ]
            mods = [m.moderate for m in ms if m.moderate is not None]
            rows[config.key] = {
                "label": config.label,
                "goodput_median": statistics.median(goodputs),
                "goodput_min": min(goodputs),
                "goodput_max": max(goodputs),
                "goodputs": goodputs,
                "ratio_vs_b1_median": statistics.median(ratios) if ratios else None,
                "ratios_vs_b1": ratios,
                "moderate_rate": mods[0].rate if mods else None,
                "moderate_p50_ms": report.median([p.load["p50_ms"] for p in mods]),
                "moderate_p99_ms": report.median([p.load["p99_ms"] for p in mods]),
                "moderate_defaults": sum(p.load["defaults"] for p in mods),
                "moderate_mean_batch": report.median([p.mean_batch_size for p in mods]),
                "moderate_server_us": report.median([p.server_cpu_per_query_us for p in mods]),
                "moderate_replica_us": report.median([p.replica_cpu_per_query_us for p in mods]),
                "capacity_closed_loop": report.median(
                    [m.capacity_closed_loop for m in ms if m.capacity_closed_loop]
                ),
            }
        out[kind.key] = rows
    return out


# -- outputs -------------------------------------------------------------------------------

# The raw parts of a result: in bench/results/raw/ only (bench/store.py).
RAW_KEYS = ("measurements", "timeline.samples", "timeline.client_windows")
FIGURES = (
    ("Goodput and p99 latency per batching configuration", "batching-throughput.png"),
    ("AIMD batch size over time, with a slow-down mid-run", "aimd-batch-size.png"),
)


def write_markdown(result: dict[str, Any]) -> None:
    write_doc_section("batching", render_markdown(result), DOC)


def render_markdown(result: dict[str, Any]) -> str:
    """The generated part: settings, the table, the plots (prose lives outside)."""
    tables: list[report.Block] = []
    for kind in MODELS:
        rows = result["summary"].get(kind.key)
        if rows:
            tables += _model_table(kind, rows)
    return report.blocks(
        "### Results (generated by `make bench`)",
        _settings(result),
        *tables,
        _timeline_note(result.get("timeline")),
        *(report.figure(alt, name) for alt, name in FIGURES),
    )


def _settings(result: dict[str, Any]) -> str:
    info, opts = result["machine"], result["options"]
    starved = result.get("starved_probes")
    return (
        f"Run {info['date_utc']} on {report.machine(info, memory=True)}, "
        f"{report.versions(info, 'numpy', 'scikit-learn')}; "
        f"{info['pinning']}; Clipper at {report.measured(info)}. "
        f"SLO {opts['slo_ms']:.0f} ms (AIMD/quantile target "
        f"{opts['slo_ms'] / 2:.0f} ms per batch); {opts['repeats']} repeat(s), medians shown; "
        f"{result['probes']} probes; {result['disturbed_probes']} re-run because other "
        f"processes used more than {opts['foreign_limit']:.2f} cores meanwhile, "
        f"{result['disturbed_kept']} still disturbed after {opts['retries']} re-runs; "
        f"load average {report.loadavg(info)}."
        + (
            f" In {len(starved)} probe(s) the model got no batch at all (starved, see below)."
            if starved
            else ""
        )
    )


def _model_table(kind: ModelKind, rows: dict[str, Any]) -> list[report.Block]:
    """One model's title and table."""
    first = next(iter(rows.values()))
    title = (
        f"**{kind.label}** ({kind.describe}); moderate load = "
        f"{first['moderate_rate']:.0f} queries/s:"
    )
    head = (
        "configuration",
        "goodput (q/s)",
        "range",
        "x batch 1",
        "p50 @ moderate (ms)",
        "p99 @ moderate (ms)",
        "mean batch @ moderate",
        "CPU µs/query @ moderate (server + model)",
    )
    return [title, report.table(head, "lrrrrrrr", map(_config_row, rows.values()))]


def _config_row(row: dict[str, Any]) -> list[str]:
    fmt = report.fmt
    server, replica = row["moderate_server_us"], row["moderate_replica_us"]
    return [
        row["label"],
        f"{row['goodput_median']:.0f}",
        f"{row['goodput_min']:.0f}-{row['goodput_max']:.0f}",
        report.times(row["ratio_vs_b1_median"]),
        fmt(row["moderate_p50_ms"], 1),
        fmt(row["moderate_p99_ms"], 1),
        fmt(row["moderate_mean_batch"], 1),
        f"{(server or 0) + (replica or 0):.0f} ({fmt(server)} + {fmt(replica)})",
    ]


def _timeline_note(tl: dict[str, Any] | None) -> str | None:
    if not tl:
        return None
    slow = tl["slowdown"]
    return (
        f"AIMD trace: the MLP at {tl['rate']:.0f} queries/s; from {tl['slow_from_s']:.0f} s "
        f"to {tl['slow_until_s']:.0f} s each batch sleeps "
        f"{slow['per_batch_ms']:g} ms + {slow['per_query_ms']:g} ms per query."
        + (
            f" **From {tl['starved_from_s']:.1f} s on the model got no batch at all** "
            "(see the reading below)."
            if tl.get("starved_from_s") is not None
            else ""
        )
    )


def write_plots(result: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """The goodput plot (from the summary) and the AIMD trace (from the timeline,
    which only the raw result holds: without it the published plot is kept)."""
    plt = report.pyplot()
    # The no-op's two configurations are a reference, not a comparison worth a panel.
    kinds = [k for k in MODELS if len(result["summary"].get(k.key) or ()) > 2]
    if kinds:
        _plot_goodput(result, kinds, plt)
    tl = result.get("timeline")
    if tl and tl.get("samples"):
        _plot_timeline(tl, plt)
    elif tl:
        log(f"no AIMD trace samples (see {store.RAW.relative_to(ROOT)}): kept {FIGURES[1][1]}")


def _plot_goodput(result: dict[str, Any], kinds: list[ModelKind], plt: Any) -> None:
    fig, axes = plt.subplots(2, len(kinds), figsize=(6.5 * len(kinds), 8), squeeze=False)
    slo = result["options"]["slo_ms"]
    for col, kind in enumerate(kinds):
        rows = result["summary"][kind.key]
        labels = [
            r["label"].replace(" ms delay", "ms").replace("batch size 1", "batch 1")
            for r in rows.values()
        ]
        colors = [_color(key) for key in rows]
        _goodput_panel(axes[0][col], kind, rows, labels, colors, slo)
        _latency_panel(axes[1][col], kind, rows, labels, colors, slo)
    report.save_figure(fig, IMG / FIGURES[0][1])


def _goodput_panel(
    ax: Any, kind: ModelKind, rows: dict[str, Any], labels: list[str], colors: list[str], slo: float
) -> None:
    x = range(len(labels))
    med = [r["goodput_median"] for r in rows.values()]
    err = [
        [r["goodput_median"] - r["goodput_min"] for r in rows.values()],
        [r["goodput_max"] - r["goodput_median"] for r in rows.values()],
    ]
    ax.bar(x, med, yerr=err, color=colors, capsize=3)
    for i, r in enumerate(rows.values()):
        if r["ratio_vs_b1_median"]:
            ax.annotate(
                f"{r['ratio_vs_b1_median']:.1f}x",
                (i, r["goodput_max"]),  # above the error bar
                ha="center",
                va="bottom",
                xytext=(0, 4),
                textcoords="offset points",
                fontsize=8,
            )
    ax.set_title(f"{kind.label}: goodput (p99 ≤ {slo:.0f} ms, no defaults)")
    ax.set_ylabel("queries / s (median, min-max)")
    ax.text(
        0.01,
        0.98,
        "labels: median ratio to batch size 1 (same repeat)",
        transform=ax.transAxes,
        va="top",
        fontsize=7,
        color="dimgrey",
    )
    ax.set_xticks(list(x), labels, rotation=35, ha="right", fontsize=8)
    ax.margins(y=0.15)


def _latency_panel(
    ax: Any, kind: ModelKind, rows: dict[str, Any], labels: list[str], colors: list[str], slo: float
) -> None:
    x = range(len(labels))
    p99 = [r["moderate_p99_ms"] or 0 for r in rows.values()]
    p50 = [r["moderate_p50_ms"] or 0 for r in rows.values()]
    ax.bar(x, p99, color=colors, alpha=0.85, label="p99")
    ax.scatter(x, p50, color="black", marker="_", s=200, label="p50", zorder=3)
    ax.axhline(slo, color="red", linestyle="--", linewidth=1, label="SLO")
    rate = next(iter(rows.values()))["moderate_rate"]
    ax.set_title(f"{kind.label}: latency at a moderate {rate:.0f} queries/s")
    ax.set_ylabel("ms")
    ax.set_xticks(list(x), labels, rotation=35, ha="right", fontsize=8)
    ax.legend(fontsize=8)


def _plot_timeline(tl: dict[str, Any], plt: Any) -> None:
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True)
    for ax in (ax1, ax2, ax3):
        ax.axvspan(
            tl["slow_from_s"],
            tl["slow_until_s"],
            color="orange",
            alpha=0.15,
            label="model slowed down",
        )
    _trace_batches(ax1, ax2, tl)
    _trace_client(ax3, tl)
    report.save_figure(fig, IMG / FIGURES[1][1])


def _trace_batches(ax1: Any, ax2: Any, tl: dict[str, Any]) -> None:
    """The server's side: AIMD's maximum, the last batch's size and latency."""
    s = tl["samples"]
    t = [p["t"] for p in s]
    ax1.step(t, [p["max_batch_size"] for p in s], where="post", label="AIMD max batch size")
    ax1.plot(
        t,
        [p["last_batch_size"] for p in s],
        ".",
        markersize=3,
        alpha=0.6,
        label="last batch size",
    )
    ax1.set_ylabel("queries per batch")
    ax1.set_title(
        f"AIMD on the MLP at {tl['rate']:.0f} queries/s "
        f"(SLO {tl['slo_ms']:.0f} ms, batch target {tl['target_ms']:.0f} ms); "
        "server state every 50 ms"
    )
    ax1.legend(fontsize=8, loc="upper left")
    ax2.plot(
        t, [p["last_batch_latency_ms"] for p in s], ".", markersize=3, label="last batch latency"
    )
    ax2.axhline(
        tl["target_ms"], color="red", linestyle="--", linewidth=1, label="AIMD latency target"
    )
    ax2.set_ylabel("ms")
    ax2.legend(fontsize=8, loc="upper left")


def _trace_client(ax3: Any, tl: dict[str, Any]) -> None:
    """The client's side, per window: p99 latency and the share of default outputs."""
    w = tl.get("client_windows") or []
    wt = [p["t"] for p in w]
    ax3.plot(wt, [p["p99_ms"] for p in w], "-o", markersize=3, label="client p99 latency (ms)")
    ax3.axhline(tl["slo_ms"], color="red", linestyle="--", linewidth=1, label="SLO")
    ax3.set_ylabel("ms")
    ax3.set_xlabel("seconds since the load started")
    ax3b = ax3.twinx()
    ax3b.bar(
        wt,
        [100 * p["default_share"] for p in w],
        width=0.2,
        color="grey",
        alpha=0.5,
        label="default outputs (%)",
    )
    ax3b.set_ylabel("% default outputs")
    ax3b.set_ylim(0, 100)
    lines = ax3.get_legend_handles_labels()
    bars = ax3b.get_legend_handles_labels()
    ax3.legend(lines[0] + bars[0], lines[1] + bars[1], fontsize=8, loc="upper left")
    ax3.set_title("client side, per 0.25 s", fontsize=10)


def _color(key: str) -> str:
    if key == "b1":
        return "#888888"
    if key.startswith("fixed"):
        return "#6baed6"
    if key.startswith("aimd-d"):
        return "#31a354"
    if key == "quantile":
        return "#9e9ac8"
    return "#2171b5"


# -- entry point ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.batching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a ~2 minute subset, 1 repeat")
    parser.add_argument("--repeats", type=int, help="repeats per configuration (default 3)")
    parser.add_argument(
        "--configs", help="comma-separated keys: " + ",".join(c.key for c in CONFIGS)
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="with --quick: write docs/benchmarks.md and the plots too",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--no-timeline", action="store_true", help="skip the AIMD trace")
    parser.add_argument("--out", type=Path, help="results JSON path")
    parser.add_argument(
        "--quiet-budget",
        type=float,
        help="seconds the run may wait in all for other processes to leave the CPUs "
        "(default 180; 30 with --quick)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        help="only rewrite the docs section and the plots from a results JSON (the AIMD "
        "trace only when its raw file in bench/results/raw/ is there)",
    )
    return parser


def _options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    opts = Options(pin=not args.no_pin)
    if args.quick:
        opts = Options(
            repeats=1,
            configs=QUICK_CONFIGS,
            probe_s=1.0,
            moderate_s=1.5,
            precision=0.15,
            max_probes=6,
            retries=1,
            quiet_wait_s=5.0,
            quiet_budget_s=30.0,
            timeline_phase_s=3.0,
            quick=True,
            pin=not args.no_pin,
        )
    if args.repeats:
        opts.repeats = args.repeats
    if args.quiet_budget is not None:
        opts.quiet_budget_s = args.quiet_budget
    if args.configs:
        wanted = tuple(k.strip() for k in args.configs.split(","))
        unknown = set(wanted) - {c.key for c in CONFIGS}
        if unknown:
            parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        opts.configs = tuple(dict.fromkeys(("b1", *wanted)))  # the ratios need batch size 1
    return opts


def _result(bench: Bench, info: dict[str, Any], timeline: dict[str, Any] | None) -> dict[str, Any]:
    """Everything a run measured (the raw parts included: see ``RAW_KEYS``)."""
    opts, measured = bench.opts, bench.measurements
    probes = [(m, p) for m in measured for p in [*m.probes, *([m.moderate] if m.moderate else [])]]
    return {
        "benchmark": "batching",
        "machine": info,
        "options": opts.__dict__ | {"configs": list(opts.configs)},
        "configs": [c.__dict__ for c in CONFIGS if c.key in opts.configs],
        "models": [{"key": k.key, "label": k.label, "describe": k.describe} for k in MODELS],
        "moderate_rate": bench.moderate_rate,
        "disturbed_probes": bench.disturbed_probes,
        "disturbed_kept": sum(p.disturbed for _, p in probes),
        "probes": sum(len(m.probes) + 1 for m in measured),
        "starved_probes": [
            f"{m.model}/{m.config}/r{m.repeat}@{p.rate:.0f}" for m, p in probes if p.starved
        ],
        "quiet_wait_s": round(bench.quiet_wait_total_s, 1),
        "summary": summarise(measured, opts),
        "measurements": [_plain(m) for m in measured],
        "timeline": timeline,
    }


def _render(path: Path) -> int:
    result = store.load(path)
    write_markdown(result)
    write_plots(result)
    print(render_markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.render:
        return _render(args.render)
    opts = _options(args, parser)
    out = args.out or RESULTS / ("batching-quick.json" if opts.quick else "batching.json")
    write_docs = not opts.quick or args.docs

    def log(msg: str) -> None:
        print(msg, flush=True)

    bench = Bench(opts, log)
    bench.cpus.pin_generator()
    info = machine_info(bench.cpus)
    log(f"clipper from {info['clipper_from']}; {info['pinning']}")
    t0 = time.perf_counter()

    def save(timeline: dict[str, Any] | None) -> dict[str, Any]:
        info["loadavg_end"] = os.getloadavg()
        info["elapsed_s"] = round(time.perf_counter() - t0, 1)
        result = _result(bench, info, timeline)
        store.save(out, result, RAW_KEYS)
        return result

    try:
        bench.run_sweep()
        result = save(None)  # the sweep's results survive a failing trace
        if not args.no_timeline:
            result = save(bench.run_timeline())
    finally:
        bench.runner.close()
    log(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} (and its raw file)")
    if write_docs:
        write_markdown(result)
        write_plots(result, log)
        log(f"wrote {DOC.relative_to(ROOT)} and docs/img/*.png")
    log(render_markdown(result))
    log(f"done in {info['elapsed_s']:.0f}s")
    return 0


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in obj.__dict__.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
