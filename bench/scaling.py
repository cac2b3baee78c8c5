"""Throughput scaling with replicas (``make bench-scaling``): 1, 2 and 4 replicas.

The model is CPU-bound on purpose: every input costs a fixed amount of
pure-Python arithmetic (``--work-ms``, calibrated on this machine), which
holds the GIL, so one replica uses at most one core and throughput can
grow with replicas only while idle cores remain. For each container
manager (``local``: child processes; ``ray``: Ray actors on a local Ray
instance the server starts), one server is started through the admin
client, the model deployed with a small fixed batch size (so queued
queries spread over every replica), and scaled 1 → 2 → 4. At each step a
closed loop of ``--clients`` keep-alive clients runs for a warm-up, then
``--duration`` seconds are measured: answers per second, p50/p99 latency,
and the CPU the server's process tree, the load generator and the whole
machine used.

The ceiling: on an N-core machine, N replicas at most run at once, and the
server (HTTP, JSON, dispatch) and the load generator need CPU too. On the
2-core machines this project is developed on, a second replica can add
well under 2x, and a fourth adds nothing (more processes share the same 2
cores). More throughput needs more cores: more nodes in a Ray cluster, or
more frontends (docs/deployment.md).

Writes bench/results/scaling.json (``--quick``: scaling-quick.json) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from . import loadgen
from .harness import (
    BenchServer,
    CpuPlan,
    own_cpu_seconds,
    system_busy_seconds,
    wait_for,
)

RESULTS = Path(__file__).parent / "results"
APP = "spin"
# Nodes of a local Ray instance must agree on this; off keeps the bench self-contained.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class Spin:
    """Burns ``iterations`` of pure-Python arithmetic per input; returns the input's sum."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def predict(self, inputs: Any) -> list[float]:
        out = []
        for x in inputs:
            acc = 0
            for i in range(self.iterations):
                acc = (acc + i * i) % 1_000_003
            out.append(float(sum(x)))
        return out


def calibrate(work_ms: float) -> int:
    """Iterations of ``Spin`` that take ``work_ms`` per input on this machine."""
    probe = Spin(200_000)
    best = min(_timed(probe) for _ in range(10))  # the least disturbed of 10
    return max(1000, int(200_000 * work_ms / 1000 / best))


def _timed(model: Spin) -> float:
    t0 = time.perf_counter()
    model.predict([[1.0]])
    return time.perf_counter() - t0


@dataclass
class Step:
    manager: str
    replicas: int
    answers_per_s: float
    p50_ms: float
    p99_ms: float
    defaults: int
    errors: int
    server_tree_cpu: float  # cores used by the server and everything it started
    generator_cpu: float  # cores used by this process (the load generator)
    machine_cpu: float  # share of all cores busy
    other_cpu: float  # cores other processes on the machine used meanwhile (noise)

    def row(self, base: float) -> str:
        speedup = self.answers_per_s / base if base else 0.0
        return (
            f"| {self.manager} | {self.replicas} | {self.answers_per_s:.0f} | {speedup:.2f}x | "
            f"{self.p50_ms:.1f} | {self.p99_ms:.1f} | {self.server_tree_cpu:.2f} | "
            f"{self.generator_cpu:.2f} | {self.other_cpu:.2f} | {self.machine_cpu:.0%} | "
            f"{self.defaults + self.errors} |"
        )


def deploy(server: BenchServer, model: Spin, batch_size: int) -> None:
    conn = server.conn
    conn.register_application(APP, "doubles", default_output="-1", slo_micros=10_000_000)
    module = sys.modules[Spin.__module__]
    if module.__name__ != "__main__":  # run as __main__, it is pickled by value anyway
        cloudpickle.register_pickle_by_value(module)
    conn.deploy_model(APP, "1", "doubles", cloudpickle.dumps(model), batch_size=batch_size)
    conn.link_model_to_app(app_name=APP, model_name=APP)


def live(server: BenchServer) -> int:
    return sum(1 for r in server.status()["replicas"] if r["model_name"] == APP and r["live"])


