"""A batching peer: Ray Serve, one replica, ``@serve.batch``.

The driver starts a private local Ray cluster (``ray.init`` with ``num_cpus=1``,
no dashboard, a small object store, its own temporary folder), then Ray
Serve's HTTP proxy on the given port and one replica of a deployment that
serves the benchmark's model: ``__call__`` parses ``{"input": [...]}`` from the
body and awaits a method decorated with ``@serve.batch`` (``max_batch_size``,
``batch_wait_timeout_s`` from the command line), which calls ``predict`` once
on the stacked batch. ``max_ongoing_requests`` is raised to 512 (the default,
5, would cap every batch at 5).

The driver's process tree (GCS, raylet, the proxy, the controller, the replica
and Ray's helper processes) is pinned to the server's core by
``bench/peers.py``, which also stops it by that tree (SIGTERM, then SIGKILL):
never ``ray stop``, which would stop every Ray cluster of the machine. On
SIGTERM the driver shuts Serve and its cluster down itself first.

Ray Serve is a benchmark-only dependency: this file runs with the interpreter
of ``bench/.venvs/rayserve`` (created on first use by ``bench/peers.py``)::

    bench/.venvs/rayserve/bin/python -m bench.rayserve_server --model mlp --port 8000
"""

import argparse
import os
import signal
import sys
import tempfile
import threading
from typing import Any, cast

import numpy as np
import orjson

from .naive_server import MODEL_KEYS, make_model

PATH = "/predict"


def build_app(kind: str, max_batch_size: int, wait_s: float) -> Any:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=512,
        ray_actor_options={"num_cpus": 1},
    )
    class Model:
        def __init__(self) -> None:
            self.model = make_model(kind)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)
        async def predict(self, xs: list[Any]) -> list[Any]:
            return list(self.model.predict(np.asarray(xs)))

        async def __call__(self, request: Request) -> Response:
            x = orjson.loads(await request.body())["input"]
            out = await self.predict(x)
            return Response(orjson.dumps({"output": out}), media_type="application/json")

    return cast(Any, Model).bind()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rayserve_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=MODEL_KEYS, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--temp-dir", help="Ray's temporary folder (default: a new one)")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    os.environ.pop("RAY_ADDRESS", None)  # a cluster of our own, never someone else's
    temp = args.temp_dir or tempfile.mkdtemp(prefix="bench-ray-")
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _temp_dir=temp,
        log_to_driver=False,
        configure_logging=False,
    )
    # After ray.init, which installs handlers of its own.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(
            build_app(args.model, args.max_batch_size, args.batch_wait_ms / 1000),
            name="bench",
            route_prefix=PATH,
        )
        print(f"ready: ray serve on {args.host}:{args.port}{PATH}", flush=True)
        stop.wait()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
