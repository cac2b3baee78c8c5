"""The naive baseline users would write: FastAPI + uvicorn, one request = one predict.

A pydantic model validates ``{"input": list[float]}``; the handler (``async
def``, so no thread pool hop: the kinder choice) calls the model in-process
on a batch of one and answers ``{"output": ...}``. uvicorn runs one worker
with httptools and uvloop, access log off, like the echo ceiling.

FastAPI is a benchmark-only dependency: ``bench/peers.py`` runs this file
with the interpreter of its own virtual environment, ``bench/.venvs/naive``
(created on first use), so the project's ``.venv`` stays clean. By hand::

    bench/.venvs/naive/bin/python -m bench.naive_server --model mlp --port 8000

This module also builds the benchmark's models (``make_model``): it must
import without Clipper, since it runs in that other environment.
"""

# No ``from __future__ import annotations``: FastAPI reads the handler's
# annotations at run time, and ``Query`` is local to ``build_app``.
import argparse
from typing import Any

import numpy as np

from . import models

HEAVY_SHAPE = (784, 2048, 2048, 10)
MODEL_KEYS = ("mlp", "mlp-heavy", "noop")


class HeavyMLP(models.MLP):
    """``models.MLP`` with 2048 hidden units (784→2048→2048→10), same recipe.

    Pickled as its seed only (its weights are 22 MB, more than the management
    API takes in one request): the container rebuilds the same weights.
    """

    shape = HEAVY_SHAPE

    def __getstate__(self) -> dict[str, int]:
        return {"seed": self.seed}

    def __setstate__(self, state: dict[str, int]) -> None:
        models.MLP.__init__(self, state["seed"])
        # Warm up where it is loaded (page in 22 MB of weights, start BLAS): a
        # cold first batch is many times slower, and Clipper's dispatcher takes
        # the first batch's latency as its estimate (see bench/peers.py).
        for size in (1, 8, 1):
            self.predict(np.zeros((size, HEAVY_SHAPE[0])))


def make_model(key: str) -> Any:
    if key == "mlp":
        return models.MLP()
    if key == "mlp-heavy":
        return HeavyMLP()
    if key == "noop":
        return models.NoOp()
    raise ValueError(f"unknown model {key!r}; one of {', '.join(MODEL_KEYS)}")


def build_app(model: Any) -> Any:
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Query(BaseModel):
        input: list[float]

    app = FastAPI()

    @app.post("/{app_name}/predict")
    async def predict(app_name: str, query: Query) -> dict[str, Any]:
        output = model.predict(np.asarray([query.input]))
        return {"output": output[0]}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.naive_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=MODEL_KEYS, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        build_app(make_model(args.model)),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
