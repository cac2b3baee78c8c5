"""The memory soak: steady load, resident memory sampled, its slope judged.

``python -m bench.ops soak`` runs it (see ``bench/ops.py``). One fresh server
per HTTP connection mode (``new``: a new connection per request, as ``urllib``
opens them; ``keepalive``: one connection per client thread), all loaded at
the same time, each with ``threads x rate`` queries/s of distinct inputs on
the linear model and a 2 MiB prediction cache that fills and then evicts. The
resident set (``VmRSS``) of each server process and of its replicas is read
from ``/proc`` every ``SAMPLE_S`` seconds.

The slope is fitted (least squares) over the *steady window*: the second half
of the run, and never before the cache has been evicting for a minute and the
dashboard's 5-minute ring buffer is full (what fills up to a bound is warm-up,
not a leak). The verdict per process: "flat" when the fitted growth is under
``FLAT_MB_PER_H``; "levelling off" when the window's second half is flat (or
grows at under a third of the whole window's rate); else "growing".

Why the default is 40 minutes: CPython keeps up to 2,000 freed tuples of each
length (1-20) for reuse, and ``dataclasses.fields()`` builds its tuple from a
generator (allocated longer, then shrunk), so every ``ClipperServer.status()``
(one a second from the metrics tick, plus each ``/admin/status``) moves one
tuple per statistics dataclass into those free lists: about 2 MiB/h for the
first 15 minutes, 0.8 MiB/h until about 30, then nothing (the soak's reading in
``docs/benchmarks.md``). A shorter run sees that fill as growth.

``--probe`` runs the servers under ``bench.soak_probe`` (RSS, glibc and
pymalloc statistics, gc, tracemalloc, fds, asyncio tasks... every few seconds,
to ``bench/results/raw/soak-probe[-<tag>]-<mode>.jsonl``, ignored by git).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import harness, report
from .harness import BenchServer, CpuPlan, descendants
from .store import RAW

RESULTS_DIR = RAW  # the probe's traces and trial runs: raw, ignored by git
IMG = harness.IMG / "soak-rss.png"
CACHE_BYTES = 2 << 20
DASHBOARD_RING_S = 300  # clipper.dashboard.series.HISTORY samples, one a second
FLAT_MB_PER_H = 1.0  # under this fitted growth a process is flat: < 2 bytes/query at 160/s
MODES = ("new", "keepalive")
SAMPLE_S = 5.0


def probe_path(mode: str, tag: str = "") -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR / f"soak-probe{'-' + tag if tag else ''}-{mode}.jsonl"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Load:
    """``threads`` clients, each paced at ``rate`` requests/s, distinct inputs."""

    def __init__(self, host: str, port: int, threads: int, rate: float, mode: str) -> None:
        self.host, self.port = host, port
        self.threads, self.rate, self.mode = threads, rate, mode
        self.ok = [0] * threads
        self.errors = [0] * threads
        self.connections = [0] * threads
        self.stop = threading.Event()
        self._workers = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(15)

    def _run(self, index: int) -> None:
        headers = {"Content-Type": "application/json"}
        if self.mode == "new":
            headers["Connection"] = "close"  # what urllib sends: the server closes
        conn: http.client.HTTPConnection | None = None
        period = 1.0 / self.rate
        next_at = time.monotonic()
        i = index
        while not self.stop.is_set():
            i += self.threads  # distinct across threads: the cache fills and evicts
            body = json.dumps({"input": [float((i * 7) % 17)] * 63 + [float(i)]})
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                    self.connections[index] += 1
                conn.request("POST", "/soak/predict", body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                if self.mode == "new" or response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                ok = False
                if conn is not None:
                    conn.close()
                conn = None
            if ok:
                self.ok[index] += 1
            else:
                self.errors[index] += 1
            next_at += period
            now = time.monotonic()
            if next_at < now - 1.0:  # fell behind: resume from now, no burst
                next_at = now
            time.sleep(max(0.0, next_at - now))
        if conn is not None:
            conn.close()


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of y on x and its standard error."""
    if len(points) < 3:
        return 0.0, 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, (resid / (len(xs) - 2) / sxx) ** 0.5


