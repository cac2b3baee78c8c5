"""Throughput with several frontend processes (``make bench-workers``).

Issue 25: one Python process tops out near one core of query handling;
``--workers N`` runs N frontend processes on the same query port, every
replica serving all of them. This measures closed-loop throughput with wrk
(keep-alive connections, several threads) for N = 1, 2, 4, 8 (those the
machine has cores for) on the no-op model and the light MLP, cache off,
AIMD batching, one replica.

Where the machine has 4 or more CPUs, wrk is pinned to a quarter of them and
the server (supervisor, workers, replica: every thread) to the rest. On a
2-CPU machine nothing can be set apart: both run unpinned and share both
cores, and the table says how much CPU each used, so the generator's share
is accounted for. Each configuration starts a fresh server; the worker
counts alternate within each repeat (so drifting load hits them all), and
the median over repeats is reported with its ratio to one worker.

Targets (on 16 cores): >= 48,000 no-op queries/s (the paper's C++
frontend), and >= 3.5x one worker's throughput at 4 workers.

Writes bench/results/workers.json and the ``workers`` section of
docs/benchmarks.md (``--no-docs``: print only, write nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle

from . import batching, models, naive_server, report
from .harness import BenchServer, CpuPlan, publish
from .naive_server import make_model
from .wrk import LUA, run_wrk

PAPER_NOOP_QPS = 48_000
SCALING_TARGET = 3.5  # at 4 workers, over one
SLO_MS = 100  # closed-loop throughput, not the tail: defaults stay rare
MODELS = {"noop": "no-op", "mlp": "light MLP 784-512-512-10"}


def plan_cpus(pin: bool) -> CpuPlan:
    have = sorted(os.sched_getaffinity(0))
    if not pin or len(have) < 4 or shutil.which("taskset") is None:
        return CpuPlan(
            None,
            None,
            f"not pinned ({len(have)} CPUs: wrk and the server share them; "
            "the CPU each used is reported)",
        )
    quarter = max(1, len(have) // 4)
    generator, server = set(have[-quarter:]), set(have[:-quarter])
    return CpuPlan(
        generator,
        server,
        f"wrk pinned to CPUs {sorted(generator)}; the server (supervisor, workers, replica, "
        f"every thread) to CPUs {sorted(server)}",
    )


@contextlib.contextmanager
def server_with(workers: int, model: str, cpus: CpuPlan, log: Any) -> Iterator[BenchServer]:
    flags = [*batching.COMMON_FLAGS, *batching.AIMD, "--workers", str(workers)]
    with BenchServer(flags, cpus, log) as server:
        cloudpickle.register_pickle_by_value(naive_server)
        try:
            server.deploy(model, make_model(model), slo_ms=SLO_MS)
        finally:
            cloudpickle.unregister_pickle_by_value(naive_server)
        yield server


def measure(
    workers: int, model: str, script: Path, opts: argparse.Namespace, cpus: CpuPlan, log: Any
) -> dict[str, Any]:
    with server_with(workers, model, cpus, log) as server:
        url = f"http://127.0.0.1:{server.query_port}/{model}/predict"
        run_wrk(url, script, 2, opts.connections, cpus, opts.threads)  # warm-up (and AIMD)
        before, started = server.cpu(), time.monotonic()
        figures, wrk_cores = run_wrk(
            url, script, opts.seconds, opts.connections, cpus, opts.threads
        )
        wall = time.monotonic() - started
        after = server.cpu()
    requests = figures["rate"] * opts.seconds
    failed = figures["defaults"] + figures["bad"]
    served = figures["rate"] * max(0.0, 1 - failed / requests) if requests else 0.0
    server_cpu = sum(after.values()) - sum(before.values())
    return {
        "model": model,
        "workers": workers,
        "requests_per_s": figures["rate"],
        "served_per_s": served,
        "defaults": figures["defaults"],
        "bad": figures["bad"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "server_cores": server_cpu / wall,
        "wrk_cores": wrk_cores,
    }


def summarise(runs: list[dict[str, Any]], counts: list[int]) -> list[dict[str, Any]]:
    """Medians per (model, workers), with the ratio to one worker's median."""
    rows = []
    for model in MODELS:
        base = None
        for n in counts:
            mine = [r for r in runs if r["model"] == model and r["workers"] == n]
            if not mine:
                continue
            row = {
                "model": model,
                "workers": n,
                "repeats": len(mine),
                **{
                    k: statistics.median(r[k] for r in mine)
                    for k in (
                        "served_per_s",
                        "p50_ms",
                        "p99_ms",
                        "server_cores",
                        "wrk_cores",
                    )
                },
                "defaults": sum(r["defaults"] for r in mine),
                "bad": sum(r["bad"] for r in mine),
            }
            if n == 1:
                base = row["served_per_s"]
            row["vs_one"] = row["served_per_s"] / base if base else None
            rows.append(row)
    return rows


