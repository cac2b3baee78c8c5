"""Profile the Clipper server's hot path under steady load (py-spy), into docs/profile.md.

A real server (bench/harness.py, AIMD, cache off) serves one model (the
light MLP by default); the open-loop generator of bench/loadgen.py sends
Poisson load at ``--rate`` from the other core while ``py-spy record``
samples the server process *and* its model replica (``--subprocesses``,
``--gil``: only samples of a thread holding the GIL, so waiting threads and idle
event loops are left out) for
``--duration`` seconds. The raw collapsed stacks are reduced to:

- where the time goes, by stage (the deepest frame on a stack that belongs
  to a known stage: HTTP server, request parsing, dispatch, RPC, ...);
- the top functions by own time (the deepest Python frame of a sample).

Only Python frames are seen (py-spy without ``--native``): time in C code
(orjson, numpy, httptools, uvloop, libzmq) is charged to the Python function
that called it, and a sample whose only frames are the event loop's is time
in uvloop itself (its I/O and callbacks, in C). C code that releases the GIL
(BLAS inside numpy, libzmq's I/O thread) is not sampled: the CPU time per
query of each process (from /proc) is reported beside the profile.

Writes docs/profile.md and, beside it, the raw stacks (docs/profile-raw.txt,
the most frequent ones, under 200 KB). ``py-spy`` must be installed
(``.venv/bin/pip install py-spy``) and allowed to ptrace the server.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import batching, loadgen, report
from .harness import BenchServer, CpuPlan, loop_factory, pid_alive
from .loadgen import Pool, Workload
from .naive_server import MODEL_KEYS, make_model

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "profile.md"
RAW = ROOT / "docs" / "profile-raw.txt"
RAW_LIMIT = 190_000

# (stage, substrings of a frame's file) — the deepest frame matching wins.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("model (numpy, in the replica)", ("bench/models.py", "naive_server.py")),
    ("request parsing + validation (orjson → numpy)", ("clipper/frontend/inputs.py",)),
    (
        "RPC: ZeroMQ + msgpack (both sides)",
        ("clipper/rpc/", "zmq/", "msgpack/"),
    ),
    ("container runtime (replica, around the model)", ("clipper/container/",)),
    ("batching: queue, dispatcher, AIMD", ("clipper/batching/",)),
    ("query processor: selection, SLO, defaults", ("clipper/selection/", "clipper/cache/")),
    ("HTTP server (http/server.py + httptools)", ("clipper/http/server.py", "httptools")),
    ("frontend: routing, body, response (orjson)", ("clipper/frontend/",)),
    ("metrics", ("clipper/metrics", "prometheus")),
    ("HTTP server: uvicorn (the management port)", ("uvicorn/",)),
    ("event loop (uvloop/asyncio, in Python frames)", ("asyncio/", "uvloop/")),
]
OTHER = "other"


def parse_frame(frame: str) -> tuple[str, str]:
    """``func (file:line)`` → (func, file)."""
    if frame.endswith(")") and " (" in frame:
        func, _, rest = frame.rpartition(" (")
        return func, rest[:-1].rsplit(":", 1)[0]
    return frame, ""


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        _, path = parse_frame(frame)
        for stage, needles in STAGES:
            if any(n in path for n in needles):
                return stage
    return OTHER


def process_of(frames: list[str]) -> tuple[str, list[str]]:
    """py-spy --subprocesses puts ``process N:"cmdline"`` first."""
    kind = "server"
    while frames and frames[0].startswith("process "):
        kind = "replica" if "clipper.container" in frames[0] else "server"
        frames = frames[1:]
    return kind, frames


def shorten(stack: str) -> str:
    """The stack with each ``process N:"cmdline"`` frame as ``process server|replica``."""
    frames = stack.split(";")
    out = []
    for frame in frames:
        if frame.startswith("process "):
            frame = "process replica" if "clipper.container" in frame else "process server"
        out.append(frame)
    return ";".join(out)


def summarise(collapsed: dict[str, int]) -> dict[str, Any]:
    total = sum(collapsed.values())
    stages: collections.Counter[tuple[str, str]] = collections.Counter()
    own: collections.Counter[tuple[str, str, str]] = collections.Counter()
    procs: collections.Counter[str] = collections.Counter()
    for stack, count in collapsed.items():
        proc, frames = process_of(stack.split(";"))
        procs[proc] += count
        stages[(proc, stage_of(frames))] += count
        if frames:
            func, path = parse_frame(frames[-1])
            short = path.split("site-packages/")[-1].split("/src/")[-1]
            own[(proc, func, short)] += count
    return {
        "samples": total,
        "processes": {k: v / total for k, v in procs.items()},
        "stages": [
            {"process": p, "stage": s, "share": c / total} for (p, s), c in stages.most_common()
        ],
        "own": [
            {"process": p, "function": f, "file": path, "share": c / total}
            for (p, f, path), c in own.most_common(30)
        ],
    }


def record(pid: int, seconds: float, rate_hz: int, out: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate_hz),
            "--subprocesses",
            "--gil",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    stages = [
        [row["process"], row["stage"], f"{100 * row['share']:.1f} %"]
        for row in s["stages"]
        if row["share"] >= 0.005
    ]
    own = [
        [row["process"], f"`{row['function']}`", row["file"], f"{100 * row['share']:.1f} %"]
        for row in s["own"][:25]
    ]
    reading = ["## Reading", result["reading"].strip()] if result.get("reading") else []
    return (
        report.blocks(
            "# Hot-path profile of the query path",
            _run_line(result),
            "Reproduce: `.venv/bin/pip install py-spy`, then "
            f"`.venv/bin/python -m bench.profile_hotpath --rate {result['rate']:.0f}` "
            "(root, or `kernel.yama.ptrace_scope=0`). "
            "Raw stacks: [profile-raw.txt](profile-raw.txt).",
            "## Where the time goes, by stage",
            "A sample is charged to the deepest frame on its stack that belongs to a stage (C "
            "code is charged to its Python caller: orjson to the parser, numpy to the model, "
            "libzmq to the RPC layer). *event loop* is uvloop's own work seen from Python "
            "(`run_forever` with nothing above it): socket I/O, callbacks, timers.",
            report.table(("process", "stage", "share of samples"), "llr", stages),
            "## Top functions by own time (deepest Python frame)",
            report.table(("process", "function", "file", "share"), "lllr", own),
            *reading,
        )
        + "\n"
    )


def _run_line(result: dict[str, Any]) -> str:
    s, load = result["summary"], result["load"]
    return (
        "Generated by `python -m bench.profile_hotpath` (see its docstring). "
        f"Run {result['date_utc']}: the {result['model']} behind a Clipper server (AIMD, cache "
        f"off, server and replica pinned to one core) at {result['rate']:.0f} Poisson "
        f"queries/s from the other core ({load['achieved_rate']:.0f}/s achieved, "
        f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
        f"defaults {load['defaults']}); py-spy {result['py_spy']} "
        f"`record --subprocesses --gil --rate {result['rate_hz']}` for "
        f"{result['seconds']:.0f} s: {s['samples']} samples of Python stacks "
        f"({100 * s['processes'].get('server', 0):.0f} % in the server process, "
        f"{100 * s['processes'].get('replica', 0):.0f} % in the model replica). "
        f"CPU per query over the run: server {result['cpu_us_per_query']['server']:.0f} µs, "
        f"replica {result['cpu_us_per_query']['replicas']:.0f} µs."
    )


READING = """
The profile was taken on the 2-core machine while other guests kept it busy (the load
average was about 2 that evening; the same rate's p99 was 4.4 ms in the previous
profile, 10.4 ms here); py-spy pauses the process for each sample, so the CPU per
query above is inflated twice over (and at 1000 queries/s most batches hold one or two
queries). The shares are what matter. The light model's own arithmetic (`MLP.logits`,
`_wrapreduction`) is about 8 %.

