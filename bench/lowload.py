"""Latency at low load: Clipper's hop to a local replica (``make bench-lowload``).

Issue 25: at 50 queries/s Clipper's p50 was above a naive FastAPI server's,
though its HTTP layer is leaner: the hop to the replica costs the
difference. Replicas on the server's host now reach it over a Unix socket in
the state folder (``--local-rpc``, on by default; rpc/stream.py) instead of
ZeroMQ over TCP. This measures, side by side in each repeat, open-loop
Poisson load at 50 queries/s (after a warm-up second) against:

- Clipper with the local socket (the default),
- Clipper over ZeroMQ and TCP (``--local-rpc false``, the first wave's hop),
- naive FastAPI calling the model in-process (bench/naive_server.py, its
  own environment ``bench/.venvs/naive``),

for the light and the heavy MLP, the server pinned to one core and the
generator to another, as ``make bench-peers`` does. The order of the servers
alternates between repeats; medians over repeats are reported.

Each server is also timed back to back (one client, the next request sent
as the answer comes, for a quarter of the probe's time): what a request
costs on a warm path, where the open-loop probe adds what waking an idle
server costs. The two together tell per-request work from the idle hop.

Target: Clipper's p50 and p99 at 50/s at or below naive FastAPI's, both models.

Writes bench/results/lowload.json and the ``lowload`` section of
docs/benchmarks.md (``--no-docs``: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle

from . import batching, loadgen, models, naive_server, report
from .harness import BenchServer, CpuPlan, publish
from .naive_server import make_model
from .peer_envs import naive_python
from .procserver import ProcessServer

RATE = 50.0
SERVERS = {
    "local": "Clipper, local socket (default)",
    "tcp": "Clipper, ZeroMQ over TCP",
    "naive": "naive FastAPI",
}
MODELS = {"mlp": "light MLP", "mlp-heavy": "heavy MLP"}


@contextlib.contextmanager
def serve(server: str, model: str, cpus: CpuPlan, log: Any) -> Iterator[int]:
    """A server for ``model`` on one core: its query port."""
    if server == "naive":
        argv = [str(naive_python(log)), "-m", "bench.naive_server", "--model", model]
        with ProcessServer(argv, cpus) as naive:
            yield naive.query_port
        return
    local = "true" if server == "local" else "false"
    flags = [*batching.COMMON_FLAGS, *batching.AIMD, "--local-rpc", local]
    with BenchServer(flags, cpus, log) as clipper:
        cloudpickle.register_pickle_by_value(naive_server)
        try:
            clipper.deploy("q", make_model(model), slo_ms=20)
        finally:
            cloudpickle.unregister_pickle_by_value(naive_server)
        yield clipper.query_port


async def probe(
    port: int, app: str, seconds: float
) -> tuple[loadgen.LoadResult, loadgen.LoadResult]:
    """The open-loop probe at ``RATE``, then the back-to-back one."""
    pool = loadgen.Pool("127.0.0.1", port)
    try:
        workload = loadgen.Workload.predict("127.0.0.1", port, app, models.mlp_inputs(500))
        await pool.warm(8)
        paced = await loadgen.run_open(
            pool, workload, RATE, seconds, connections=8, warmup_s=1.0, seed=7
        )
        back_to_back = await loadgen.run_closed(pool, workload, 1, seconds / 4)
        return paced, back_to_back
    finally:
        pool.close()


def measure(server: str, model: str, seconds: float, cpus: CpuPlan, log: Any) -> dict[str, Any]:
    with serve(server, model, cpus, log) as port:
        cpus.pin_generator()
        result, b2b = asyncio.run(probe(port, "q", seconds))
    return {
        "server": server,
        "model": model,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "ok": result.ok,
        "defaults": result.defaults + b2b.defaults,
        "errors": result.errors + b2b.errors,
        "b2b_p50_ms": b2b.p50_ms,
        "b2b_p99_ms": b2b.p99_ms,
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for model in MODELS:
        for server in SERVERS:
            mine = [r for r in runs if r["model"] == model and r["server"] == server]
            if mine:
                rows.append(
                    {
                        "model": model,
                        "server": server,
                        "repeats": len(mine),
                        "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                        "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                        "b2b_p50_ms": _median_of(mine, "b2b_p50_ms"),
                        "b2b_p99_ms": _median_of(mine, "b2b_p99_ms"),
                        "ok": sum(r["ok"] for r in mine),
                        "defaults": sum(r["defaults"] + r["errors"] for r in mine),
                    }
                )
    return rows


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    """The median of ``key`` over the runs that have it (results saved before
    the back-to-back probe have none)."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    head = (
        "model",
        "server",
        f"p50 at {RATE:.0f}/s (ms)",
        f"p99 at {RATE:.0f}/s (ms)",
        "back to back p50 / p99 (ms)",
        "answered",
        "defaults + errors",
    )
    table = [
        [
            MODELS[r["model"]],
            SERVERS[r["server"]],
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{_ms(r.get('b2b_p50_ms'))} / {_ms(r.get('b2b_p99_ms'))}",
            str(r["ok"]),
            str(r["defaults"]),
        ]
        for r in rows
    ]
    lines = []
    for model in MODELS:
        by = {r["server"]: r for r in rows if r["model"] == model}
        if {"local", "naive"} <= by.keys():
            mine, naive = by["local"], by["naive"]
            met = mine["p50_ms"] <= naive["p50_ms"] and mine["p99_ms"] <= naive["p99_ms"]
            tcp = by.get("tcp")
            saved = ""
            if tcp:
                saved = f"; the local socket saves {tcp['p50_ms'] - mine['p50_ms']:.2f} ms of p50"
            warm = ""
            if mine.get("b2b_p50_ms") is not None and naive.get("b2b_p50_ms") is not None:
                warm = (
                    f" Back to back, p50 {mine['b2b_p50_ms']:.2f} against naive's "
                    f"{naive['b2b_p50_ms']:.2f} ms."
                )
            lines.append(
                f"{MODELS[model]}: Clipper p50 / p99 {mine['p50_ms']:.2f} / "
                f"{mine['p99_ms']:.2f} ms, naive {naive['p50_ms']:.2f} / "
                f"{naive['p99_ms']:.2f} ms{saved}; target (both at or below naive's): "
                f"**{'met' if met else 'not met'}**.{warm}"
            )
    return report.blocks(
        "## Latency at low load (generated by `make bench-lowload`)",
        f"Run {result['when']} on {result['machine']}; {result['cpus']}. Open-loop Poisson "
        f"load at {RATE:.0f} queries/s for {result['seconds']:.0f} s after a 1 s warm-up, "
        "8 keep-alive connections; cache off, AIMD, SLO 20 ms, one replica. "
        f"{result['repeats']} repeat(s), servers alternating; medians.",
        report.table(head, "llrrrrr", table),
        *lines,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lowload", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="per probe")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--quick", action="store_true", help="1 repeat of 8 s")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-docs", action="store_true", help="print, do not write docs/")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.repeats, opts.seconds = 1, 8.0

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cpus = CpuPlan.choose(not opts.no_pin)
    chosen = [s for s in opts.servers.split(",") if s in SERVERS]
    runs = []
    for i in range(opts.repeats):
        order = chosen if i % 2 == 0 else chosen[::-1]
        for model in [m for m in opts.models.split(",") if m in MODELS]:
            for server in order:
                r = measure(server, model, opts.seconds, cpus, log)
                log(f"repeat {i + 1} {model} {server}: p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f}")
                runs.append(r)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "cpus": cpus.note,
        "seconds": opts.seconds,
        "repeats": opts.repeats,
        "runs": runs,
        "rows": summarise(runs),
    }
    publish("lowload", result, render(result), write=not opts.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
