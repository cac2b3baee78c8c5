"""Overload: does every answer leave by the SLO at 0.5x to 5x a model's capacity? (issue #28)

For the light and the heavy MLP (20 ms SLO, prediction cache off), in two
layouts:

- ``shared``: the server and its replica on one core, the load generator on
  the other;
- ``split``: the server on one core, its replica on the other, with the
  generator: the frontend's core is its own, as it is where the load comes
  from other machines. (Left unpinned on a 2-core machine, the scheduler put
  the generator on the server's core as often as not: at 7,000/s on the
  light MLP, p99 33-40 ms unpinned, 10-17 ms beside the replica in three
  runs of four. On more cores the generator gets a core of its own.)

Each (model, layout) measures, on one server:

1. the frontend's ceiling: a closed loop (64 clients) against a no-op model
   in the same layout, on a server that sheds nothing (a brownout would
   answer it unread), once per layout and repeat; every load below is
   capped at 80 % of it (beyond what the frontend can read at all, no server
   answers anything on time);
2. the model's goodput (1x): the highest Poisson rate whose p99 is within the
   SLO with at most 0.5 % defaults, by a short search of open-loop probes;
3. open-loop Poisson load at 0.5x, 1x, 2x and 5x that goodput (capped):
   for all answers, computed ones and defaults apart, the share of defaults,
   p50/p99/max latency, and goodput (computed answers per second).

The shared layout runs once more with the first wave's behaviour
(``--shed-at-arrival false``: no shedding at arrival, no brownout) unless
``--no-compare``.

Targets: p99 of all answers <= SLO + 5 ms at every load in both layouts;
in the split layout, goodput at 2x and 5x >= 80 % of goodput at 1x.

``python -m bench.overload [--quick] [--repeats N] [--no-docs]``; ``make
bench-overload``. Results: bench/results/overload.json and the "overload"
section of docs/benchmarks.md.
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
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np

from . import loadgen, models, naive_server
from .batching import AIMD, COMMON_FLAGS
from .harness import (
    RESULTS,
    BenchServer,
    CpuPlan,
    loop_factory,
    machine_info,
    pin_tree,
    write_doc_section,
)

SLO_MS = 20.0
MULTIPLES = (0.5, 1.0, 2.0, 5.0)
CAP_SHARE = 0.8  # of the frontend's no-op ceiling
MARGIN_MS = 5.0  # the target: p99 <= SLO + this
KINDS = ("mlp", "mlp-heavy")
LABELS = {"mlp": "light MLP", "mlp-heavy": "heavy MLP"}
LAYOUTS = ("shared", "split")
OLD_FLAGS = ("--shed-at-arrival", "false")


@dataclass(frozen=True)
class Options:
    probe_s: float
    warmup_s: float
    load_s: float
    probes: int
    repeats: int
    compare: bool

    @classmethod
    def of(cls, quick: bool, repeats: int | None, compare: bool) -> Options:
        if quick:
            return cls(3.0, 1.0, 5.0, 4, repeats or 1, compare)
        return cls(4.0, 2.0, 8.0, 6, repeats or 3, compare)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(ms)
    p50, p99 = np.percentile(a, [50, 99])
    return {
        "n": len(ms),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(a.max()), 2),
    }


class Layout:
    """Where the generator, the server and its replicas run."""

    def __init__(self, name: str) -> None:
        self.name = name
        have = sorted(os.sched_getaffinity(0))
        self.cpus = have
        if len(have) < 2:
            self.plan = CpuPlan(None, None, f"not pinned (CPUs {have})")
            return
        if name == "shared":
            self.plan = CpuPlan(
                {have[1]},
                {have[0]},
                f"server and replica on CPU {have[0]}, generator on CPU {have[1]}",
            )
        elif len(have) == 2:
            self.plan = CpuPlan(
                {have[1]},
                {have[0]},
                f"server on CPU {have[0]}, replica and generator on CPU {have[1]}",
            )
        else:
            self.plan = CpuPlan(
                {have[2]},
                {have[0]},
                f"server on CPU {have[0]}, replica on CPU {have[1]}, generator on CPU {have[2]}",
            )

    def pin(self, server: BenchServer) -> None:
        """Pin the generator (this process) and the server's tree as the layout says."""
        os.sched_setaffinity(0, self.plan.generator or set(self.cpus))
        if server.pid is None or self.plan.server is None:
            return
        pin_tree(server.pid, self.plan.server)
        if self.name == "split":
            for pid in server.replica_pids():
                pin_tree(pid, {self.cpus[1]})


