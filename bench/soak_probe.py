"""``python -m bench.soak_probe [server flags]``: ``clipper.server`` with a memory probe.

The server runs unchanged (its normal ``main``); this wrapper only adds a task
on the server's event loop that, every ``CLIPPER_PROBE_INTERVAL`` seconds,
appends one JSON line to ``CLIPPER_PROBE_OUT`` with what could explain a
growing resident set: RSS (anonymous and file-backed), glibc's ``mallinfo2``
(bytes in use vs. held free), ``sys.getallocatedblocks()``, gc objects by
type, asyncio tasks by coroutine, open file descriptors by kind, uvicorn's
open connections and tasks, Prometheus samples per scrape, loggers and
handlers, and the server's own bounded structures (prediction cache, pending
and in-flight maps, dashboard ring buffer, policy-state cache).

Options (environment):

- ``CLIPPER_PROBE_OUT``: the JSON-lines file (required).
- ``CLIPPER_PROBE_INTERVAL``: seconds between samples (default 10).
- ``CLIPPER_PROBE_TRACEMALLOC``: frames per traceback; 0 (default) leaves
  tracemalloc off. On, every ``CLIPPER_PROBE_SNAPSHOT_EVERY`` samples a
  snapshot is compared with the first one taken after ``CLIPPER_PROBE_BASELINE_S``
  seconds of uptime: the top growing allocation sites go in the line.
  tracemalloc's own tables grow with the number of live blocks, so RSS of a
  traced run is not the RSS of an untraced one: use it to find sites, not to
  measure slopes.
- ``CLIPPER_PROBE_GC_TYPES``: how many object types to list (default 25; 0: skip
  the walk over every object).
- ``CLIPPER_PROBE_COLLECT``: 1 to run a full ``gc.collect()`` after every sample
  and record what it freed and the live blocks after it: growth that a
  collection takes back is cyclic garbage waiting for the oldest generation,
  not a leak.
- ``CLIPPER_PROBE_BYTES``: 1 to count the ``bytes`` objects that gc-tracked
  containers hold, by container type and size (a header or payload kept
  alive shows up here with its keeper).
- ``CLIPPER_PROBE_MALLOCSTATS``: 1 to parse ``sys._debugmallocstats()`` (pymalloc's
  arenas, its blocks in use per size class, and CPython's free lists: objects
  kept for reuse count as allocated blocks, and the tuple free list alone
  keeps up to 2,000 tuples of each length).
- ``CLIPPER_PROBE_TRIM``: 1 to call ``malloc_trim(0)`` at every sample and record
  the RSS after it: memory glibc gives back was free, not live (fragmentation
  or allocator caching, not a leak).

Nothing here is imported by ``clipper``: the probe is for benchmarks only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import json
import logging
import os
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.soak_probe")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> Any:
    with contextlib.suppress(OSError, TypeError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return None


LIBC = _libc()


def mallinfo() -> dict[str, int]:
    """glibc's view: bytes the heap holds from the system, in use, and free inside it."""
    fn = getattr(LIBC, "mallinfo2", None)
    if fn is None:
        return {}
    fn.restype = _MallInfo2
    m = fn()
    return {
        "heap_kb": (m.arena + m.hblkhd) // 1024,  # from the system: brk/arenas + mmapped
        "in_use_kb": (m.uordblks + m.hblkhd) // 1024,  # handed out by malloc
        "free_kb": m.fordblks // 1024,  # held by malloc, free (fragments, caches)
        "mmap_kb": m.hblkhd // 1024,
    }


def malloc_trim() -> bool:
    fn = getattr(LIBC, "malloc_trim", None)
    return bool(fn(0)) if fn is not None else False


def proc_status() -> dict[str, int]:
    """The memory lines of /proc/self/status, in kB."""
    out = {}
    keys = {"VmRSS": "rss_kb", "RssAnon": "anon_kb", "RssFile": "file_kb", "VmHWM": "hwm_kb"}
    keys |= {"VmData": "data_kb", "Threads": "threads"}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            out[keys[name]] = int(rest.split()[0])
    return out


