"""A batching peer: LitServe with its batching (``max_batch_size``, ``batch_timeout``).

A ``LitAPI`` serves one of the benchmark's models: ``decode_request`` takes
the ``"input"`` list from the JSON body, ``batch`` stacks the requests of a
batch into one array, ``predict`` calls the model once, ``unbatch`` splits
the answers and ``encode_response`` answers ``{"output": ...}``. LitServe runs
one inference worker (CPU) and one API server (uvicorn, access log off), in
processes of their own that talk through ZeroMQ (``fast_queue=True``, which
LitServe recommends above 100 requests/s: its default multiprocessing queues
went through a manager process and capped it near 100-150/s here, with the
core half idle); the whole tree is pinned to the server's core by
``bench/peers.py``.

LitServe is a benchmark-only dependency: this file runs with the interpreter
of ``bench/.venvs/litserve`` (created on first use by ``bench/peers.py``)::

    bench/.venvs/litserve/bin/python -m bench.litserve_server --model mlp --port 8000
"""

import argparse
from typing import Any

import litserve as ls
import numpy as np

from .naive_server import MODEL_KEYS, make_model

PATH = "/predict"


class API(ls.LitAPI):
    """One benchmark model; LitServe pickles it to its worker process (spawn)."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind

    def setup(self, device: str) -> None:
        self.model = make_model(self.kind)

    def decode_request(self, request: dict[str, Any]) -> Any:
        return request["input"]

    def batch(self, inputs: list[Any]) -> np.ndarray:
        return np.asarray(inputs)

    def predict(self, x: Any) -> Any:
        if self.max_batch_size == 1:  # LitServe skips batch/unbatch: one request
            return self.model.predict(np.asarray([x]))[0]
        return list(self.model.predict(x))

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"output": output}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.litserve_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=MODEL_KEYS, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument(
        "--no-fast-queue",
        action="store_true",
        help="multiprocessing queues between the API server and the worker instead of ZeroMQ",
    )
    args = parser.parse_args(argv)
    api = API(
        args.model,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_wait_ms / 1000,
        api_path=PATH,
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        fast_queue=not args.no_fast_queue,
    )
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
        access_log=False,
    )


if __name__ == "__main__":
    main()