What changed since the previous profile: the query handler no longer runs inside the
read callback. `_Connection._start` schedules it with one `call_soon`, so it runs just
after the round of I/O callbacks that read the request, and a replica's result read in
the same round is taken first. Parsing and submitting then hand the HTTP server a
`Later` (the processor's future); `QueryProcessor.predict_soon` settles it from the
dispatcher's callbacks (`when_all`: a counter and one timer) and the HTTP server
writes the response from the future's callback: no task, coroutine or waiter per
query. `_start`'s 4.6 % is `call_soon` itself (uvloop's handle, in C, charged to its
Python caller); it moved out of the read callback rather than adding work: at fixed
rates the server's CPU per query was unchanged, and with wrk the two versions served
the same (docs/benchmarks.md).

- **HTTP server, 22 %** (`h1.py` and httptools, `_start` included). Most of it is the
  kernel's work seen from Python: `_write` is the `send` system call, `data_received`
  the parse plus the `recv`.
- **RPC, 18 % in the server and 12 % in the replica**: per batch, not per query, so it
  shrinks as batches grow. ZeroMQ's I/O threads (not visible to py-spy) add two thread
  switches each way; `ipc://` instead of TCP loopback saved 5 of 59 µs per round trip
  in a bare test, not worth a second endpoint.
