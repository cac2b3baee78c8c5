"""The Open Inference Protocol over gRPC beside HTTP (``make bench-grpc``), in one run.

One Clipper server (AIMD batching, cache off, ``--grpc-port``) serves one app
(a no-op model by default, ``--model mlp`` for the light MLP: 784 numbers
per query either way) at a 20 ms SLO. Each transport queries the same app
with the same inputs, one query per request:

- ``predict``: Clipper's own ``POST /{app}/predict``, JSON ``{"input": [...]}``;
- ``v2-json``: ``POST /v2/models/{app}/infer`` with the tensor as JSON ``data``
  (what MLServer's clients send);
- ``v2-binary``: the same with the binary tensor extension (raw FP64 bytes after
  the JSON header: what ``tritonclient.http`` sends by default);
- ``grpc``: ``ModelInfer`` on the gRPC port with ``raw_input_contents`` (what
  ``tritonclient.grpc`` sends), from a ``grpc.aio`` client on one channel.

For each, the goodput: the highest open-loop Poisson rate whose client-side
p99 is within the SLO with no default output and no error (the search of
bench/batching.py, its probes and their checks for other processes' CPU
use). The generator (bench/loadgen.py's open loop; for gRPC, its
connections are streams of one channel) is pinned to one core, the server
and its replica to the other. Transports alternate in order from repeat to
repeat; medians over ``--repeats``; the generator's CPU share of its core at
the passing rate is reported (near 100 %, the generator may be the limit),
and the server process's CPU time per query at that rate.

Writes bench/results/grpc.json and the ``grpc`` section of docs/benchmarks.md
(``--no-docs``: print only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from typing import Any

import cloudpickle
import numpy as np

from . import batching, models, naive_server, report
from .batching import Bench, Measurement, Options
from .harness import RESULTS, BenchServer, free_port, machine_info, write_doc_section
from .loadgen import DEFAULT_MARKER, Connection, Pool, Workload, post_head
from .naive_server import make_model

SLO_MS = 20.0
TRANSPORTS = ("predict", "v2-json", "v2-binary", "grpc")
LABELS = {
    "predict": "HTTP `/{app}/predict` (JSON)",
    "v2-json": "HTTP `/v2` infer (JSON data)",
    "v2-binary": "HTTP `/v2` infer (binary tensor)",
    "grpc": "gRPC `ModelInfer` (raw contents)",
}
# /v2 and gRPC mark default outputs in the response's parameters.
V2_DEFAULT = b'"clipper_default"'
GRPC_DEFAULT = b"clipper_default"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class V2Connection(Connection):
    """An HTTP connection whose answers count a ``clipper_default`` as a default."""

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        status, payload = await super().request(head, body)
        if V2_DEFAULT in payload:
            payload += DEFAULT_MARKER
        return status, payload


class V2Pool(Pool):
    async def warm(self, count: int) -> list[Connection]:
        while len(self.conns) < count:
            self.conns.append(V2Connection(self.host, self.port))
        return await super().warm(count)


class GrpcStream:
    """One concurrent call slot on a shared channel, shaped as a loadgen connection:
    ``request(head, body)`` sends ``body`` (a serialised ModelInferRequest)."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        import grpc

        try:
            payload: bytes = await self.call(body)
        except grpc.aio.AioRpcError as exc:
            return 500 + exc.code().value[0], (exc.details() or "").encode()
        if GRPC_DEFAULT in payload:
            payload += DEFAULT_MARKER
        return 200, payload

    def close(self) -> None:
        pass