def render(result: dict[str, Any]) -> str:
    head = (
        "model",
        "workers",
        "served/s (median)",
        "vs 1 worker",
        "p50 (ms)",
        "p99 (ms)",
        "server CPU (cores)",
        "served per server core",
        "wrk CPU (cores)",
        "defaults + errors",
    )
    rows = [
        [
            MODELS[r["model"]],
            str(r["workers"]),
            f"{r['served_per_s']:,.0f}",
            f"{r['vs_one']:.2f}x" if r["vs_one"] else "-",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['server_cores']:.2f}",
            f"{r['served_per_s'] / r['server_cores']:,.0f}" if r["server_cores"] else "-",
            f"{r['wrk_cores']:.2f}",
            str(r["defaults"] + r["bad"]),
        ]
        for r in result["rows"]
    ]
    noop = [r for r in result["rows"] if r["model"] == "noop"]
    best = max((r["served_per_s"] for r in noop), default=0.0)
    four = next((r for r in noop if r["workers"] == 4), None)
    cpus = result["cpu_count"]
    many = cpus >= 16
    where = "" if many else f" (this machine has {cpus} CPUs; the targets are for 16)"
    verdicts = [
        f"No-op peak: **{best:,.0f} queries/s**; target ≥ {PAPER_NOOP_QPS:,} on 16 cores: "
        + (report.verdict(best, PAPER_NOOP_QPS) if many else f"not measurable here{where}")
        + ".",
        "4 workers over 1 (no-op): "
        + (
            f"**{four['vs_one']:.2f}x**; target ≥ {SCALING_TARGET}x: "
            + (report.verdict(four["vs_one"], SCALING_TARGET) if many else f"not judged{where}")
            if four is not None and four["vs_one"]
            else f"not measured{where}"
        )
        + ".",
    ]
    return report.blocks(
        "## Worker processes (generated by `make bench-workers`)",
        f"Run {result['when']} on {result['machine']}; wrk {result['wrk']} "
        f"({result['threads']} thread(s), {result['connections']} keep-alive connections, "
        f"{result['seconds']:.0f} s per run); {result['cpus']}. Cache off, AIMD, one replica, "
        f"SLO {SLO_MS} ms; served = answered with the model's output (not a default). "
        f"{result['repeats']} repeat(s), worker counts alternating; medians.",
        report.table(head, "lrrrrrrrrr", rows),
        "Served per server core is the rate over the CPU the whole server (supervisor, "
        "workers, replica) used: where it stays level as workers are added, the workers "
        "add throughput in proportion to the cores they get, and the ceiling is the cores.",
        *verdicts,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    cpus_here = len(os.sched_getaffinity(0))
    default_counts = [n for n in (1, 2, 4, 8) if n == 1 or n <= max(2, cpus_here)]
    parser.add_argument(
        "--workers",
        default=",".join(map(str, default_counts)),
        help="worker counts to measure (default: 1, 2, 4, 8 up to the CPU count)",
    )
    parser.add_argument("--models", default="noop,mlp", help="of: " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=max(1, cpus_here // 4), help="wrk's")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 5 s runs, 1 and 2")
    parser.add_argument("--no-docs", action="store_true", help="print, do not write docs/")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.repeats, opts.seconds, opts.workers = 1, 5.0, "1,2"
    counts = sorted({int(n) for n in opts.workers.split(",")})
    chosen = [m for m in opts.models.split(",") if m in MODELS]
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk; `make bench-workers` does it)")
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cpus = plan_cpus(not opts.no_pin)
    body = json.dumps({"input": models.mlp_inputs(1)[0]}, separators=(",", ":"))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA % body)
        for i in range(opts.repeats):
            order = counts if i % 2 == 0 else counts[::-1]
            for model in chosen:
                for n in order:
                    r = measure(n, model, script, opts, cpus, log)
                    log(
                        f"repeat {i + 1} {model} workers={n}: served {r['served_per_s']:,.0f}/s, "
                        f"p99 {r['p99_ms']:.1f} ms, server {r['server_cores']:.2f} cores, "
                        f"wrk {r['wrk_cores']:.2f} cores"
                    )
                    runs.append(r)
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {cpus_here} CPUs, Python {platform.python_version()}",
        "cpu_count": cpus_here,
        "cpus": cpus.note,
        "wrk": version[1] if len(version) > 1 else "?",
        "threads": opts.threads,
        "connections": opts.connections,
        "seconds": opts.seconds,
        "repeats": opts.repeats,
        "runs": runs,
        "rows": summarise(runs, counts),
    }
    publish("workers", result, render(result), write=not opts.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