async def measure(
    server: BenchServer, opts: argparse.Namespace, manager: str, replicas: int
) -> Step:
    pool = loadgen.Pool(server.host, server.query_port)
    work = loadgen.Workload.predict(
        server.host, server.query_port, APP, [[float(i), 1.0] for i in range(256)]
    )
    try:
        await loadgen.run_closed(pool, work, opts.clients, opts.warmup)
        cpu0, gen0, busy0, t0 = server.cpu(), own_cpu_seconds(), system_busy_seconds(), time.time()
        result = await loadgen.run_closed(pool, work, opts.clients, opts.duration)
        wall = time.time() - t0
        cpu1, gen1, busy1 = server.cpu(), own_cpu_seconds(), system_busy_seconds()
    finally:
        pool.close()
    tree = (sum(cpu1.values()) - sum(cpu0.values())) / wall
    generator = (gen1 - gen0) / wall
    cpus = os.cpu_count() or 1
    busy = (busy1 - busy0) / wall
    return Step(
        manager=manager,
        replicas=replicas,
        answers_per_s=result.ok / result.duration_s,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        defaults=result.defaults,
        errors=result.errors,
        server_tree_cpu=tree,
        generator_cpu=generator,
        machine_cpu=busy / cpus,
        other_cpu=max(0.0, busy - tree - generator),
    )


def run_manager(manager: str, opts: argparse.Namespace, model: Spin) -> list[Step]:
    flags = ["--manager", manager, "--cache-bytes", "0"]  # every query computed
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    steps = []
    try:
        with BenchServer(flags, CpuPlan.choose(enabled=False), print) as server:
            deploy(server, model, opts.batch_size)
            for n in opts.replicas:
                server.conn.set_num_replicas(APP, n)
                wait_for(lambda n=n: live(server) == n, 180, f"{n} live replica(s)")
                step = asyncio.run(measure(server, opts, manager, n))
                print(
                    f"  {manager}, {n} replica(s): {step.answers_per_s:.0f} answers/s", flush=True
                )
                steps.append(step)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return steps


def markdown(steps: list[Step], opts: argparse.Namespace, iterations: int) -> str:
    lines = [
        f"CPU-bound model: {iterations} iterations of pure Python per input (about "
        f"{opts.work_ms} ms), batch size {opts.batch_size}, {opts.clients} closed-loop clients, "
        f"{opts.duration:.0f} s per step after {opts.warmup:.0f} s of warm-up; "
        f"{os.cpu_count()} CPUs.",
        "",
        "| manager | replicas | answers/s | vs 1 replica | p50 ms | p99 ms "
        "| server tree (cores) | generator (cores) | others (cores) | machine busy "
        "| defaults+errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for manager in opts.managers:
        mine = [s for s in steps if s.manager == manager]
        base = next((s.answers_per_s for s in mine if s.replicas == 1), 0.0)
        lines += [s.row(base) for s in mine]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--managers", default="local,ray", help="comma-separated: local,ray")
    parser.add_argument("--replicas", default="1,2,4", help="replica counts, in order")
    parser.add_argument("--work-ms", type=float, default=5.0, help="CPU per input (ms)")
    parser.add_argument(
        "--iterations", type=int, default=0, help="work per input, fixed (default: calibrated)"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="short steps; scaling-quick.json")
    opts = parser.parse_args(argv)
    opts.managers = [m.strip() for m in opts.managers.split(",") if m.strip()]
    opts.replicas = [int(n) for n in opts.replicas.split(",")]
    if opts.quick:
        opts.warmup, opts.duration = 1.0, 3.0
    loop = loadgen.install_uvloop()
    iterations = opts.iterations or calibrate(opts.work_ms)
    per_input = _timed(Spin(iterations)) * 1000
    print(f"{iterations} iterations per input (~{per_input:.1f} ms here now); loop: {loop}")
    steps: list[Step] = []
    for manager in opts.managers:
        steps += run_manager(manager, opts, Spin(iterations))
    table = markdown(steps, opts, iterations)
    print()
    print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("scaling-quick.json" if opts.quick else "scaling.json")
    out.write_text(
        json.dumps(
            {
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "options": vars(opts),
                "iterations": iterations,
                "steps": [vars(s) for s in steps],
                "markdown": table,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