class GrpcPool:
    """``count`` call slots over one ``grpc.aio`` channel (as one tritonclient)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = f"{host}:{port}"
        self.channel: Any = None
        self.streams: list[GrpcStream] = []

    async def warm(self, count: int) -> list[GrpcStream]:
        import grpc

        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.target)
            await self.channel.channel_ready()
            call = self.channel.unary_unary(MODEL_INFER)  # bytes in, bytes out
            self.streams = [GrpcStream(call) for _ in range(count)]
        while len(self.streams) < count:
            self.streams.append(GrpcStream(self.streams[0].call))
        return self.streams[:count]

    async def aclose(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        self.channel = None

    def close(self) -> None:
        self.streams.clear()


def grpc_requests(app: str, inputs: list[list[float]]) -> list[tuple[bytes, bytes]]:
    from clipper.frontend.proto import grpc_predict_v2_pb2 as pb

    out = []
    for x in inputs:
        msg = pb.ModelInferRequest(model_name=app)
        msg.inputs.add(name="input", datatype="FP64", shape=[1, len(x)])
        msg.raw_input_contents.append(np.asarray([x], dtype="<f8").tobytes())
        out.append((b"", msg.SerializeToString()))
    return out


def v2_binary_requests(
    host: str, port: int, app: str, inputs: list[list[float]]
) -> list[tuple[bytes, bytes]]:
    out = []
    path = f"/v2/models/{app}/infer"
    for x in inputs:
        raw = np.asarray([x], dtype="<f8").tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, len(x)],
                        "datatype": "FP64",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            },
            separators=(",", ":"),
        ).encode()
        head = post_head(host, port, path, len(header) + len(raw)).replace(
            b"\r\n\r\n", f"\r\nInference-Header-Content-Length: {len(header)}\r\n\r\n".encode()
        )
        out.append((head, header + raw))
    return out


class Requests:
    """A workload of prepared (head, body) pairs (what ``loadgen.run_open`` reads)."""

    def __init__(self, requests: list[tuple[bytes, bytes]]) -> None:
        self.requests = requests


def transport(
    name: str, server: BenchServer, grpc_port: int, app: str, inputs: list[list[float]]
) -> tuple[Any, Any]:
    """(pool, workload) of one transport."""
    host, port = server.host, server.query_port
    if name == "predict":
        return Pool(host, port), Workload.predict(host, port, app, inputs)
    if name == "v2-json":
        return V2Pool(host, port), Workload.v2_infer(host, port, app, inputs, datatype="FP64")
    if name == "v2-binary":
        return V2Pool(host, port), Requests(v2_binary_requests(host, port, app, inputs))
    return GrpcPool(host, grpc_port), Requests(grpc_requests(app, inputs))


def check_answers(bench: Bench, pool: Any, workload: Any, name: str) -> None:
    """One request of the transport answers 200 with a model output."""

    async def one() -> tuple[int, bytes]:
        (conn,) = await pool.warm(1)
        return await conn.request(*workload.requests[0])  # type: ignore[no-any-return]

    status, payload = bench.runner.run(one())
    if status != 200 or DEFAULT_MARKER in payload:
        raise RuntimeError(f"{name}: the check request got {status}: {payload[:300]!r}")


def render(result: dict[str, Any]) -> str:
    head = (
        "transport",
        "goodput at 20 ms (queries/s, median)",
        "per repeat",
        "server CPU µs/query",
        "generator CPU",
    )
    rows = []
    for name in result["transports"]:
        runs = [r for r in result["runs"] if r["transport"] == name]
        rows.append(
            [
                LABELS[name],
                f"{result['goodput_median'][name]:.0f}",
                ", ".join(f"{r['goodput']:.0f}" for r in runs),
                ", ".join(f"{r.get('server_cpu_us', 0.0):.0f}" for r in runs),
                ", ".join(f"{r['generator_cpu']:.0%}" for r in runs),
            ]
        )
    g, v2 = result["goodput_median"]["grpc"], result["goodput_median"]["v2-binary"]
    return report.blocks(
        "## The Open Inference Protocol over gRPC beside HTTP (generated by `make bench-grpc`)",
        f"Run {result['when']} on {result['machine']}; {result['cpus']}. One Clipper server "
        f"(AIMD, cache off, `--grpc-port`), the {result['model']} model (784 FP64 numbers per "
        f"query, one query per request), SLO {SLO_MS:.0f} ms. Goodput: the highest open-loop "
        "Poisson rate with p99 within the SLO, no default output and no error (bench/batching.py's "
        f"search, {result['probe_s']} s probes). {len(result['repeats'])} repeat(s), "
        "transports alternating in order; generator CPU: its share of its core at the passing "
        "rate (gRPC: a `grpc.aio` client on one channel; HTTP: bench/loadgen.py's raw HTTP/1.1); "
        "server CPU: the server process's (every thread, the replica's apart) per query at "
        "the passing rate.",
        report.table(head, "lrlll", rows),
        f"gRPC / HTTP `/v2` (binary), medians: **{g / v2:.2f}**." if v2 else "",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_oip", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=("noop", "mlp"), default="noop")
    parser.add_argument("--probe-s", type=float, default=1.5)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--no-docs", action="store_true", help="print, do not write docs/")
    opts = parser.parse_args(argv)
    names = [t for t in opts.transports.split(",") if t]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    bench = Bench(Options(slo_ms=SLO_MS, probe_s=opts.probe_s, repeats=opts.repeats), log)
    inputs = [[float(v) for v in x] for x in models.mlp_inputs(200)]
    grpc_port = free_port()
    flags = [*batching.COMMON_FLAGS, *batching.AIMD, "--grpc-port", str(grpc_port)]
    runs: list[dict[str, Any]] = []
    repeats: list[dict[str, float]] = []
    hints: dict[str, float] = {}
    with BenchServer(flags, bench.cpus, log) as server:
        cloudpickle.register_pickle_by_value(naive_server)
        try:
            server.deploy("oip", make_model(opts.model), slo_ms=SLO_MS)
        finally:
            cloudpickle.unregister_pickle_by_value(naive_server)
        for i in range(opts.repeats):
            order = names[i % len(names) :] + names[: i % len(names)]
            goodputs: dict[str, float] = {}
            for name in order:
                pool, workload = transport(name, server, grpc_port, "oip", inputs)
                try:
                    check_answers(bench, pool, workload, name)
                    m = Measurement(opts.model, name, i + 1, 0.0, 0.0)
                    start = hints.get(name, 1000.0)
                    m.goodput = bench.search(
                        server, pool, workload, "oip", start, m, hinted=name in hints
                    )
                finally:
                    if isinstance(pool, GrpcPool):
                        bench.runner.run(pool.aclose())  # on the loop that made it
                    pool.close()
                hints[name] = max(m.goodput, 100.0)
                passing = [p for p in m.probes if p.passed and p.rate == m.goodput]
                cpu = passing[-1].load["generator_cpu_util"] if passing else 0.0
                server_us = passing[-1].server_cpu_per_query_us if passing else 0.0
                goodputs[name] = m.goodput
                runs.append(
                    {
                        "transport": name,
                        "repeat": i + 1,
                        "goodput": m.goodput,
                        "generator_cpu": cpu,
                        "server_cpu_us": server_us,
                        "probes": [asdict(p) for p in m.probes],
                    }
                )
                log(f"repeat {i + 1} {name}: goodput {m.goodput:.0f}/s (generator CPU {cpu:.0%})")
            repeats.append(goodputs)
    info = machine_info(bench.cpus)
    machine = f"{info['cpu_model']} ({info['cpu_count']} cores), Python {info['python']}"
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "machine": machine,
        "commit": info["git"].get("measured", "?"),
        "cpus": bench.cpus.note,
        "model": opts.model,
        "probe_s": opts.probe_s,
        "transports": names,
        "repeats": repeats,
        "runs": [{k: v for k, v in r.items() if k != "probes"} for r in runs],
        "goodput_median": {n: statistics.median(r[n] for r in repeats) for n in names},
    }
    text = render(result)
    print(text)
    if not opts.no_docs:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "grpc.json").write_text(json.dumps(result, indent=1))
        write_doc_section("grpc", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
