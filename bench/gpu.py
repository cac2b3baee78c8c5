"""The GPU benchmark (``make bench-gpu``): a ResNet-50 served from a GPU, beside the CPU.

One run, one real Clipper server, measures side by side:

- ``cpu``: the PyTorch model on the CPU (``devices="cpu"``), AIMD batching;
- ``gpu-b1``: on the GPU without batching (batch size 1);
- ``gpu-aimd``, ``gpu-quantile``: on the GPU with AIMD, the quantile controller;
- ``gpu-aimd-delay``: AIMD with delayed batching (``max_batch_delay_ms``);
- ``gpu-fp16``: as the last, in half precision (``precision="fp16"``);
- ``onnx``: its ONNX export through ONNX Runtime placed on the GPU (the CUDA
  provider when the installed onnxruntime has it, else the CPU: the result
  names the provider that ran).

For each: goodput (the highest Poisson arrival rate whose client-side p99 is
within the 100 ms SLO with no default output, by a short search of open-loop
probes, each after an unmeasured warm-up), p50/p99 at a low load, the batch
sizes the controller chose (mean during the best passing probe, and its
maximum), and the GPU's utilisation meanwhile (read from the server's own
``gpus`` status, i.e. the GPU gauges). The model is
``torchvision.models.resnet50(weights=None)`` (random weights: nothing is
downloaded), queries are 3x224x224 uint8 images sent as base64 ``bytes``
(the model casts and scales them on its device, one copy per batch).

Modes:

- default: the measurement above, for a GPU machine (under 6 minutes);
  writes bench/results/gpu.json and the GPU section of docs/benchmarks.md.
- ``--dry-run``: on any machine, in seconds per case: a tiny CNN on 32x32
  images, every case run on the CPU (``cuda`` becomes ``cpu``), short
  probes; writes bench/results/gpu-dry-run.json only. Proves the script
  works end to end before a GPU run spends device time.
- ``--simulate-ms MS``: a model whose batch takes MS milliseconds whatever
  its size (a sleep: what a GPU's nearly flat batch latency looks like), on
  the CPU, to check on a machine without GPU that the controllers find
  large batches; writes bench/results/gpu-simulated.json.
- ``--render FILE``: rewrite the docs section from a results file (for a
  run whose files came back from another machine).

On a GPU machine without this project's dependencies, carry them as wheels
(see docs/howto/gpu.md, "Measuring"): ``make gpu-wheels`` here, then run
``bench/gpu_run.sh`` there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import loadgen
from .harness import (
    BENCHMARKS_DOC,
    RESULTS,
    BenchServer,
    CpuPlan,
    loop_factory,
    machine_info,
    wait_for,
    write_doc_section,
)
from .loadgen import Pool, Workload

SECTION = "gpu"
SLO_MS = 100.0
FLAGS = ("--cache-bytes", "0", "--log-level", "WARNING", "--batching", "aimd")


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    model: str  # "torch", "onnx" or "flat" (the sleep-per-batch stand-in)
    devices: str
    precision: str | None = None
    batching: str = "aimd"
    batch_size: int = -1  # 1: no batching
    delay_ms: float = 0.0


CASES = (
    Case("cpu", "CPU, AIMD", "torch", "cpu"),
    Case("gpu-b1", "GPU, batch size 1", "torch", "cuda", batching="fixed", batch_size=1),
    Case("gpu-aimd", "GPU, AIMD", "torch", "cuda"),
    Case("gpu-quantile", "GPU, quantile", "torch", "cuda", batching="quantile"),
    Case("gpu-aimd-delay", "GPU, AIMD + 5 ms delay", "torch", "cuda", delay_ms=5.0),
    Case("gpu-fp16", "GPU fp16, AIMD + 5 ms delay", "torch", "cuda", "fp16", delay_ms=5.0),
    Case("onnx", "ONNX Runtime (GPU if its CUDA provider is there), AIMD", "onnx", "cuda"),
)


@dataclass
class Options:
    image: int = 224
    dry_run: bool = False
    simulate_ms: float | None = None
    cpu: bool = False  # every case on the CPU
    probe_s: float = 2.0
    warmup_s: float = 0.75
    low_s: float = 4.0
    max_probes: int = 6
    budget_s: float = 300.0  # the measurement stops starting cases past this
    cases: tuple[str, ...] = tuple(c.key for c in CASES)
    connections: int = 256
    docs: bool = True


@dataclass
class Result:
    case: dict[str, Any]
    runtime: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    capacity_qps: float = 0.0
    goodput_qps: float = 0.0
    probes: list[dict[str, Any]] = field(default_factory=list)
    low_load: dict[str, Any] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)
    gpu_utilization: float | None = None
    gpu_memory_used_gib: float | None = None
    skipped: str | None = None


# -- the models (shipped by value: the replicas cannot import bench) -----------------------


def tiny_cnn() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )


def resnet50() -> Any:
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None)


def make_classify(size: int) -> Callable[[Any, Any], Any]:
    """``func(model, inputs)`` for uint8 images given as bytes: one copy to the
    model's device per batch, cast and scaled there; the top class per image."""

    def classify(model: Any, inputs: Any) -> Any:
        import numpy as np
        import torch

        param = next(model.parameters())
        n = len(inputs)
        pixels = np.frombuffer(b"".join(inputs), dtype=np.uint8).reshape(n, 3, size, size)
        batch = torch.from_numpy(pixels.copy()).to(param.device)
        return model(batch.to(param.dtype).div_(255)).argmax(dim=1)

    return classify