def judge(samples: list[dict[str, Any]], key: str, start_s: float) -> dict[str, Any]:
    """Slope of ``key`` (MB) over the samples from ``start_s`` on, in MB/h, and a verdict."""
    window = [(s["t_s"] / 3600, s[key]) for s in samples if s["t_s"] >= start_s]
    slope, se = fit(window)
    half = len(window) // 2
    first, second = fit(window[: half + 1])[0], fit(window[half:])[0]
    out: dict[str, Any] = {
        "mb_per_h": round(slope, 2),
        "stderr_mb_per_h": round(se, 2),
        "first_half_mb_per_h": round(first, 2),
        "second_half_mb_per_h": round(second, 2),
        "mb_start": window[0][1] if window else None,
        "mb_end": window[-1][1] if window else None,
        "mb_max": max((y for _, y in window), default=None),
    }
    if len(window) < 12:  # under a minute of steady window
        out["verdict"] = "too short to judge"
    elif abs(slope) < FLAT_MB_PER_H:
        out["verdict"] = "flat"
    elif abs(second) < FLAT_MB_PER_H or second < slope / 3:
        out["verdict"] = "levelling off"
    else:
        out["verdict"] = "growing"
    return out


def _window_start(minutes: float, cache_full_at_s: float | None) -> float:
    """The steady window's start: the second half, after every bounded fill-up."""
    after_fill = (cache_full_at_s if cache_full_at_s is not None else 0.0) + 60
    return max(minutes * 30, DASHBOARD_RING_S, after_fill)