- **Request parsing, 12 %** (`_flat_input`: simdjson into a buffer, 8-20 µs for 784
  numbers, warm or cold). The gain left is a binary input path (the Open Inference
  Protocol's binary tensor extension is served under `/v2` already).
- **Query processor 11 % and batching 9 %**: per query the processor's future, four
  small closures (`when_all`'s two, the answer and its finish), one timer, a `Task`
  record and its future in the dispatcher, the prediction dataclasses. Extending the
  dispatcher's per-model deadline sweep to tasks in flight would drop the timer (~2 %).
- **Replica runtime, 10 %** (`serve_forever`, `decode_inputs`, the poll loop): per
  batch as well.

What is left is spread thin: no function but the parser holds more than 5 %, and the
path is some forty Python calls per query. On the light MLP at goodput the server and
replica together spend about 110 µs of CPU per query (`make bench-peers`), the bare
echo server 65; going much lower means leaving Python for the per-request work (a
compiled HTTP and JSON path), not trimming it, and a compiled HTTP server alone does
not get there (Granian, in Rust, served the echo workload 1.03-1.17x as fast as
uvicorn on this core; `python -m bench.http_ceiling` reruns that check).

**Compiling the hot path with mypyc: tried, not adopted** (2026-11-29). mypyc (part of
mypy, on PyPI) compiles type-annotated modules to C extensions with the normal install
and a C compiler, so it is the kind of extension the issue allows. The hot modules were
compiled in a copy of the tree and the whole server A/B-tested closed loop (no-op
model, AIMD, 64 connections, server pinned to one core; three 4 s runs per build,
alternating, twice):

| compiled | server CPU µs/query | against the interpreted build |
|---|---:|---|
| `http/server.py` (the HTTP protocol) | 52-54 | 55-58 in the runs beside it: about 5 % less |
| the selection and batching modules (`processor`, `dispatcher`, `queue`, `types`) | 57-66 | none |
| `rpc/protocol.py`, `rpc/server.py` | 55-71 | none |
| all of these and `frontend/inputs.py`, `frontend/query.py` | 88-102 | slower (below) |

mypyc checks annotated types at run time, so the compiled build also failed where a
library's stubs differ from what it returns (uvloop's `Server.sockets` is a list, not
a tuple; its `remove_reader` returns None, not a bool; httptools' `URL.query` may be
None) and where a compiled class is deep-copied (the batch-size controllers), and the
compiled `_flat_input` returned None for every body, so each query took the slower
general parser (about 40 µs more). The per-query work left is in C already
(httptools, simdjson, orjson, numpy, libzmq, uvloop) or is attribute traffic and calls
that mypyc speeds up little; 5 % on one module does not pay for a C compiler in every
install and a second build of every module to test.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_hotpath",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=MODEL_KEYS, default="mlp")
    parser.add_argument("--rate", type=float, default=800.0, help="Poisson queries/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds sampled")
    parser.add_argument("--rate-hz", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--no-docs", action="store_true", help="print, do not write docs/")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    cpus = CpuPlan.choose(True)
    cpus.pin_generator()
    raw_path = Path(f"/tmp/clipper-profile-{time.time_ns()}.txt")
    flags = [*batching.COMMON_FLAGS, *batching.AIMD]
    runner = asyncio.Runner(loop_factory=loop_factory())
    try:
        with BenchServer(flags, cpus, log) as server:
            app = f"profile-{args.model}"
            import cloudpickle

            from . import naive_server

            cloudpickle.register_pickle_by_value(naive_server)
            try:
                server.deploy(app, make_model(args.model), slo_ms=20.0)
            finally:
                cloudpickle.unregister_pickle_by_value(naive_server)
            assert server.pid is not None
            workload = Workload.predict(
                server.host, server.query_port, app, batching.models.mlp_inputs(500)
            )
            pool = Pool(server.host, server.query_port)
            spy_error: list[BaseException] = []

            async def go() -> loadgen.LoadResult:
                loop = asyncio.get_running_loop()
                load = asyncio.create_task(
                    loadgen.run_open(pool, workload, args.rate, args.duration + 4, warmup_s=1.0)
                )
                await asyncio.sleep(2.0)
                try:
                    await loop.run_in_executor(
                        None, record, server.pid, args.duration, args.rate_hz, raw_path
                    )
                except (OSError, subprocess.CalledProcessError) as exc:
                    spy_error.append(exc)
                return await load

            cpu0 = server.cpu()
            try:
                result_load = runner.run(go())
            finally:
                pool.close()
            cpu1 = server.cpu()
            if spy_error:
                err = spy_error[0]
                detail = getattr(err, "stderr", b"") or b""
                raise SystemExit(f"py-spy failed: {err} {detail.decode(errors='replace')}")
            log(result_load.summary())
    finally:
        runner.close()
    assert not pid_alive(server.pid or 0)
    collapsed: dict[str, int] = {}
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            collapsed[stack] = collapsed.get(stack, 0) + int(count)
    raw_path.unlink()
    answered = max(1, result_load.answered_total)
    spy_version = subprocess.run(
        [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "--version"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"mlp": "light MLP", "mlp-heavy": "heavy MLP", "noop": "no-op model"}[args.model],
        "rate": args.rate,
        "rate_hz": args.rate_hz,
        "seconds": args.duration,
        "py_spy": spy_version.removeprefix("py-spy "),
        "load": result_load.to_dict(),
        "cpu_us_per_query": {
            k: (cpu1[k] - cpu0[k]) / answered * 1e6 for k in ("server", "replicas")
        },
        "summary": summarise(collapsed),
        "reading": READING,
    }
    text = render(result)
    print(text)
    print(json.dumps(result["summary"]["stages"], indent=1))
    if not args.no_docs:
        DOC.write_text(text)
        header = (
            "# py-spy record --format raw (collapsed stacks: frames;... count), "
            f"{result['date_utc']}"
            f", {result['model']} at {args.rate:.0f}/s; the most frequent stacks first\n"
        )
        out, size = [header], len(header)
        for stack, count in sorted(collapsed.items(), key=lambda kv: -kv[1]):
            line = f"{shorten(stack)} {count}\n"
            if size + len(line) > RAW_LIMIT:
                break
            out.append(line)
            size += len(line)
        RAW.write_text("".join(out))
        log(f"wrote {DOC.relative_to(ROOT)} and {RAW.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