def fds() -> dict[str, int]:
    """Open file descriptors by kind (socket, pipe, anon_inode:..., file)."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
        if kind == "anon_inode":
            kind = target
        kinds[kind] += 1
    return dict(kinds)


def _task_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", type(coro).__name__)


def _cardinality(registry: Any) -> dict[str, int]:
    families = samples = 0
    for family in registry.collect():
        families += 1
        samples += len(family.samples)
    return {"families": families, "samples": samples}


def _len(obj: Any, *path: str) -> int | None:
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    try:
        return len(obj)
    except TypeError:
        return None


def server_state(server: Any) -> dict[str, Any]:
    """The server's own structures that hold per-query or per-sample data."""
    out: dict[str, Any] = {}
    if server.cache is not None:
        s = server.cache.statistics()
        out["cache"] = {"entries": s.entries, "bytes": s.bytes, "evictions": s.evictions}
        out["cache"] |= {"hits": s.hits, "misses": s.misses}
    d = server.dispatcher
    out["dispatcher"] = {"pending": _len(d, "_pending"), "in_flight": _len(d, "_in_flight")}
    out["dispatcher"]["queued"] = sum(len(s.queue) for s in d._models.values())
    out["uvicorn"] = [
        {
            "connections": len(s.server_state.connections),
            "tasks": len(s.server_state.tasks),
            "requests": s.server_state.total_requests,
        }
        for s in server._servers
    ]
    dashboard = getattr(server.management_app, "dashboard", None)
    out["dashboard_samples"] = _len(dashboard, "series", "samples")
    out["policy_states"] = _len(server.processor, "states", "_cache")
    out["rpc_replicas"] = _len(server.rpc, "replicas")
    out["metrics_apps"] = len(server.metrics.apps)
    out["prometheus"] = _cardinality(server.metrics.registry)
    return out


def gc_types(top: int) -> tuple[int, dict[str, int]]:
    counts: collections.Counter[str] = collections.Counter()
    objects = gc.get_objects()
    for obj in objects:
        counts[type(obj).__qualname__] += 1
    total = len(objects)
    del objects
    return total, dict(counts.most_common(top))


_FREE = re.compile(r"^\s*(\d+) free (.+?) \* (\d+) bytes each")
_TOTAL = re.compile(r"^# (.+?)\s+=\s+([\d,]+)$")
_CLASS = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$")


def pymalloc_stats() -> dict[str, Any]:
    """``sys._debugmallocstats()`` (written to fd 2 by C code), parsed."""
    with tempfile.TemporaryFile("w+") as f:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    out: dict[str, Any] = {"free_lists": {}, "in_use_by_size": {}}
    for line in text.splitlines():
        if m := _FREE.match(line):
            out["free_lists"][m[2].replace("PyTupleObjects", "tuples")] = int(m[1])
        elif m := _TOTAL.match(line):
            key = m[1].replace(" ", "_")
            out[key] = int(m[2].replace(",", ""))
        elif m := _CLASS.match(line):
            out["in_use_by_size"][int(m[2])] = int(m[4])
    free = out["free_lists"]
    out["free_tuples"] = sum(n for name, n in free.items() if name.endswith("tuples"))
    out["free_list_objects"] = sum(free.values())
    return out


