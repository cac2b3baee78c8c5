"""Other HTTP layers under the echo workload, with wrk (``python -m bench.http_ceiling``).

The reading of the wrk section of docs/benchmarks.md (and docs/profile.md)
quotes two quick checks of what a different HTTP layer would give on the
server's core. This reruns them: the echo workload of ``bench/wrk.py`` (one
784-number JSON body, parsed into numpy, a small JSON answer:
``bench/echo_server.py``) served by

- ``asgi``: the ASGI callable on uvicorn (httptools, uvloop), the baseline of
  ``bench/wrk.py`` and ``bench/peers.py``;
- ``protocol``: the same work in an ``asyncio.Protocol`` on httptools and
  uvloop, no ASGI in between;
- ``granian``: the same work as an RSGI application under Granian (a Rust
  HTTP server), one worker. Granian is not a dependency: install it first
  (``.venv/bin/pip install granian``), else it is left out.

Measured as ``bench/wrk.py`` measures: wrk (one thread, 64 keep-alive
connections, 10 s after a 2 s warm-up) pinned to one core, the server (every
process of it) to the other; the servers alternate within each repeat and the
ratio to the ASGI echo (served per second) is taken per repeat. Needs ``wrk``
(``apt-get install wrk``). Prints a table and writes
bench/results/raw/http-ceiling.json (not committed; no docs section: the
figures are quoted in the prose).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import models, report, wrk
from .harness import CpuPlan
from .procserver import ProcessServer
from .store import RAW

# name: (bench.echo_server's --server, what it is)
SERVERS = {
    "asgi": ("uvicorn", "ASGI on uvicorn"),
    "protocol": ("protocol", "asyncio.Protocol on httptools"),
    "granian": ("granian", "Granian, RSGI"),
}
BASELINE = "asgi"


def missing(name: str) -> str | None:
    """Why a server cannot run here, or None."""
    if name == "granian" and importlib.util.find_spec("granian") is None:
        return "Granian is not installed (.venv/bin/pip install granian)"
    return None


def run(names: list[str], opts: argparse.Namespace, log: Any) -> list[dict[str, Any]]:
    """Every server measured once per repeat, in alternating order."""
    cpus = CpuPlan.choose()
    body = json.dumps({"input": models.mlp_inputs(1)[0]}, separators=(",", ":"))
    repeats: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        script = Path(tmp) / "post.lua"
        script.write_text(wrk.LUA % body)
        servers = {
            name: stack.enter_context(
                ProcessServer(
                    [sys.executable, "-m", "bench.echo_server", "--server", SERVERS[name][0]],
                    cpus,
                )
            )
            for name in names
        }
        for i in range(opts.repeats):
            results = {}
            for name in names if i % 2 == 0 else names[::-1]:
                server = servers[name]
                url = f"http://127.0.0.1:{server.query_port}/predict"

                def cpu(server: ProcessServer = server) -> float:
                    return sum(server.cpu().values())

                r = wrk.measure(name, url, script, cpu, opts, cpus)
                log(
                    f"repeat {i + 1} {name}: {r.served_per_s:.0f}/s served, "
                    f"p99 {r.p99_ms:.1f} ms, wrk CPU {r.wrk_cpu_util:.0%}"
                )
                results[name] = r
            base = results[BASELINE].served_per_s
            repeats.append(
                {
                    "results": [asdict(results[n]) for n in names],
                    "ratios": {n: results[n].served_per_s / base for n in names if base},
                }
            )
    return repeats


def render(result: dict[str, Any]) -> str:
    head = (
        "server",
        "served/s per repeat",
        "p99 (ms) per repeat",
        f"x {BASELINE}: median (per repeat, min-max)",
    )
    rows = []
    for name in result["servers"]:
        mine = [r for rep in result["repeats"] for r in rep["results"] if r["server"] == name]
        ratios = [rep["ratios"][name] for rep in result["repeats"] if name in rep["ratios"]]
        rows.append(
            [
                SERVERS[name][1],
                ", ".join(f"{r['served_per_s']:.0f}" for r in mine),
                ", ".join(f"{r['p99_ms']:.2f}" for r in mine),
                _ratio(ratios),
            ]
        )
    return report.blocks(
        f"wrk (one thread, {result['connections']} keep-alive connections, "
        f"{result['seconds']:.0f} s per run), {result['cpus']}; "
        f"{len(result['repeats'])} repeat(s), servers alternating.",
        report.table(head, "lrrr", rows),
        *(f"Left out: {why}." for why in result["left_out"].values()),
    )


def _ratio(ratios: list[float]) -> str:
    if not ratios:
        return "-"
    return f"{report.times(report.median(ratios))} ({min(ratios):.2f}-{max(ratios):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated: {','.join(SERVERS)} ({BASELINE} always runs: the baseline)",
    )
    opts = parser.parse_args(argv)
    wanted = [s.strip() for s in opts.servers.split(",") if s.strip()]
    if unknown := set(wanted) - set(SERVERS):
        parser.error(f"unknown server(s) {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)")
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    left_out = {n: why for n in wanted if (why := missing(n))}
    names = [n for n in SERVERS if n == BASELINE or (n in wanted and n not in left_out)]
    for why in left_out.values():
        log(f"left out: {why}")
    result = {
        "servers": names,
        "left_out": left_out,
        "connections": opts.connections,
        "seconds": opts.seconds,
        "cpus": CpuPlan.choose().note,
        "repeats": run(names, opts, log),
    }
    result["ratio_medians"] = {
        n: report.median([rep["ratios"][n] for rep in result["repeats"] if n in rep["ratios"]])
        for n in names
    }
    out = RAW / "http-ceiling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(render(result))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
