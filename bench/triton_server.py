"""A batching peer: Triton Inference Server through PyTriton, its dynamic batcher.

PyTriton starts NVIDIA's Triton Inference Server (``tritonserver``, C++, the
binary its wheel ships) and binds a Python function to a model in it: Triton
parses the HTTP request, queues it in its dynamic batcher (``max_batch_size``,
``max_queue_delay_microseconds`` from the command line), hands each batch to
its Python backend stub process, which passes it (shared memory, ZeroMQ) to
this process, where ``infer`` calls the model once on the stacked batch. So a
query crosses three processes: ``tritonserver``, the stub, this one; the whole
tree is pinned to the server's core by ``bench/peers.py``. CPU only: no GPU
metrics, no CUDA memory pool.

It speaks the Open Inference Protocol (KServe V2) over HTTP, like MLServer:
``POST /v2/models/<name>/infer`` with one input ``"input"`` of shape ``[1, 784]``
(FP32); the answer is one output ``"output"`` of shape ``[1, 1]`` (INT64), the
class index. gRPC listens on a free port too (PyTriton's own client needs one
of them); metrics are off.

Triton's Python backend stub links the system's ``libpython3.11``, so this
file runs with the interpreter of ``bench/.venvs/triton``, which
``bench/peer_envs.py`` makes with ``/usr/bin/python3.11`` (on first use)::

    bench/.venvs/triton/bin/python -m bench.triton_server --model mlp --port 8000

On SIGTERM it stops Triton (its server and stub processes) and removes its
workspace itself.
"""

import argparse
import logging
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from .models import MLP_SHAPE
from .naive_server import MODEL_KEYS, make_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(signum: int, frame: Any) -> None:
    # Triton.serve() stops the server and its stubs on KeyboardInterrupt.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=MODEL_KEYS, required=True)
    parser.add_argument("--name", default="model", help="the model's name in the /v2 path")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--workspace", type=Path, help="PyTriton's folder (default: a new one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, _stop)

    model = make_model(args.model)

    @batch  # Triton's requests of one batch, stacked along the first axis
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        out = np.asarray(model.predict(inputs["input"]), dtype=np.int64)
        return {"output": out.reshape(-1, 1)}

    config = TritonConfig(
        http_address=args.host,
        http_port=args.port,
        grpc_address=args.host,
        grpc_port=_free_port(),
        allow_metrics=False,
        allow_gpu_metrics=False,
        allow_cpu_metrics=False,
        log_verbose=0,
        exit_timeout_secs=5,
    )
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="bench-triton-"))
    with Triton(config=config, workspace=workspace) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(MLP_SHAPE[0],))],
            outputs=[Tensor(name="output", dtype=np.int64, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=round(args.batch_wait_ms * 1000)
                ),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