def make_flat(ms: float) -> Callable[[Any], list[int]]:
    """A batch takes ``ms`` whatever its size (a GPU's latency curve, flattened)."""

    def flat(inputs: Any) -> list[int]:
        time.sleep(ms / 1000)
        return [0] * len(inputs)

    return flat


def onnx_export(model: Any, size: int) -> bytes:
    """The model behind a cast and a reshape: int32 [N, 3*size*size] in, scores out."""
    import torch

    class Flat(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x.float().view(-1, 3, size, size) / 255)

    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
        torch.onnx.export(
            Flat(model).eval(),
            (torch.zeros(2, 3 * size * size, dtype=torch.int32),),
            out,  # type: ignore[arg-type]  # a file object works too
            input_names=["x"],
            output_names=["scores"],
            dynamic_axes={"x": {0: "N"}, "scores": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    return out.getvalue()


# -- the run ---------------------------------------------------------------------------


class Bench:
    def __init__(self, opts: Options, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.log = log
        self.runner = asyncio.Runner(loop_factory=loop_factory())
        self.started = time.monotonic()
        self.size = opts.image
        self._torch_model: Any = None
        self._onnx: bytes | None = None

    def torch_model(self) -> Any:
        if self._torch_model is None:
            self._torch_model = tiny_cnn() if self.opts.dry_run else resnet50()
        return self._torch_model

    def workload(self, server: BenchServer, app: str, kind: str) -> Workload:
        import numpy as np

        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, 3 * self.size**2, dtype=np.uint8) for _ in range(32)]
        if kind == "onnx":
            inputs: list[Any] = [img.astype(int).tolist() for img in images]
        else:
            inputs = [base64.b64encode(img.tobytes()).decode() for img in images]
        return Workload.predict(server.host, server.query_port, app, inputs)

    def deploy(self, server: BenchServer, case: Case) -> str:
        from clipper.deployers.onnx import deploy_onnx_model
        from clipper.deployers.python import deploy_python_closure
        from clipper.deployers.pytorch import deploy_pytorch_model

        app = case.key
        devices = "cpu" if self.opts.cpu else case.devices
        options: dict[str, Any] = {"devices": devices, "batching": case.batching}
        if case.precision:
            options["precision"] = case.precision
        if case.delay_ms:
            options["max_batch_delay_ms"] = case.delay_ms
        input_type = "integers" if case.model == "onnx" else "bytes"
        conn = server.conn
        conn.register_application(app, input_type, "-1", int(SLO_MS * 1000))
        common: dict[str, Any] = dict(batch_size=case.batch_size, options=options, timeout=600)
        if case.model == "flat":
            assert self.opts.simulate_ms is not None
            flat = make_flat(self.opts.simulate_ms)
            deploy_python_closure(conn, app, "1", input_type, flat, **common)
        elif case.model == "onnx":
            if self._onnx is None:
                self._onnx = onnx_export(self.torch_model(), self.size)
            deploy_onnx_model(conn, app, "1", input_type, self._onnx, **common)
        else:
            classify = make_classify(self.size)
            deploy_pytorch_model(conn, app, "1", input_type, classify, self.torch_model(), **common)
        conn.link_model_to_app(app, app)
        wait_for(
            lambda: any(r["model_name"] == app and r["live"] for r in server.status()["replicas"]),
            300,
            f"a live replica of {app}",
        )
        return app

    def counters(self, server: BenchServer, app: str) -> dict[str, Any]:
        status = server.status()
        model: dict[str, Any] = next((m for m in status["models"] if m["model"] == f"{app}:1"), {})
        batches = model.get("batches", 0)
        return {
            "batches": batches,
            "tasks": model.get("mean_batch_size", 0.0) * batches,
            "max_batch_size": model.get("max_batch_size", 0),
            "gpus": status.get("gpus") or [],
        }

    def probe(self, server: BenchServer, pool: Pool, workload: Workload, app: str, rate: float,
              secs: float) -> dict[str, Any]:  # fmt: skip
        """One open-loop run; with the batch sizes and GPU samples taken meanwhile."""
        samples: list[list[dict[str, Any]]] = []
        before = self.counters(server, app)

        async def run() -> loadgen.LoadResult:
            async def sample() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    gpus = await asyncio.to_thread(lambda: server.status().get("gpus") or [])
                    samples.append(gpus)

            sampler = asyncio.create_task(sample())
            try:
                return await loadgen.run_open(
                    pool,
                    workload,
                    rate,
                    secs,
                    connections=self.opts.connections,
                    warmup_s=self.opts.warmup_s,
                )
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler

        load = self.runner.run(run())
        after = self.counters(server, app)
        batches = after["batches"] - before["batches"]
        utils = [g["utilization"] for s in samples for g in s]
        memory = [g["memory_used_bytes"] for s in samples for g in s]
        passed = (
            load.p99_ms <= SLO_MS
            and load.defaults == 0
            and load.errors == 0
            and load.unsent == 0
            and load.completed > 0
        )
        return {
            "rate": rate,
            "passed": passed,
            "achieved": load.achieved_rate,
            "p50_ms": load.p50_ms,
            "p99_ms": load.p99_ms,
            "defaults": load.defaults,
            "errors": load.errors,
            "mean_batch_size": (after["tasks"] - before["tasks"]) / batches if batches else 0.0,
            "max_batch_size": after["max_batch_size"],
            "gpu_utilization": statistics.fmean(utils) if utils else None,
            "gpu_memory_used_gib": max(memory) / 2**30 if memory else None,
        }

    def measure(self, server: BenchServer, case: Case) -> Result:
        result = Result(case=asdict(case))
        t0 = time.monotonic()
        app = self.deploy(server, case)
        (replica,) = [r for r in server.status()["replicas"] if r["model_name"] == app]
        result.runtime = dict(replica.get("runtime") or {})
        result.device = replica.get("device")
        self.log(f"  {case.key}: live in {time.monotonic() - t0:.0f}s on {result.runtime}")
        workload = self.workload(server, app, case.model)
        pool = Pool(server.host, server.query_port)
        try:
            # Capacity: closed loop, many clients; goodput is searched below it.
            clients = self.opts.connections
            closed = self.runner.run(loadgen.run_closed(pool, workload, clients, self.opts.probe_s))
            # Answers with an output (a default comes back at once: not capacity).
            capacity = (closed.ok - closed.defaults) / closed.duration_s
            result.capacity_qps = capacity
            self.log(f"    capacity {capacity:.0f}/s (p99 {closed.p99_ms:.0f} ms)")
            # Search: up by half again while probes pass, then halve the interval.
            low, high = 0.0, None
            best: dict[str, Any] | None = None
            rate = max(1.0, capacity * 0.8)
            for _ in range(self.opts.max_probes):
                probe = self.probe(server, pool, workload, app, rate, self.opts.probe_s)
                result.probes.append(probe)
                self.log(
                    f"    {rate:.0f}/s: p99 {probe['p99_ms']:.0f} ms, batch "
                    f"{probe['mean_batch_size']:.1f} (max {probe['max_batch_size']}) "
                    f"{'ok' if probe['passed'] else 'MISS'}"
                )
                if probe["passed"]:
                    low, best = rate, probe
                else:
                    high = rate
                if high is not None and high - low < 0.1 * high:
                    break
                rate = rate * 1.5 if high is None else (low + high) / 2
            result.goodput_qps = low
            if best is not None:
                result.batch = {
                    "mean_at_goodput": round(best["mean_batch_size"], 2),
                    "max_at_goodput": best["max_batch_size"],
                }
                result.gpu_utilization = best["gpu_utilization"]
                result.gpu_memory_used_gib = best["gpu_memory_used_gib"]
            low_rate = max(2.0, 0.1 * (result.goodput_qps or capacity))
            quiet = self.probe(server, pool, workload, app, low_rate, self.opts.low_s)
            result.low_load = {
                k: quiet[k] for k in ("rate", "p50_ms", "p99_ms", "mean_batch_size", "defaults")
            }
        finally:
            pool.close()
            server.conn.set_num_replicas(app, 0)  # its GPU memory back for the next case
        return result

    def run(self) -> list[Result]:
        cases = [c for c in CASES if c.key in self.opts.cases]
        if self.opts.simulate_ms is not None:
            cases = [replace(c, model="flat") for c in cases if c.model != "onnx"]
        results: list[Result] = []
        # The model may use every core (the harness's default is one BLAS thread).
        cores = str(os.cpu_count() or 1)
        threads = {k: cores for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        plan = CpuPlan(None, None, "not pinned")
        with BenchServer(list(FLAGS), plan, self.log, env=threads) as server:
            for case in cases:
                elapsed = time.monotonic() - self.started
                if elapsed > self.opts.budget_s:
                    self.log(f"  {case.key}: skipped, {elapsed:.0f}s spent of the budget")
                    results.append(Result(case=asdict(case), skipped="time budget"))
                    continue
                try:
                    results.append(self.measure(server, case))
                except Exception as exc:  # one case failing must not lose the others
                    self.log(f"  {case.key}: failed: {exc}")
                    results.append(Result(case=asdict(case), skipped=f"failed: {exc}"[:500]))
        return results


# -- results -----------------------------------------------------------------------------


def gpu_name() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        return out.splitlines()[0] if out else None
    return None


def ratios(results: list[Result]) -> dict[str, float | None]:
    by = {r.case["key"]: r.goodput_qps for r in results if not r.skipped}

    def ratio(a: str, b: str) -> float | None:
        return round(by[a] / by[b], 2) if by.get(a) and by.get(b) else None

    batched = max((by[k] for k in ("gpu-aimd", "gpu-aimd-delay", "gpu-quantile") if k in by),
                  default=None)  # fmt: skip
    best_gpu = max((v for k, v in by.items() if k.startswith("gpu-")), default=None)
    return {
        "gpu_batched_over_b1": (
            round(batched / by["gpu-b1"], 2) if batched is not None and by.get("gpu-b1") else None
        ),
        "gpu_best_over_cpu": (
            round(best_gpu / by["cpu"], 2) if best_gpu is not None and by.get("cpu") else None
        ),
        "delay_over_aimd": ratio("gpu-aimd-delay", "gpu-aimd"),
        "fp16_over_fp32": ratio("gpu-fp16", "gpu-aimd-delay"),
    }


def render(result: dict[str, Any]) -> str:
    lines = ["## GPU replicas (generated by `make bench-gpu`)", ""]
    if result.get("pending"):
        lines += [
            "Pending a GPU machine: `make bench-gpu` has not run on one yet, so there are no",
            "figures here. The script (bench/gpu.py) is ready: it serves a ResNet-50 built from",
            "its architecture with random weights, and its ONNX export, on the CPU and on the",
            "GPU at batch size 1, with AIMD, the quantile controller and delayed batching, and",
            "records goodput under a 100 ms SLO, p50/p99 at low load, the batch sizes chosen",
            "and the GPU's utilisation (docs/howto/gpu.md says how to run it).",
        ]
        return "\n".join(lines)
    machine = result["machine"]
    mode = result["mode"]
    lines += [
        f"Measured {machine['date_utc']} on {result.get('gpu') or 'no GPU'} "
        f"({machine['cpu_count']} CPUs: {machine['cpu_model']}); mode: {mode}; "
        f"images {result['image']}x{result['image']}, SLO {SLO_MS:g} ms, "
        f"code {machine['git'].get('measured', '?')}.",
        "",
        "| case | runs on | goodput (q/s) | p50 / p99 at low load (ms) | batch mean / max "
        "at goodput | GPU util. |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        case = r["case"]
        if r.get("skipped"):
            lines.append(f"| {case['label']} | - | {r['skipped']} | | | |")
            continue
        rt = r.get("runtime") or {}
        where = " ".join(
            str(x) for x in (rt.get("device") or r.get("device"), rt.get("provider"),
                             rt.get("precision")) if x
        )  # fmt: skip
        if rt.get("warning"):
            where += " (fallback)"
        low = r.get("low_load") or {}
        batch = r.get("batch") or {}
        util = r.get("gpu_utilization")
        lines.append(
            f"| {case['label']} | {where or '?'} | {r['goodput_qps']:.0f} | "
            f"{low.get('p50_ms', 0):.1f} / {low.get('p99_ms', 0):.1f} | "
            f"{batch.get('mean_at_goodput', '-')} / {batch.get('max_at_goodput', '-')} | "
            f"{'-' if util is None else f'{util:.0%}'} |"
        )
    rs = result.get("ratios") or {}

    def times(key: str) -> str:
        value = rs.get(key)
        return "n/a" if value is None else f"{value}x"

    lines += [
        "",
        f"Batching on the GPU over batch size 1: {times('gpu_batched_over_b1')} (target 10x); "
        f"the GPU over the CPU: {times('gpu_best_over_cpu')} (target 10x); delayed batching "
        f"over AIMD alone: {times('delay_over_aimd')}; fp16 over fp32: "
        f"{times('fp16_over_fp32')}.",
    ]
    if mode == "simulated":
        lines += [
            "",
            f"Simulated: every case ran on the CPU, a model taking {result['simulate_ms']:g} ms "
            "a batch whatever its size standing in for the GPU's nearly flat batch latency.",
        ]
    return "\n".join(lines)


def write(result: dict[str, Any], opts: Options, out_dir: Path | None) -> Path:
    name = "gpu.json"
    if opts.dry_run:
        name = "gpu-dry-run.json"
    elif opts.simulate_ms is not None:
        name = "gpu-simulated.json"
    text = json.dumps(result, indent=2, default=str) + "\n"
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_text(text)
    if opts.docs and not opts.dry_run and opts.simulate_ms is None:
        write_doc_section(SECTION, render(result), BENCHMARKS_DOC)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny model, CPU, seconds a case")
    parser.add_argument("--simulate-ms", type=float, help="a flat-cost model (ms per batch)")
    parser.add_argument("--cpu", action="store_true", help="run every case on the CPU")
    parser.add_argument("--cases", help="comma-separated case keys (default: all)")
    parser.add_argument("--image", type=int, help="image side in pixels (default 224)")
    parser.add_argument("--budget-s", type=float, help="stop starting cases after this")
    parser.add_argument("--out", type=Path, help="also write the results file here")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md")
    parser.add_argument("--render", type=Path, help="rewrite the docs section from FILE")
    parser.add_argument("--pending", action="store_true", help="write the pending section")
    args = parser.parse_args(argv)
    if args.pending:  # the section before a GPU machine ran it
        write_doc_section(SECTION, render({"pending": True}), BENCHMARKS_DOC)
        return 0
    if args.render:
        result = json.loads(args.render.read_text())
        if result.get("mode") == "gpu":
            (RESULTS / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        write_doc_section(SECTION, render(result), BENCHMARKS_DOC)
        return 0
    opts = Options(docs=not args.no_docs)
    if args.dry_run:
        opts = replace(opts, dry_run=True, cpu=True, image=32, probe_s=0.6, warmup_s=0.3,
                       low_s=0.6, max_probes=2, connections=32)  # fmt: skip
    if args.simulate_ms is not None:
        opts = replace(opts, simulate_ms=args.simulate_ms, cpu=True, image=args.image or 32)
    if args.cpu:
        opts = replace(opts, cpu=True)
    if args.cases:
        opts = replace(opts, cases=tuple(args.cases.split(",")))
    if args.image:
        opts = replace(opts, image=args.image)
    if args.budget_s:
        opts = replace(opts, budget_s=args.budget_s)
    mode = "dry-run" if opts.dry_run else "simulated" if opts.simulate_ms is not None else "gpu"
    if mode == "gpu" and not opts.cpu and gpu_name() is None:
        parser.error("no GPU found (nvidia-smi): use --dry-run, --simulate-ms or --cpu")
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {msg}", flush=True)

    bench = Bench(opts, log)
    log(f"bench-gpu ({mode}): {', '.join(opts.cases)}")
    results = bench.run()
    result = {
        "mode": mode,
        "gpu": gpu_name(),
        "image": opts.image,
        "slo_ms": SLO_MS,
        "simulate_ms": opts.simulate_ms,
        "options": asdict(opts),
        "machine": machine_info(CpuPlan(None, None, "not pinned")),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "results": [asdict(r) for r in results],
        "ratios": ratios(results),
        "wall_s": round(time.monotonic() - started, 1),
    }
    path = write(result, opts, args.out)
    log(f"wrote {path}; ratios {result['ratios']}")
    failed = [r.case["key"] for r in results if r.skipped and r.skipped != "time budget"]
    return 1 if failed else 0


def _version(module: str) -> str | None:
    with contextlib.suppress(ImportError):
        return str(__import__(module).__version__)
    return None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
