"""The prediction cache's benchmark (``make bench-cache``; ``make bench`` runs it too).

Two figures of issue 11 (the paper's prediction cache, NSDI '17 section 4.1):

- **Hit path**: closed-loop throughput and latency of queries the cache
  answers, against the same queries with the cache off for the app (each one
  queued, batched and computed by the model's replica). A pool of inputs is
  predicted once through the cached app; then the clients cycle through it,
  so every query is a hit (checked against the server's cache counters). For
  the light MLP (784 numbers per query) and the random forest (64 numbers,
  ~1.2 ms per batch whatever its size).
- **Feedback at window 1**: each client predicts an input never sent before
  and, as soon as the answer is back, sends its label (``POST /{app}/update``),
  so feedback always concerns the latest query. An ``exp4`` app over the
  linear SVM and the random forest scores both models' outputs for that input:
  with the cache they are still there from the prediction; with the app's
  ``cache`` option off both models compute them again. Pairs (a prediction
  and its feedback) per second, cache on over cache off: the paper reports
  1.6x. The models' evaluations per pair (from the queues' counters) show
  where the difference comes from.

One server (AIMD batching, the default 32 MiB cache) with its replicas pinned
to one core, the generator to the other, as in the batching benchmark. Each
measurement is taken ``--repeats`` times (3), cache on and off alternating
which goes first; medians and per-repeat ratios.

Writes bench/results/cache.json and the ``cache`` section of
docs/benchmarks.md (``--quick``: one short repeat, bench/results/cache-quick.json
only, unless ``--docs``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import loadgen, models, report
from .harness import (
    BENCHMARKS_DOC,
    RESULTS,
    ROOT,
    BenchServer,
    CpuPlan,
    loop_factory,
    machine_info,
    write_doc_section,
)
from .loadgen import LoadResult, Pool, Workload

FLAGS = ("--batching", "aimd", "--log-level", "WARNING")  # the default cache (32 MiB)
ACCEPTED = b'"accepted":true'


@dataclass(frozen=True)
class HitModel:
    key: str
    label: str
    make: Callable[[], Any]
    inputs: Callable[[int], list[Any]]


HIT_MODELS = (
    HitModel("mlp", "light MLP", models.MLP, models.mlp_inputs),
    HitModel("forest", "random forest", models.RandomForest, models.digits_inputs),
)
FEEDBACK_MODELS = ("svm", "forest")  # the exp4 app's models


@dataclass
class Options:
    repeats: int = 3
    seconds: float = 3.0
    clients: int = 64  # hit path
    feedback_clients: int = 16
    pool: int = 1000  # distinct inputs on the hit path
    slo_ms: float = 20.0
    pin: bool = True
    quick: bool = False


@dataclass
class Run:
    kind: str  # "hit" or "feedback"
    subject: str  # the model (hit path) or "exp4" (feedback)
    cache: bool
    repeat: int
    rate: float  # queries/s (hit path) or pairs/s (feedback)
    p50_ms: float
    p99_ms: float
    errors: int
    defaults: int
    hits: int
    misses: int
    server_us: float  # CPU per query (hit) or per pair (feedback)
    replica_us: float
    update_p50_ms: float | None = None
    update_p99_ms: float | None = None
    update_errors: int = 0
    evaluations_per_pair: dict[str, float] | None = None

    @classmethod
    def measured(
        cls,
        kind: str,
        subject: str,
        cache: bool,
        repeat: int,
        rate: float,
        load: LoadResult,
        before: dict[str, Any],
        after: dict[str, Any],
        **more: Any,
    ) -> Run:
        """From a load result (latency, errors) and the server's counters around it;
        CPU per answered query (the hit path) or pair (feedback: ``load`` is the
        predictions' half)."""
        done = max(1, load.answered_total)
        return cls(
            kind,
            subject,
            cache,
            repeat,
            rate,
            load.p50_ms,
            load.p99_ms,
            load.errors,
            load.defaults,
            after["hits"] - before["hits"],
            after["misses"] - before["misses"],
            (after["server"] - before["server"]) / done * 1e6,
            (after["replicas"] - before["replicas"]) / done * 1e6,
            **more,
        )


def unique_digits(count: int, start: int) -> tuple[list[list[float]], list[int]]:
    """``count`` digits rows made distinct (the first pixel, always 0 in the data,
    set to ``k * 1e-7`` for the k-th), and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.data)
    xs, ys = [], []
    for k in range(start, start + count):
        row = digits.data[k % n].tolist()
        row[0] = k * 1e-7
        xs.append(row)
        ys.append(int(digits.target[k % n]))
    return xs, ys


class CacheBench:
    def __init__(self, opts: Options, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.log = log
        self.cpus = CpuPlan.choose(opts.pin)
        self.runner = asyncio.Runner(loop_factory=loop_factory())
        self.runs: list[Run] = []
        self.next_input = 1  # feedback inputs are never reused across runs

    def setup(self, server: BenchServer) -> None:
        slo = int(self.opts.slo_ms * 1000)
        for m in HIT_MODELS:
            server.deploy(m.key, m.make(), slo_ms=self.opts.slo_ms)
        server.deploy("svm", models.LinearSVM(), slo_ms=self.opts.slo_ms)
        for m in HIT_MODELS:
            for cache in (True, False):
                app = f"{m.key}-{'on' if cache else 'off'}"
                server.conn.register_application(
                    app, "doubles", "-1", slo, options={"cache": cache}
                )
                server.conn.link_model_to_app(app, m.key)
        for cache in (True, False):
            app = f"fb-{'on' if cache else 'off'}"
            server.conn.register_application(
                app, "doubles", "-1", slo, selection_policy="exp4", options={"cache": cache}
            )
            for model in FEEDBACK_MODELS:
                server.conn.link_model_to_app(app, model)

    def _counters(self, server: BenchServer) -> dict[str, Any]:
        status = server.status()
        cache = status.get("cache") or {}
        cpu = server.cpu()
        return {
            "hits": cache.get("hits", 0),
            "misses": cache.get("misses", 0),
            "server": cpu["server"],
            "replicas": cpu["replicas"],
            "dispatched": {
                m["model"].split(":")[0]: m["queue"]["dispatched"] for m in status["models"]
            },
        }

    def fill(self, server: BenchServer, workload: Workload, chunk: int = 16) -> None:
        """Predict every input of ``workload`` until a pass over them is all hits.

        A few at a time: a query answered with the default at its deadline,
        before its batch ran, may be dropped from the queue uncomputed, and
        then nothing is cached for it."""
        for _ in range(5):
            before = self._counters(server)
            for start in range(0, len(workload.bodies), chunk):
                part = Workload(
                    workload.host,
                    workload.port,
                    workload.path,
                    workload.bodies[start : start + chunk],
                )
                answers = self.runner.run(part.send_each(chunk))
                bad = [status for status, _ in answers if status != 200]
                if bad:
                    raise RuntimeError(f"{workload.path}: filling the cache got HTTP {bad[0]}")
            if self._counters(server)["misses"] == before["misses"]:
                return
        raise RuntimeError(f"{workload.path}: the cache still missed after five passes")

    def hit_path(self, server: BenchServer, model: HitModel, cache: bool, repeat: int) -> Run:
        app = f"{model.key}-{'on' if cache else 'off'}"
        workload = Workload.predict(
            server.host, server.query_port, app, model.inputs(self.opts.pool)
        )
        pool = Pool(server.host, server.query_port)
        try:
            if cache:
                self.fill(server, workload)
            before = self._counters(server)
            load = self.runner.run(
                loadgen.run_closed(pool, workload, self.opts.clients, self.opts.seconds)
            )
            after = self._counters(server)
        finally:
            pool.close()
        run = Run.measured("hit", model.key, cache, repeat, load.achieved_rate, load, before, after)
        self.log(
            f"  hit path  {model.label:14s} cache {'on ' if cache else 'off'}: "
            f"{run.rate:7.0f} q/s, p50 {run.p50_ms:.2f} p99 {run.p99_ms:.2f} ms, "
            f"hits {run.hits} misses {run.misses}, errors {run.errors}"
        )
        return run

    def feedback(self, server: BenchServer, cache: bool, repeat: int) -> Run:
        app = f"fb-{'on' if cache else 'off'}"
        count = int(self.opts.seconds * 8000) + 1000  # more pairs than a run can use
        xs, ys = unique_digits(count, self.next_input)
        self.next_input += count
        predict = Workload.predict(server.host, server.query_port, app, xs)
        bodies = [
            json.dumps(
                {"uid": f"user{i % 16}", "input": x, "label": y}, separators=(",", ":")
            ).encode()
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        ]
        update = Workload(server.host, server.query_port, f"/{app}/update", bodies)
        pool = Pool(server.host, server.query_port)
        try:
            before = self._counters(server)
            first, then = self.runner.run(
                loadgen.run_closed_pairs(
                    pool,
                    predict,
                    update,
                    self.opts.feedback_clients,
                    self.opts.seconds,
                    then_must_contain=ACCEPTED,
                )
            )
            after = self._counters(server)
        finally:
            pool.close()
        pairs = max(1, first.answered_total)
        run = Run.measured(
            "feedback",
            "exp4",
            cache,
            repeat,
            then.achieved_rate,
            first,
            before,
            after,
            update_p50_ms=then.p50_ms,
            update_p99_ms=then.p99_ms,
            update_errors=then.errors,
            evaluations_per_pair={
                m: (after["dispatched"][m] - before["dispatched"].get(m, 0)) / pairs
                for m in FEEDBACK_MODELS
            },
        )
        self.log(
            f"  feedback  exp4 cache {'on ' if cache else 'off'}: {run.rate:7.0f} pairs/s, "
            f"predict p50 {run.p50_ms:.2f} ms, update p50 {run.update_p50_ms:.2f} ms, "
            f"evaluations per pair {run.evaluations_per_pair}, errors "
            f"{run.errors}+{run.update_errors}"
        )
        return run

    def run(self) -> None:
        with BenchServer(list(FLAGS), self.cpus, self.log) as server:
            self.setup(server)
            for repeat in range(1, self.opts.repeats + 1):
                self.log(f"repeat {repeat}/{self.opts.repeats}")
                order = (True, False) if repeat % 2 else (False, True)
                for model in HIT_MODELS:
                    for cache in order:
                        self.runs.append(self.hit_path(server, model, cache, repeat))
                for cache in order:
                    self.runs.append(self.feedback(server, cache, repeat))


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Medians per (kind, subject, cache), and the per-repeat ratio on / off."""
    out: dict[str, Any] = {}
    for kind, subject in dict.fromkeys((r.kind, r.subject) for r in runs):
        rows: dict[str, Any] = {}
        for cache in (True, False):
            rs = [r for r in runs if (r.kind, r.subject, r.cache) == (kind, subject, cache)]
            if not rs:
                continue
            row: dict[str, Any] = {
                "rate": statistics.median(r.rate for r in rs),
                "rates": [r.rate for r in rs],
                "p50_ms": statistics.median(r.p50_ms for r in rs),
                "p99_ms": statistics.median(r.p99_ms for r in rs),
                "hit_ratio": sum(r.hits for r in rs) / max(1, sum(r.hits + r.misses for r in rs)),
                "errors": sum(r.errors + r.update_errors for r in rs),
                "defaults": sum(r.defaults for r in rs),
                "server_us": statistics.median(r.server_us for r in rs),
                "replica_us": statistics.median(r.replica_us for r in rs),
            }
            if kind == "feedback":
                row["update_p50_ms"] = statistics.median(r.update_p50_ms or 0 for r in rs)
                row["update_p99_ms"] = statistics.median(r.update_p99_ms or 0 for r in rs)
                row["evaluations_per_pair"] = {
                    m: statistics.median((r.evaluations_per_pair or {}).get(m, 0) for r in rs)
                    for m in FEEDBACK_MODELS
                }
            rows["on" if cache else "off"] = row
        ratios = [
            on.rate / off.rate
            for on in runs
            for off in runs
            if (on.kind, on.subject) == (off.kind, off.subject) == (kind, subject)
            and on.repeat == off.repeat
            and on.cache
            and not off.cache
            and off.rate > 0
        ]
        rows["ratios"] = ratios
        rows["ratio_median"] = statistics.median(ratios) if ratios else None
        out[f"{kind}/{subject}"] = rows
    return out


def render_markdown(result: dict[str, Any]) -> str:
    info, opts, summary = result["machine"], result["options"], result["summary"]
    return report.blocks(
        "### Results (generated by `make bench-cache`, part of `make bench`)",
        f"Run {info['date_utc']} on {report.machine(info)}, {report.versions(info)}; "
        f"{info['pinning']}; Clipper at {report.measured(info)}. One server, AIMD batching, "
        f"the default 32 MiB cache, SLO {opts['slo_ms']:.0f} ms; {opts['repeats']} repeat(s) "
        f"of {opts['seconds']:g} s per measurement, cache on and off alternating which goes "
        "first; medians, ratios per repeat.",
        f"**Hit path** (closed loop, {opts['clients']} clients cycling through "
        f"{opts['pool']} inputs; *on*: the inputs predicted once before, so every query is "
        "a hit; *off*: the app's `cache` option off, every query batched and computed):",
        _hit_table(summary),
        *_feedback(summary.get("feedback/exp4"), opts),
    )


def _sides(rows: dict[str, Any]) -> list[tuple[str, dict[str, Any], float | None]]:
    """(side, row, the on / off ratio on the "on" row) for each side measured."""
    return [
        (side, rows[side], rows["ratio_median"] if side == "on" else None)
        for side in ("on", "off")
        if rows.get(side)
    ]


def _cpu(row: dict[str, Any]) -> str:
    server, replica = row["server_us"], row["replica_us"]
    return f"{server + replica:.0f} ({server:.0f} + {replica:.0f})"


def _hit_table(summary: dict[str, Any]) -> list[str]:
    labels = {m.key: m.label for m in HIT_MODELS}
    head = (
        "model",
        "cache",
        "queries/s",
        "p50 (ms)",
        "p99 (ms)",
        "hit ratio",
        "CPU µs/query (server + replicas)",
        "on / off",
    )
    rows = [
        [
            labels.get(subject, subject),
            side,
            f"{row['rate']:.0f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['hit_ratio']:.3f}",
            _cpu(row),
            report.times(ratio),
        ]
        for key, by_side in summary.items()
        for kind, subject in [key.split("/")]
        if kind == "hit"
        for side, row, ratio in _sides(by_side)
    ]
    return report.table(head, "llrrrrrr", rows)


def _feedback(fb: dict[str, Any] | None, opts: dict[str, Any]) -> list[report.Block]:
    if not fb:
        return []
    head = (
        "cache",
        "pairs/s",
        "predict p50 / p99 (ms)",
        "update p50 / p99 (ms)",
        "evaluations per pair (SVM, forest)",
        "CPU µs/pair (server + replicas)",
        "errors",
        "on / off",
    )
    rows = []
    for side, row, ratio in _sides(fb):
        ev = row["evaluations_per_pair"]
        rows.append(
            [
                side,
                f"{row['rate']:.0f}",
                f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f}",
                f"{row['update_p50_ms']:.2f} / {row['update_p99_ms']:.2f}",
                f"{ev['svm']:.2f}, {ev['forest']:.2f}",
                _cpu(row),
                str(row["errors"]),
                report.times(ratio),
            ]
        )
    ratios = ", ".join(f"{r:.2f}" for r in fb["ratios"])
    return [
        f"**Feedback at window 1** (closed loop, {opts['feedback_clients']} clients; each "
        "predicts an input never sent before, then sends its label to `/update` as soon "
        "as the answer is back; an `exp4` app over the linear SVM and the random forest; "
        "a pair is the prediction and its feedback):",
        report.table(head, "lrrrrrrr", rows),
        f"Feedback speedup per repeat (cache on / off): {ratios}.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one repeat of 1.5 s per measurement")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 3)")
    parser.add_argument(
        "--docs", action="store_true", help="with --quick: write docs/benchmarks.md too"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--out", type=Path, help="results JSON path")
    args = parser.parse_args(argv)
    opts = Options(pin=not args.no_pin)
    if args.quick:
        opts.repeats, opts.seconds, opts.quick = 1, 1.5, True
    if args.repeats:
        opts.repeats = args.repeats
    if args.seconds:
        opts.seconds = args.seconds
    out = args.out or RESULTS / ("cache-quick.json" if opts.quick else "cache.json")

    def log(msg: str) -> None:
        print(msg, flush=True)

    bench = CacheBench(opts, log)
    bench.cpus.pin_generator()
    info = machine_info(bench.cpus)
    log(f"clipper from {info['clipper_from']}; {info['pinning']}")
    t0 = time.perf_counter()
    try:
        bench.run()
    finally:
        bench.runner.close()
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_s"] = round(time.perf_counter() - t0, 1)
    result = {
        "benchmark": "cache",
        "machine": info,
        "options": asdict(opts),
        "summary": summarise(bench.runs),
        "runs": [asdict(r) for r in bench.runs],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if not opts.quick or args.docs:
        write_doc_section("cache", render_markdown(result), BENCHMARKS_DOC)
        log(f"wrote {BENCHMARKS_DOC.relative_to(ROOT)}")
    log(render_markdown(result))
    log(f"done in {info['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
