"""Operations benchmarks: how fast a change propagates, and whether memory stays flat.

``python -m bench.ops propagation``: the time from a management call's return
until the query path serves the change, on the same frontend and on a second
frontend that shares a Redis store (change notification by pub/sub).

``python -m bench.ops soak [--minutes N]``: minutes of steady load on one
model; the resident memory of the frontend and of its replicas is sampled
every few seconds, and the growth per minute over the second half reported
(after warm-up: cache filled, allocators settled).

Results go to ``bench/results/ops.json`` and a section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .batching import ROOT, machine_info
from .harness import BenchServer, CpuPlan, descendants, free_port, wait_for, write_doc_section

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


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def soak(minutes: float, rate: float, log: Any) -> dict[str, Any]:
    from . import models

    cpus = CpuPlan.choose()
    samples: list[dict[str, float]] = []
    sent = [0, 0]  # answered, errors
    # A 2 MiB cache fills within the first minute, so the second half shows
    # the steady state (a 32 MiB cache would still be filling: growth, by design).
    with BenchServer(["--cache-bytes", str(2 << 20)], cpus, log) as server:
        server.deploy("soak", models.LinearSVM(), slo_ms=50)
        url = f"http://127.0.0.1:{server.query_port}/soak/predict"
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                # Distinct inputs, so the cache fills to its bound and evicts.
                body = {"input": [float((i * 7) % 17)] * 63 + [float(i % 100_000)]}
                ok = _post(url, body) == 200
                sent[0 if ok else 1] += 1
                time.sleep(max(0.0, 1.0 / rate))

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        start = time.monotonic()
        try:
            while time.monotonic() - start < minutes * 60:
                assert server.pid is not None
                replicas = [p for p in descendants(server.pid) if p != server.pid]
                samples.append({
                    "t_s": round(time.monotonic() - start, 1),
                    "frontend_mb": round(_rss_mb(server.pid), 1),
                    "replicas_mb": round(sum(_rss_mb(p) for p in replicas), 1),
                })  # fmt: skip
                time.sleep(5)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    half = [s for s in samples if s["t_s"] >= minutes * 30]

    def slope(key: str) -> float:
        if len(half) < 2:
            return 0.0
        xs = [s["t_s"] / 60 for s in half]
        ys = [s[key] for s in half]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        den = sum((x - mx) ** 2 for x in xs) or 1.0
        return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 3)

    return {
        "minutes": minutes,
        "queries": sent[0],
        "errors": sent[1],
        "frontend_mb_per_min": slope("frontend_mb"),
        "replicas_mb_per_min": slope("replicas_mb"),
        "frontend_mb_end": samples[-1]["frontend_mb"] if samples else None,
        "replicas_mb_end": samples[-1]["replicas_mb"] if samples else None,
        "samples": samples,
    }


def write(result: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    old.update(result)
    RESULTS.write_text(json.dumps(old, indent=2))
    lines = ["### Operations (generated by `python -m bench.ops`)", ""]
    if "propagation" in old:
        p = old["propagation"]
        lines += [
            f"Change propagation, {p['rounds']} apps registered through frontend A of two "
            "sharing a Redis store:",
            "",
            "| what | p50 (ms) | p99 (ms) | max (ms) |",
            "|---|---:|---:|---:|",
        ]
        for key, label in (
            ("management_call", "the `add_app` call itself"),
            ("same_frontend_after_return", "A serves it, after the call returned"),
            ("other_frontend_since_call", "B serves it, since the call began (pub/sub)"),
        ):
            r = p[key]
            lines.append(f"| {label} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
        lines.append("")
    if "soak" in old:
        s = old["soak"]
        lines += [
            f"Soak: {s['minutes']} min of steady load on the linear model, "
            f"{s['queries']} queries ({s['errors']} errors), distinct inputs; a 2 MiB "
            "prediction cache, full within the first minute, then evicting. Resident "
            "memory growth over the second half (steady state: near 0 means flat):",
            "",
            "| process | MB at the end | growth (MB/min) |",
            "|---|---:|---:|",
            f"| frontend | {s['frontend_mb_end']} | {s['frontend_mb_per_min']} |",
            f"| replicas | {s['replicas_mb_end']} | {s['replicas_mb_per_min']} |",
            "",
        ]
    if "machine" in old:
        m = old["machine"]
        lines.append(f"Run {m['date_utc']} on {m['cpu_model']} ({m['cpu_count']} cores).")
    write_doc_section("ops", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__)
    parser.add_argument("what", choices=("propagation", "soak", "all"))
    parser.add_argument("--rounds", type=int, default=50, help="apps to register (propagation)")
    parser.add_argument("--minutes", type=float, default=3.0, help="soak duration")
    parser.add_argument("--rate", type=float, default=50.0, help="queries/s per soak thread")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    result: dict[str, Any] = {"machine": machine_info(CpuPlan.choose(enabled=False))}
    if args.what in ("propagation", "all"):
        result["propagation"] = propagation(args.rounds, log)
        log(json.dumps(result["propagation"]))
    if args.what in ("soak", "all"):
        result["soak"] = soak(args.minutes, args.rate, log)
        log(json.dumps({k: v for k, v in result["soak"].items() if k != "samples"}))
    write(result)


if __name__ == "__main__":
    main()
