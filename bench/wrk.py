"""The frontend's ceiling measured with wrk (``make bench-wrk``).

Issue 11's frontend target: with a no-op model and the cache off, Clipper's
closed-loop throughput should reach 80 % of a bare ASGI app on uvicorn that
parses the same 784-number JSON body into numpy and answers (no model, no
RPC): the Python HTTP limit of the machine, measured in the same run. The
load generator is wrk (C, one thread, 64 connections, keep-alive), pinned to
one core; the server under test (for Clipper: the server process and its
replica, every thread) to the other. Servers alternate within each repeat,
so drifting machine load hits both; the ratio is taken per repeat and the
median reported. A Lua hook counts Clipper's default outputs (a default is
not a served query) and wrk's own CPU time is reported beside its rate.

Writes bench/results/wrk.json and the ``wrk`` section of docs/benchmarks.md
(``--no-docs``: print only, write nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from . import batching, models, naive_server, report
from .harness import (
    RESULTS,
    BenchServer,
    CpuPlan,
    cpu_seconds,
    write_doc_section,
)
from .naive_server import make_model
from .procserver import ProcessServer

TARGET = 0.8  # Clipper / echo, issue 11

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status ~= 200 then bad = (bad or 0) + 1
  elseif string.find(body, '"default":true', 1, true) then defaults = (defaults or 0) + 1 end
end
function done(summary, latency, requests)
  local d, b = 0, 0
  for _, t in ipairs(threads) do d = d + (t:get("defaults") or 0); b = b + (t:get("bad") or 0) end
  io.write(string.format("CLIPPER defaults=%%d bad=%%d p50_us=%%d p99_us=%%d\\n",
    d, b, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class WrkResult:
    server: str
    requests_per_s: float
    served_per_s: float  # answered 200 with a model output (not a default)
    defaults: int
    bad: int
    p50_ms: float
    p99_ms: float
    wrk_cpu_util: float  # wrk's CPU seconds / wall seconds (its core's share)
    server_cpu_us_per_request: float


def run_wrk(
    url: str, script: Path, seconds: float, connections: int, cpus: CpuPlan, threads: int = 1
) -> tuple[dict[str, float], float]:
    """One wrk run: its figures, and its CPU utilisation (cores' worth)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "-s", str(script), url]
    if cpus.generator is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus.generator))), *argv]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu = 0.0
    while proc.poll() is None:
        cpu = max(cpu, cpu_seconds(proc.pid))
        time.sleep(0.2)
    wall = time.monotonic() - started
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-500:]}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    mine = re.search(r"CLIPPER defaults=(\d+) bad=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    if rate is None or mine is None:
        raise RuntimeError(f"could not read wrk's output: {out[-500:]}")
    return {
        "rate": float(rate.group(1)),
        "defaults": int(mine.group(1)),
        "bad": int(mine.group(2)),
        "p50_ms": int(mine.group(3)) / 1e3,
        "p99_ms": int(mine.group(4)) / 1e3,
        "seconds": seconds,
    }, cpu / wall


@contextlib.contextmanager
def clipper_server(cpus: CpuPlan, log: Any) -> Iterator[tuple[int, BenchServer]]:
    flags = [*batching.COMMON_FLAGS, *batching.AIMD]
    with BenchServer(flags, cpus, log) as server:
        cloudpickle.register_pickle_by_value(naive_server)
        try:
            server.deploy("noop", make_model("noop"), slo_ms=20)
        finally:
            cloudpickle.unregister_pickle_by_value(naive_server)
        yield server.query_port, server


def measure(
    name: str,
    url: str,
    script: Path,
    cpu_of: Any,
    opts: argparse.Namespace,
    cpus: CpuPlan,
) -> WrkResult:
    run_wrk(url, script, 2, opts.connections, cpus)  # warm-up: JIT-free, but caches and AIMD
    before = cpu_of()
    figures, util = run_wrk(url, script, opts.seconds, opts.connections, cpus)
    used = cpu_of() - before
    requests = figures["rate"] * figures["seconds"]
    failed = figures["defaults"] + figures["bad"]
    served = figures["rate"] * max(0.0, 1 - failed / requests) if requests else 0.0
    return WrkResult(
        name,
        figures["rate"],
        served,
        int(figures["defaults"]),
        int(figures["bad"]),
        figures["p50_ms"],
        figures["p99_ms"],
        util,
        used / requests * 1e6 if requests else 0.0,
    )


def render(result: dict[str, Any]) -> str:
    head = (
        "repeat",
        "server",
        "requests/s",
        "served/s (no default)",
        "p50 (ms)",
        "p99 (ms)",
        "server CPU µs/request",
        "wrk CPU (of its core)",
    )
    rows = [
        [
            str(i),
            r["server"],
            f"{r['requests_per_s']:.0f}",
            f"{r['served_per_s']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['server_cpu_us_per_request']:.0f}",
            f"{r['wrk_cpu_util']:.0%}",
        ]
        for i, rep in enumerate(result["repeats"], 1)
        for r in rep["results"]
    ]
    ratio = result["ratio_median"]
    return report.blocks(
        "## Frontend ceiling with wrk (generated by `make bench-wrk`)",
        f"Run {result['when']} on {result['machine']}; wrk {result['wrk']} (one thread, "
        f"{result['connections']} keep-alive connections, {result['seconds']:.0f} s per run) "
        f"{result['cpus']}. Clipper: no-op model, cache off, AIMD; echo: a bare ASGI callable "
        "on uvicorn that parses the same 784-number body into numpy (bench/echo_server.py). "
        f"{len(result['repeats'])} repeat(s), servers alternating; ratios per repeat, median "
        "reported.",
        report.table(head, "llrrrrrr", rows),
        f"Clipper / echo (served per second, median of per-repeat ratios): **{ratio:.2f}** "
        f"(per repeat: {', '.join(f'{r:.2f}' for r in result['ratios'])}); "
        f"target ≥ {TARGET:.2f}: {report.verdict(ratio, TARGET)}.",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wrk", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-docs", action="store_true", help="print, do not write docs/")
    opts = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk; `make bench-wrk` does it)")
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cpus = CpuPlan.choose()
    body = json.dumps({"input": models.mlp_inputs(1)[0]}, separators=(",", ":"))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA % body)
        repeats: list[dict[str, Any]] = []
        echo = ProcessServer([sys.executable, "-m", "bench.echo_server"], cpus)
        with clipper_server(cpus, log) as (cport, server), echo:
            for i in range(opts.repeats):
                results = []
                for name in ("clipper", "echo") if i % 2 == 0 else ("echo", "clipper"):
                    if name == "clipper":

                        def clipper_cpu() -> float:
                            return sum(server.cpu().values())

                        url = f"http://127.0.0.1:{cport}/noop/predict"
                        r = measure(name, url, script, clipper_cpu, opts, cpus)
                    else:
                        url = f"http://127.0.0.1:{echo.query_port}/predict"

                        def echo_cpu() -> float:
                            return sum(echo.cpu().values())

                        r = measure(name, url, script, echo_cpu, opts, cpus)
                    log(
                        f"repeat {i + 1} {name}: {r.requests_per_s:.0f}/s "
                        f"(served {r.served_per_s:.0f}/s), p99 {r.p99_ms:.1f} ms, "
                        f"wrk CPU {r.wrk_cpu_util:.0%}"
                    )
                    results.append(r)
                by = {r.server: r for r in results}
                repeats.append(
                    {
                        "results": [asdict(r) for r in sorted(results, key=lambda r: r.server)],
                        "ratio": by["clipper"].served_per_s / by["echo"].served_per_s,
                    }
                )
    ratios: list[float] = [float(r["ratio"]) for r in repeats]
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "machine": f"{platform.machine()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}",
        "wrk": version[1] if len(version) > 1 else "?",
        "cpus": cpus.note,
        "connections": opts.connections,
        "seconds": opts.seconds,
        "repeats": repeats,
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
    }
    text = render(result)
    print(text)
    if not opts.no_docs:  # a trial run leaves the recorded results alone
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "wrk.json").write_text(json.dumps(result, indent=1))
        write_doc_section("wrk", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