def held_bytes(top: int = 15) -> dict[str, int]:
    """``bytes`` referenced by gc-tracked objects: ``"<holder type> <size bucket>"``: count."""
    counts: collections.Counter[str] = collections.Counter()
    objects = gc.get_objects()
    for obj in objects:
        for ref in gc.get_referents(obj):
            if type(ref) is bytes:
                size = len(ref)
                bucket = 64 * (size // 64) if size < 1024 else 1024 * (size // 1024)
                counts[f"{type(obj).__qualname__} {bucket}"] += 1
    del objects
    return dict(counts.most_common(top))


_IGNORE = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, __file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def _site(stat: tracemalloc.StatisticDiff, frames: int) -> dict[str, Any]:
    where = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
    return {
        "kb": round(stat.size / 1024, 1),
        "diff_kb": round(stat.size_diff / 1024, 1),
        "blocks": stat.count,
        "diff_blocks": stat.count_diff,
        "where": where[-frames:],
    }


class Probe:
    def __init__(self, server: Any) -> None:
        env = os.environ
        self.server = server
        self.out = Path(env["CLIPPER_PROBE_OUT"])
        self.interval = float(env.get("CLIPPER_PROBE_INTERVAL", "10"))
        self.frames = int(env.get("CLIPPER_PROBE_TRACEMALLOC", "0"))
        self.snapshot_every = int(env.get("CLIPPER_PROBE_SNAPSHOT_EVERY", "6"))
        self.baseline_s = float(env.get("CLIPPER_PROBE_BASELINE_S", "120"))
        self.gc_top = int(env.get("CLIPPER_PROBE_GC_TYPES", "25"))
        self.trim = env.get("CLIPPER_PROBE_TRIM", "0") == "1"
        self.collect = env.get("CLIPPER_PROBE_COLLECT", "0") == "1"
        self.bytes = env.get("CLIPPER_PROBE_BYTES", "0") == "1"
        self.mallocstats = env.get("CLIPPER_PROBE_MALLOCSTATS", "0") == "1"
        self.start = time.monotonic()
        self.baseline: tracemalloc.Snapshot | None = None
        self.previous: tracemalloc.Snapshot | None = None
        self.n = 0

    def sample(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        line: dict[str, Any] = {"t_s": round(time.monotonic() - self.start, 1)}
        line["uptime_s"] = round(time.time() - self.server.started_at, 1)
        line |= proc_status()
        line["malloc"] = mallinfo()
        line["py_blocks"] = sys.getallocatedblocks()
        if self.trim:
            malloc_trim()
            line["rss_after_trim_kb"] = proc_status()["rss_kb"]
            line["malloc_after_trim"] = mallinfo()
        tasks = asyncio.all_tasks()
        line["asyncio_tasks"] = len(tasks)
        line["asyncio_by_coro"] = dict(collections.Counter(map(_task_name, tasks)).most_common(8))
        del tasks
        line["fds"] = fds()
        line["loggers"] = len(logging.Logger.manager.loggerDict)
        line["root_handlers"] = len(logging.getLogger().handlers)
        line["gc_counts"] = gc.get_count()
        line["gc_collections"] = [s["collections"] for s in gc.get_stats()]
        line |= server_state(self.server)
        if self.gc_top:
            line["gc_objects"], line["gc_types"] = gc_types(self.gc_top)
        if self.mallocstats:
            line["pymalloc"] = pymalloc_stats()
        if self.bytes:
            line["held_bytes"] = held_bytes()
        if self.frames:
            line["tracemalloc"] = self.trace(line["uptime_s"])
        if self.collect:
            line["gc_unreachable"] = gc.collect()
            line["gc_garbage"] = len(gc.garbage)
            line["py_blocks_after_collect"] = sys.getallocatedblocks()
            line["rss_after_collect_kb"] = proc_status()["rss_kb"]
        line["probe_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return line

    def trace(self, uptime: float) -> dict[str, Any]:
        current, peak = tracemalloc.get_traced_memory()
        out: dict[str, Any] = {"traced_kb": current // 1024, "peak_kb": peak // 1024}
        out["overhead_kb"] = tracemalloc.get_tracemalloc_memory() // 1024
        if self.n % self.snapshot_every:
            return out
        snap = tracemalloc.take_snapshot().filter_traces(_IGNORE)
        if self.baseline is None:
            if uptime >= self.baseline_s:
                self.baseline = snap
                out["baseline"] = True
        else:
            diffs = snap.compare_to(self.baseline, "lineno")
            out["since_baseline"] = [_site(s, 1) for s in diffs[:12] if s.size_diff]
            out["since_baseline_total"] = {
                "kb": round(sum(s.size_diff for s in diffs) / 1024, 1),
                "blocks": sum(s.count_diff for s in diffs),
            }
            files = snap.compare_to(self.baseline, "filename")
            out["since_baseline_files"] = [_site(s, 1) for s in files[:8] if s.size_diff]
            # Whole tracebacks, only for the three lines that grew most (cheap).
            growing = [s for s in diffs if s.size_diff > 0][:3]
            if growing:
                only = [
                    tracemalloc.Filter(True, s.traceback[-1].filename, s.traceback[-1].lineno)
                    for s in growing
                ]
                tb = snap.filter_traces(only).compare_to(
                    self.baseline.filter_traces(only), "traceback"
                )
                out["since_baseline_tb"] = [_site(s, self.frames) for s in tb[:6] if s.size_diff]
            if self.previous is not None:
                diffs = snap.compare_to(self.previous, "lineno")
                out["since_previous"] = [_site(s, 1) for s in diffs[:8] if s.size_diff]
        self.previous = snap
        return out

    async def run(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                line = self.sample()
            except Exception:  # a probe must never take the server down
                log.exception("soak probe sample failed")
            else:
                with self.out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
            self.n += 1
            await asyncio.sleep(self.interval)


def main() -> int:
    frames = int(os.environ.get("CLIPPER_PROBE_TRACEMALLOC", "0"))
    if frames:
        tracemalloc.start(frames)
    import clipper.server as clipper_server

    original = clipper_server.ClipperServer.start

    async def start(self: Any) -> None:
        await original(self)
        probe = Probe(self)
        self._probe_task = asyncio.create_task(probe.run(), name="soak-probe")

    clipper_server.ClipperServer.start = start  # type: ignore[method-assign]
    return clipper_server.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