class OverloadBench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.inputs = models.mlp_inputs(2000)
        self.runner = asyncio.Runner(loop_factory=loop_factory())
        self._ceilings: dict[tuple[str, int], float] = {}

    @contextlib.contextmanager
    def server(self, layout: Layout, kind: str, flags: tuple[str, ...] = ()) -> Iterator[Any]:
        with BenchServer([*COMMON_FLAGS, *AIMD, *flags], layout.plan, log) as server:
            cloudpickle.register_pickle_by_value(naive_server)
            try:
                server.deploy("noop", naive_server.make_model("noop"), slo_ms=SLO_MS)
                server.deploy("model", naive_server.make_model(kind), slo_ms=SLO_MS)
            finally:
                cloudpickle.unregister_pickle_by_value(naive_server)
            layout.pin(server)
            pool = loadgen.Pool(server.host, server.query_port)
            try:
                yield server, pool
            finally:
                pool.close()

    def workload(self, server: BenchServer, app: str) -> loadgen.Workload:
        return loadgen.Workload.predict(server.host, server.query_port, app, self.inputs)

    def ceiling(self, layout: Layout, repeat: int) -> float:
        """What the frontend reads and answers in full: a closed loop (64 clients)
        on the no-op model, on a server that sheds nothing (the first wave's
        flags), once per layout and repeat. A brownout answers most of a
        saturating closed loop unread: counting those answers, the more a server
        shed, the higher its cap (12,000-15,500/s where a server that sheds
        nothing read 8,600-8,900/s); leaving them out, the lower (4,400/s)."""
        key = (layout.name, repeat)
        if key not in self._ceilings:
            with self.server(layout, "noop", OLD_FLAGS) as (server, pool):
                workload = self.workload(server, "noop")
                r = self.runner.run(loadgen.run_closed(pool, workload, 64, 3.0))
            self._ceilings[key] = r.achieved_rate
        return self._ceilings[key]

    def run(
        self, server: BenchServer, pool: loadgen.Pool, rate: float, seconds: float
    ) -> dict[str, Any]:
        """One open-loop run at ``rate``: every answer's latency, by kind."""
        trace: list[loadgen.TracePoint] = []
        cpu0 = server.cpu()
        t0 = time.perf_counter()
        r = self.runner.run(
            loadgen.run_open(
                pool,
                self.workload(server, "model"),
                rate,
                seconds,
                warmup_s=self.opts.warmup_s,
                trace=trace,
                connections=512,
            )
        )
        wall = time.perf_counter() - t0
        cpu1 = server.cpu()
        lag_ms = self.loop_lag_ms(server)
        computed = [lat * 1000 for _, lat, d in trace if not d]
        defaults = [lat * 1000 for _, lat, d in trace if d]
        every = computed + defaults
        out = {
            "rate": round(rate, 1),
            "achieved": round(r.achieved_rate, 1),
            "answers": len(every),
            "errors": r.errors,
            "default_share": round(len(defaults) / len(every), 4) if every else None,
            "all": percentiles(every),
            "computed": percentiles(computed),
            "defaults": percentiles(defaults),
            "goodput": round(len(computed) / r.duration_s, 1) if r.duration_s else 0.0,
            "server_cpu": round((cpu1["server"] - cpu0["server"]) / wall, 3),
            "replica_cpu": round((cpu1["replicas"] - cpu0["replicas"]) / wall, 3),
            "generator_cpu": round(r.generator_cpu_util, 3),
            "send_late_p99_ms": round(r.send_late_p99_ms, 2),
            "loop_lag_ms": lag_ms,
        }
        self.settle(server)
        return out

    @staticmethod
    def loop_lag_ms(server: BenchServer) -> float | None:
        """The server's event-loop lag gauge (the largest of its last 10 samples)."""
        url = f"http://{server.host}:{server.query_port}/metrics"
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("clipper_event_loop_lag_seconds "):
                    return round(float(line.split()[1]) * 1000, 2)
        return None

    def settle(self, server: BenchServer, limit_s: float = 10.0) -> None:
        """Wait (bounded) until the model's queue is empty after a run."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            stats = server.model_status("model")
            if not stats or (stats["queue"]["depth"] == 0 and stats["in_flight_batches"] == 0):
                break
            time.sleep(0.2)
        time.sleep(0.5)

    def goodput(self, server: BenchServer, pool: loadgen.Pool, cap: float) -> float:
        """The highest rate with p99 <= SLO and <= 0.5 % defaults (a short search)."""
        closed = self.runner.run(loadgen.run_closed(pool, self.workload(server, "model"), 32, 2.0))
        rate = min(cap, max(50.0, closed.achieved_rate * (1 - closed.default_ratio)))
        self.settle(server)
        lo, hi = 0.0, float("inf")
        for _ in range(self.opts.probes):
            p = self.run(server, pool, rate, self.opts.probe_s)
            ok = (
                p["all"]["p99_ms"] is not None
                and p["all"]["p99_ms"] <= SLO_MS
                and (p["default_share"] or 0.0) <= 0.005
                and not p["errors"]
            )
            log(
                f"    probe {rate:7.0f}/s: p99 {p['all']['p99_ms']} ms, "
                f"defaults {p['default_share']:.2%} -> {'pass' if ok else 'fail'}"
            )
            if ok:
                lo = rate
            else:
                hi = rate
            if hi == float("inf"):
                if rate >= cap:
                    break
                rate = min(cap, rate * 1.3)
            elif lo == 0.0:
                rate = rate / 1.5
            else:
                rate = (lo + hi) / 2
        return lo

    def measure(self, kind: str, layout: Layout, repeat: int, flags: tuple[str, ...] = ()) -> dict:
        label = f"{LABELS[kind]}, {layout.name}" + (" (first wave)" if flags else "")
        log(f"  {label}, repeat {repeat}")
        ceiling = self.ceiling(layout, repeat)
        cap = CAP_SHARE * ceiling
        log(f"    frontend ceiling (no-op, closed loop): {ceiling:.0f}/s; cap {cap:.0f}/s")
        with self.server(layout, kind, flags) as (server, pool):
            base = self.goodput(server, pool, cap)
            log(f"    goodput (1x): {base:.0f}/s")
            loads = []
            for multiple in MULTIPLES:
                rate = min(cap, multiple * base) if base > 0 else cap * multiple / 5
                row = self.run(server, pool, rate, self.opts.load_s)
                row["multiple"] = multiple
                row["capped"] = multiple * base > cap
                loads.append(row)
                log(
                    f"    {multiple:3.1f}x {rate:7.0f}/s: p99 {row['all']['p99_ms']} "
                    f"max {row['all']['max_ms']} ms, defaults {row['default_share']:.1%} "
                    f"(p99 {row['defaults']['p99_ms']} ms), goodput {row['goodput']:.0f}/s, "
                    f"CPU server {row['server_cpu']:.2f} replica {row['replica_cpu']:.2f}"
                )
        return {
            "kind": kind,
            "layout": layout.name,
            "config": "first wave" if flags else "now",
            "repeat": repeat,
            "layout_note": layout.plan.note,
            "ceiling": round(ceiling, 1),
            "cap": round(cap, 1),
            "goodput_1x": base,
            "loads": loads,
        }


# -- the report ---------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def summarize(rows: list[dict]) -> list[dict]:
    """Medians over repeats, per (config, layout, model, multiple)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        for load in row["loads"]:
            key = (row["config"], row["layout"], row["kind"], load["multiple"])
            groups.setdefault(key, []).append(load | {"goodput_1x": row["goodput_1x"]})
    out = []
    for (config, layout, kind, multiple), loads in sorted(groups.items()):

        def med(path: Callable[[dict], float | None], loads: list[dict] = loads) -> float | None:
            return _median([path(x) for x in loads])

        out.append(
            {
                "config": config,
                "layout": layout,
                "kind": kind,
                "multiple": multiple,
                "repeats": len(loads),
                "rate": med(lambda x: x["rate"]),
                "capped": any(x["capped"] for x in loads),
                "default_share": med(lambda x: x["default_share"]),
                **{
                    f"{part}_{q}": med(lambda x, part=part, q=q: x[part][f"{q}_ms"])
                    for part in ("all", "computed", "defaults")
                    for q in ("p50", "p99", "max")
                },
                "goodput": med(lambda x: x["goodput"]),
                "goodput_1x": med(lambda x: x["goodput_1x"]),
                "server_cpu": med(lambda x: x["server_cpu"]),
                "replica_cpu": med(lambda x: x["replica_cpu"]),
                "loop_lag_ms": med(lambda x: x.get("loop_lag_ms")),
            }
        )
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def verdicts(summary: list[dict]) -> list[str]:
    lines = []
    now = [s for s in summary if s["config"] == "now"]
    worst = max(now, key=lambda s: s["all_p99"] or 0.0, default=None)
    if worst is not None:
        met = all((s["all_p99"] or 0.0) <= SLO_MS + MARGIN_MS for s in now)
        lines.append(
            f"- p99 of all answers <= SLO + {MARGIN_MS:.0f} ms at every load, both layouts: "
            f"**{'met' if met else 'not met'}** (worst: {worst['all_p99']:.1f} ms, "
            f"{LABELS[worst['kind']]}, {worst['layout']}, {worst['multiple']:g}x)."
        )
    for kind in KINDS:
        split = {s["multiple"]: s for s in now if s["layout"] == "split" and s["kind"] == kind}
        if 1.0 in split and split[1.0]["goodput"]:
            one = split[1.0]["goodput"]
            ratios = {m: (split[m]["goodput"] or 0.0) / one for m in (2.0, 5.0) if m in split}
            met = all(r >= 0.8 for r in ratios.values())
            shown = ", ".join(f"{m:g}x: {r:.0%}" for m, r in ratios.items())
            lines.append(
                f"- {LABELS[kind]}, split layout, goodput under overload >= 80 % of 1x: "
                f"**{'met' if met else 'not met'}** ({shown} of {one:.0f}/s)."
            )
    return lines


