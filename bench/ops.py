"""Operations benchmarks: how fast a change propagates, and whether memory stays flat.

``python -m bench.ops propagation``: the time from a management call's return
until the query path serves the change, on the same frontend and on a second
frontend that shares a Redis store (change notification by pub/sub).

``python -m bench.ops soak [--minutes N] [--connections new,keepalive]``:
minutes of steady load on one model, one fresh server per HTTP connection
mode, side by side; the resident memory of each frontend and of its replicas
is sampled every few seconds, and its growth (MiB/h) fitted over the steady
window (the second half, after warm-up: cache full, dashboard ring buffer
full) and judged flat, levelling off or growing (``bench/soak.py``).
``--probe`` adds the server-side memory probe (``bench/soak_probe.py``);
``--malloc-arena-max``/``--trim`` tell glibc fragmentation from live objects;
the probe's other knobs (``CLIPPER_PROBE_*``, see ``bench/soak_probe.py``) pass
through from the environment.

Results go to ``bench/results/ops.json`` (the soak's samples to
``bench/results/raw/ops.json``) and a section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import report, store
from . import soak as soak_mod
from .harness import (
    ROOT,
    BenchServer,
    CpuPlan,
    free_port,
    machine_info,
    wait_for,
    write_doc_section,
)

RESULTS = ROOT / "bench" / "results" / "ops.json"


def _post(url: str, body: dict[str, Any]) -> int:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _visible(server: BenchServer, app: str) -> bool:
    url = f"http://127.0.0.1:{server.query_port}/{app}/predict"
    return _post(url, {"input": [1.0]}) == 200


def _until_visible(server: BenchServer, app: str, timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while not _visible(server, app):
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{app} never became visible")
        time.sleep(0.001)
    return time.perf_counter() - start


def _ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 2),
        "max_ms": round(values[-1] * 1000, 2),
    }


def propagation(rounds: int, log: Any) -> dict[str, Any]:
    cpus = CpuPlan.choose(enabled=False)
    redis_dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(redis_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
        ).stdout.strip() == "PONG", 20, "redis")  # fmt: skip
        local_call: list[float] = []
        local_seen: list[float] = []
        remote_seen: list[float] = []
        with (
            BenchServer(["--store", url], cpus, log) as a,
            BenchServer(["--store", url], cpus, log) as b,
        ):
            for i in range(rounds):
                app = f"prop-{i}"
                start = time.perf_counter()
                a.conn.register_application(app, "doubles", "-1", 100_000)
                local_call.append(time.perf_counter() - start)
                local_seen.append(_until_visible(a, app))  # same frontend
                # the other frontend: time since the call returned
                remote_seen.append(local_call[-1] + _until_visible(b, app) - 0.0)
            log(f"propagation: {rounds} apps registered")
        return {
            "rounds": rounds,
            "management_call": _ms(local_call),
            "same_frontend_after_return": _ms(local_seen),
            "other_frontend_since_call": _ms(remote_seen),
        }
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(redis_dir, ignore_errors=True)


# The raw parts of ops.json: in bench/results/raw/ only (bench/store.py).
RAW_KEYS = ("soak.runs.*.samples",)
PROPAGATION_ROWS = (
    ("management_call", "the `add_app` call itself"),
    ("same_frontend_after_return", "A serves it, after the call returned"),
    ("other_frontend_since_call", "B serves it, since the call began (pub/sub)"),
)


def write(result: dict[str, Any]) -> None:
    """Merge ``result`` into ops.json (the parts not measured this time are kept) and
    rewrite the ops section of docs/benchmarks.md from it."""
    old = store.load(RESULTS) if RESULTS.exists() else {}
    old.update(result)
    store.save(RESULTS, old, RAW_KEYS, indent=2)
    write_doc_section("ops", render(old))


def render(result: dict[str, Any]) -> str:
    """The ops section: change propagation, the soak, the machine."""
    m = result.get("machine")
    soak = result.get("soak", {})
    return report.blocks(
        "### Operations (generated by `python -m bench.ops`)",
        *_propagation(result.get("propagation")),
        *(soak_mod.doc_blocks(soak) if "runs" in soak else []),
        f"Run {m['date_utc']} on {report.machine(m)}." if m else None,
    )


def _propagation(p: dict[str, Any] | None) -> list[report.Block]:
    if not p:
        return []
    rows = [
        [label, str(p[key]["p50_ms"]), str(p[key]["p99_ms"]), str(p[key]["max_ms"])]
        for key, label in PROPAGATION_ROWS
    ]
    return [
        f"Change propagation, {p['rounds']} apps registered through frontend A of two "
        "sharing a Redis store:",
        report.table(("what", "p50 (ms)", "p99 (ms)", "max (ms)"), "lrrr", rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__)
    parser.add_argument("what", choices=("propagation", "soak", "all"))
    parser.add_argument("--rounds", type=int, default=50, help="apps to register (propagation)")
    parser.add_argument(
        "--minutes", type=float, default=40.0, help="soak duration (the modes run side by side)"
    )
    parser.add_argument("--rate", type=float, default=40.0, help="queries/s per soak client")
    parser.add_argument("--threads", type=int, default=4, help="soak clients")
    parser.add_argument(
        "--connections",
        default=",".join(soak_mod.MODES),
        help="soak connection modes, comma-separated: new (one per request), keepalive",
    )
    parser.add_argument(
        "--probe", action="store_true", help="run the server under bench.soak_probe"
    )
    parser.add_argument(
        "--tracemalloc", type=int, default=0, help="with --probe: tracemalloc frames (0: off)"
    )
    parser.add_argument(
        "--trim", action="store_true", help="with --probe: malloc_trim(0) at every sample"
    )
    parser.add_argument(
        "--probe-interval", type=float, default=10.0, help="with --probe: seconds per sample"
    )
    parser.add_argument(
        "--malloc-arena-max", type=int, default=0, help="MALLOC_ARENA_MAX for the server"
    )
    parser.add_argument(
        "--no-doc",
        action="store_true",
        help="soak: keep docs/benchmarks.md and ops.json as they are",
    )
    parser.add_argument(
        "--tag", default="", help="soak: a name for this run's files (with --no-doc, --probe)"
    )
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    result: dict[str, Any] = {"machine": machine_info(CpuPlan.choose(enabled=False))}
    if args.what in ("propagation", "all"):
        result["propagation"] = propagation(args.rounds, log)
        log(json.dumps(result["propagation"]))
    if args.what in ("soak", "all"):
        modes = [m for m in args.connections.split(",") if m]
        if unknown := set(modes) - set(soak_mod.MODES):
            parser.error(f"unknown connection modes {sorted(unknown)}")
        probe = None
        if args.probe:
            probe = {
                "CLIPPER_PROBE_INTERVAL": str(args.probe_interval),
                "CLIPPER_PROBE_TRACEMALLOC": str(args.tracemalloc),
                "CLIPPER_PROBE_TRIM": "1" if args.trim else "0",
            }
        env = {"MALLOC_ARENA_MAX": str(args.malloc_arena_max)} if args.malloc_arena_max else {}
        result["soak"] = soak_mod.soak(
            args.minutes, args.rate, args.threads, modes, log, probe=probe, env=env, tag=args.tag
        )
        if args.no_doc:
            out = soak_mod.RESULTS_DIR / f"soak-{args.tag or 'last'}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
            log(f"wrote {out} (docs and ops.json untouched)")
            return
        soak_mod.write_plot(result["soak"])
    write(result)


if __name__ == "__main__":
    main()