def soak(
    minutes: float,
    rate: float,
    threads: int,
    modes: list[str],
    log: Callable[[str], None],
    *,
    probe: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """One fresh server per connection mode, all loaded at once for ``minutes``;
    resident memory sampled every ``SAMPLE_S`` seconds; slopes and verdicts."""
    from . import models

    cpus = CpuPlan.choose()
    extra = dict(env or {})
    module = "clipper.server"
    if probe is not None:
        module = "bench.soak_probe"
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    flags = ["--cache-bytes", str(CACHE_BYTES)]
    with contextlib.ExitStack() as stack:
        servers: dict[str, BenchServer] = {}
        for mode in modes:  # one after the other: BenchServer sets os.environ while starting
            mode_env = dict(extra)
            if probe is not None:
                path = probe_path(mode, tag)
                path.unlink(missing_ok=True)
                mode_env |= {"CLIPPER_PROBE_OUT": str(path), **probe}
            server = stack.enter_context(BenchServer(flags, cpus, log, module=module, env=mode_env))
            server.deploy("soak", models.LinearSVM(), slo_ms=50)
            servers[mode] = server
        replicas = {
            m: [p for p in descendants(s.pid) if p != s.pid]
            for m, s in servers.items()
            if s.pid is not None
        }
        for mode, server in servers.items():
            log(f"soak ({mode}): server pid {server.pid}, replicas {replicas[mode]}")
        log(f"soak: {minutes:g} min, {threads} x {rate:g} queries/s per server")
        cpus.pin_generator()  # the load threads below inherit it
        loads = {
            m: stack.enter_context(Load(s.host, s.query_port, threads, rate, m))
            for m, s in servers.items()
        }
        start = next_at = time.monotonic()
        while (elapsed := time.monotonic() - start) < minutes * 60:
            for mode, server in servers.items():
                assert server.pid is not None
                cache: dict[str, Any] = {}
                with contextlib.suppress(OSError, ValueError):
                    cache = server.status().get("cache") or {}
                samples[mode].append({
                    "t_s": round(elapsed, 1),
                    "frontend_mb": round(rss_mb(server.pid), 2),
                    "replicas_mb": round(sum(rss_mb(p) for p in replicas[mode]), 2),
                    "queries": sum(loads[mode].ok),
                    "cache_entries": cache.get("entries"),
                    "cache_evictions": cache.get("evictions"),
                })  # fmt: skip
            if len(samples[modes[0]]) % 60 == 0:
                log(f"  t={elapsed / 60:.0f} min: " + "; ".join(
                    f"{m} frontend {v[-1]['frontend_mb']} MB, replicas {v[-1]['replicas_mb']} MB"
                    for m, v in samples.items()
                ))  # fmt: skip
            next_at += SAMPLE_S
            time.sleep(max(0.0, next_at - time.monotonic()))
        seconds = time.monotonic() - start
        for load in loads.values():
            load.stop.set()
        counts = {
            m: (sum(load.ok), sum(load.errors), sum(load.connections)) for m, load in loads.items()
        }
    runs = {}
    for mode, got in samples.items():
        full = next((s["t_s"] for s in got if (s["cache_evictions"] or 0) > 0), None)
        start_s = _window_start(minutes, full)
        ok, errors, connections = counts[mode]
        runs[mode] = {
            "queries": ok,
            "errors": errors,
            "queries_per_s": round(ok / seconds, 1),
            "connections": connections,
            "cache_full_at_s": full,
            "window_start_s": start_s,
            "frontend": judge(got, "frontend_mb", start_s),
            "replicas": judge(got, "replicas_mb", start_s),
            "probe": str(probe_path(mode, tag)) if probe is not None else None,
            "samples": got,
        }
        summary = {k: runs[mode][k] for k in ("queries", "errors", "frontend", "replicas")}
        log(f"soak ({mode}): {json.dumps(summary)}")
    return {
        "minutes": minutes,
        "rate": rate,
        "threads": threads,
        "flat_mb_per_h": FLAT_MB_PER_H,
        "cache_bytes": CACHE_BYTES,
        "server_env": env or {},
        "runs": runs,
    }


def doc_blocks(s: dict[str, Any]) -> list[report.Block | None]:
    """The soak's part of the generated section of ``docs/benchmarks.md``."""
    env = s.get("server_env") or {}
    return [
        _doc_setup(s),
        _doc_table(s["runs"]),
        "Server environment: " + ", ".join(f"`{k}={v}`" for k, v in env.items()) if env else None,
        report.figure("Resident memory during the soak", IMG.name),
    ]


def _doc_setup(s: dict[str, Any]) -> str:
    runs = s["runs"]
    any_run = next(iter(runs.values()))
    times = sorted({r["cache_full_at_s"] for r in runs.values() if r["cache_full_at_s"]})
    full = " and ".join(f"{t:g} s" for t in times)
    return (
        f"Soak: {s['minutes']:g} min of steady load on the linear model, one fresh server per "
        f"HTTP connection mode, side by side ({s['threads']} clients x {s['rate']:g} queries/s "
        f"each, distinct inputs); a {s['cache_bytes'] >> 20} MiB prediction cache that fills "
        f"(at {full or 'never'}) and then evicts. Resident memory (VmRSS) every {SAMPLE_S:g} s; "
        "MiB = VmRSS kB / 1024; growth is the least-squares slope over the steady window (from "
        f"{any_run['window_start_s'] / 60:g} min: the second half, after the cache and the "
        "dashboard's 5-minute ring buffer are full), and over each half of that window; flat "
        f"means under {s['flat_mb_per_h']:g} MiB/h."
    )


def _doc_table(runs: dict[str, Any]) -> list[str]:
    labels = {"new": "new per request", "keepalive": "kept alive"}
    head = (
        "connections",
        "process",
        "queries (errors)",
        "MiB at window start / end",
        "growth (MiB/h)",
        "window halves (MiB/h)",
        "verdict",
    )
    rows = [
        [
            f"{labels.get(mode, mode)} ({r['connections']} opened)",
            proc,
            f"{r['queries']} ({r['errors']})",
            f"{j['mb_start']} / {j['mb_end']}",
            f"{j['mb_per_h']} ± {j['stderr_mb_per_h']}",
            f"{j['first_half_mb_per_h']}, {j['second_half_mb_per_h']}",
            f"**{j['verdict']}**",
        ]
        for mode, r in runs.items()
        for proc in ("frontend", "replicas")
        for j in [r[proc]]
    ]
    return report.table(head, "llrrrrl", rows)


def write_plot(s: dict[str, Any], path: Path = IMG) -> None:
    plt = report.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for mode, r in s["runs"].items():
        t = [x["t_s"] / 60 for x in r["samples"]]
        for ax, key in zip(axes, ("frontend_mb", "replicas_mb"), strict=True):
            ax.plot(t, [x[key] for x in r["samples"]], label=mode, lw=1.2)
    start = next(iter(s["runs"].values()))["window_start_s"] / 60
    for ax, title in zip(axes, ("frontend (server process)", "replicas (sum)"), strict=True):
        ax.axvspan(start, s["minutes"], color="grey", alpha=0.12, label="steady window")
        ax.set_title(f"{title}: VmRSS")
        ax.set_xlabel("minutes")
        ax.set_ylabel("MiB")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    report.save_figure(fig, path)