def render(result: dict) -> str:
    summary = result["summary"]
    info = result["machine"]
    commit = info.get("git", {}).get("measured", "?")
    lines = [
        "## Overload",
        "",
        f"`make bench-overload` ({result['mode']}, {result['repeats']} repeat(s), medians; "
        f"{info.get('cpu_model', '')}, {info.get('cpu_count', '')} CPUs, commit {commit}). "
        f"SLO {SLO_MS:.0f} ms, "
        "prediction cache off, AIMD batching. Open-loop Poisson load at 0.5x-5x the "
        "model's goodput (1x: the highest rate with p99 within the SLO and at most 0.5 % "
        f"defaults), capped at {CAP_SHARE:.0%} of what the frontend reads and answers in "
        "full with a no-op model in the same layout, closed loop, on a server that sheds "
        "nothing (a capped rate is marked *). Latency is seen by "
        "the client; goodput is computed answers per second. Layouts: "
        + "; ".join(f"`{n}`: {note}" for n, note in result["layouts"].items())
        + ".",
        "",
        *verdicts(summary),
        "",
        "| model | layout | config | load | rate/s | defaults | all p50 / p99 / max ms "
        "| computed p99 ms | defaults p50 / p99 ms | goodput/s | CPU server / replica "
        "| loop lag ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {LABELS[s['kind']]} | {s['layout']} | {s['config']} | {s['multiple']:g}x "
            f"| {_fmt(s['rate'], 0)}{'*' if s['capped'] else ''} "
            f"| {_fmt((s['default_share'] or 0) * 100)} % "
            f"| {_fmt(s['all_p50'])} / {_fmt(s['all_p99'])} / {_fmt(s['all_max'])} "
            f"| {_fmt(s['computed_p99'])} "
            f"| {_fmt(s['defaults_p50'])} / {_fmt(s['defaults_p99'])} "
            f"| {_fmt(s['goodput'], 0)} "
            f"| {_fmt(s['server_cpu'], 2)} / {_fmt(s['replica_cpu'], 2)} "
            f"| {_fmt(s['loop_lag_ms'])} |"
        )
    lines += [
        "",
        '"first wave" is the same server with `--shed-at-arrival false` (no shedding at '
        "arrival, no brownout): queries queue until they expire at the deadline, and past "
        'what the frontend reads, requests wait unread in the kernel. "loop lag" is the '
        "server's "
        "`clipper_event_loop_lag_seconds` after the run: how late its event loop ran a timer "
        "(the largest of the last 10 s).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, shorter probes (~8 min)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 3; quick 1)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="models: mlp,mlp-heavy")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="shared,split")
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the first-wave configuration"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    opts = Options.of(args.quick, args.repeats, not args.no_compare)
    bench = OverloadBench(opts)
    layouts = [Layout(n) for n in args.layouts.split(",")]
    kinds = args.kinds.split(",")
    rows = []
    try:
        for repeat in range(1, opts.repeats + 1):
            for layout in layouts:
                for kind in kinds:
                    rows.append(bench.measure(kind, layout, repeat))
                    if opts.compare and layout.name == "shared":
                        rows.append(bench.measure(kind, layout, repeat, OLD_FLAGS))
    finally:
        bench.runner.close()
    result = {
        "mode": "quick" if args.quick else "full",
        "repeats": opts.repeats,
        "slo_ms": SLO_MS,
        "machine": machine_info(layouts[0].plan),
        "layouts": {layout.name: layout.plan.note for layout in layouts},
        "rows": rows,
        "summary": summarize(rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "overload.json"
    out.write_text(json.dumps(result, indent=1))
    text = render(result)
    print(text)
    if not args.no_docs:
        write_doc_section("overload", text)
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
