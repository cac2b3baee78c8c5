"""A batching peer: MLServer with adaptive batching, a custom runtime.

``Runtime`` is an ``MLModel`` that serves one of the benchmark's models
(``bench/naive_server.make_model``; the key is the model settings'
``parameters.extra.kind``). It speaks the Open Inference Protocol (V2): a
request has one input tensor ``[n, 784]``; the answer is one output
``[n, 1]`` of class indices. MLServer's adaptive batcher (``max_batch_size``,
``max_batch_time`` in ``model-settings.json``) merges concurrent requests along
the first axis before ``predict`` and splits the answer after it.

``write_settings`` lays out a model repository for ``mlserver start``:
``settings.json`` (HTTP on the given port, gRPC and metrics on other free
ports, the metrics endpoint off, inference in the server's own process, debug
logging off) and ``<name>/model-settings.json``. ``bench/peers.py`` runs
``mlserver start <folder>`` from ``bench/.venvs/mlserver`` (created on first
use) with ``PYTHONPATH`` at the repository root, so this module and
``bench/models.py`` are imported from the source tree. By hand::

    bench/.venvs/mlserver/bin/python -m bench.mlserver_runtime --model mlp --port 8000 \\
        --dir /tmp/mls && PYTHONPATH=. bench/.venvs/mlserver/bin/mlserver start /tmp/mls
"""

import argparse
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np

from .naive_server import MODEL_KEYS, make_model

try:  # only inside MLServer's environment; write_settings needs none of it
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # pragma: no cover - the project's own environment
    MLModel = object


class Runtime(MLModel):
    """One benchmark model behind the V2 protocol."""

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        self._model = make_model(extra.get("kind", "mlp"))
        return True

    async def predict(self, payload: "InferenceRequest") -> "InferenceResponse":
        x = NumpyCodec.decode_input(payload.inputs[0])
        out = np.asarray(self._model.predict(x), dtype=np.int64).reshape(-1, 1)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("output", out)],
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_settings(
    folder: Path, name: str, kind: str, port: int, max_batch_size: int, max_batch_time_s: float
) -> dict[str, Any]:
    """Write ``settings.json`` and ``<name>/model-settings.json``; return both."""
    server = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": _free_port(),
        "metrics_port": _free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,
        "debug": False,
        "model_repository_root": str(folder),
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
    }
    model = {
        "name": name,
        "implementation": "bench.mlserver_runtime.Runtime",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time_s,
        "parameters": {"extra": {"kind": kind}},
    }
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server, indent=1))
    (folder / name / "model-settings.json").write_text(json.dumps(model, indent=1))
    return {"settings": server, "model_settings": model}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mlserver_runtime", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="the repository to write")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=MODEL_KEYS, required=True)
    parser.add_argument("--name", default="model")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    written = write_settings(
        args.dir, args.name, args.model, args.port, args.max_batch_size, args.batch_wait_ms / 1000
    )
    print(json.dumps(written, indent=1))


if __name__ == "__main__":
    main()
