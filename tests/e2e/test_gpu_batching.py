"""Batching as a GPU asks for it, without a GPU: models whose batch costs the same
whatever its size (a sleep per batch, in real replicas), as a GPU's nearly flat
batch latency does.

- AIMD and the quantile controller grow to large batches under load;
- a fast and a slow replica of one version each get work in proportion to
  their speed (each replica has its own controller and pulls work when idle).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any

import pytest

from clipper.deployers.python import deploy_python_closure
from tests.helpers import Clipper, wait_for

pytestmark = pytest.mark.slow


def flat_30ms(xs: Any) -> list[float]:
    """30 ms a batch, whatever its size."""
    time.sleep(0.03)
    return [0.0] * len(xs)


def fast_or_slow(xs: Any) -> list[str]:
    """Replica 0 takes 10 ms a batch, the others 40 ms; each answer names the replica."""
    label = sys.argv[sys.argv.index("--replica") + 1] if "--replica" in sys.argv else "?"
    time.sleep(0.01 if label.endswith("-0") else 0.04)
    return [label] * len(xs)


class Bursts:
    """Threads sending ``input_batch`` requests (``size`` queries each) back to back:
    enough queued queries for large batches from a Python client."""

    def __init__(self, clipper: Clipper, app: str, clients: int = 6, size: int = 24) -> None:
        self.clipper, self.app, self.size = clipper, app, size
        self.stop = threading.Event()
        self.outputs: collections.Counter[str] = collections.Counter()
        self.defaults = 0
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]

    def _run(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1  # distinct inputs: the prediction cache answers none of them
            batch = [[float(n), float(i), float(j)] for j in range(self.size)]
            r = self.clipper.predict(self.app, {"input_batch": batch})
            for p in r.json()["batch_predictions"]:
                if p["default"]:
                    self.defaults += 1
                else:
                    self.outputs[str(p["output"])] += 1

    def __enter__(self) -> Bursts:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def deploy(
    clipper: Clipper, name: str, func: Any, options: dict[str, Any], replicas: int = 1
) -> None:
    clipper.conn.register_application(name, "doubles", "-1", 200_000)  # 200 ms SLO
    deploy_python_closure(
        clipper.conn, name, "1", "doubles", func, num_replicas=replicas, options=options
    )
    clipper.conn.link_model_to_app(name, name)
    clipper.wait_live(name, replicas)


def model_stats(clipper: Clipper, name: str) -> dict[str, Any]:
    return next(m for m in clipper.status()["models"] if m["model"] == f"{name}:1")


@pytest.mark.parametrize("policy", ["aimd", "quantile"])
def test_a_flat_cost_model_gets_large_batches(clipper: Clipper, policy: str) -> None:
    name = f"flat-{policy}"
    deploy(clipper, name, flat_30ms, {"batching": policy})
    with Bursts(clipper, name) as load:
        # 6 clients x 24 queries in flight: a batch of 1 would make each wait ~4 s.
        wait_for(
            lambda: model_stats(clipper, name)["max_batch_size"] >= 32,
            90,
            f"{policy} to allow batches of 32 or more",
        )
        before = model_stats(clipper, name)
        wait_for(lambda: model_stats(clipper, name)["batches"] >= before["batches"] + 20, 60)
    after = model_stats(clipper, name)
    batches = after["batches"] - before["batches"]
    queries = after["mean_batch_size"] * after["batches"] - (
        before["mean_batch_size"] * before["batches"]
    )
    assert queries / batches >= 16, (policy, queries / batches, after)
    assert sum(load.outputs.values()) > 0


def test_a_fast_and_a_slow_replica_share_by_speed(clipper: Clipper) -> None:
    deploy(clipper, "mixed", fast_or_slow, {"batching": "aimd"}, replicas=2)
    with Bursts(clipper, "mixed", clients=4, size=8) as load:
        wait_for(lambda: sum(load.outputs.values()) >= 3000, 120, "3000 answers")
    fast, slow = load.outputs["mixed-1-0"], load.outputs["mixed-1-1"]
    assert slow > 0, load.outputs  # both serve
    # 4x the speed per batch: clearly more of the work, not an even split.
    assert fast >= 1.5 * slow, load.outputs
    replicas = {r["replica"]: r for r in clipper.status()["replicas"] if r["model_name"] == "mixed"}
    assert all(r["max_batch_size"] for r in replicas.values())  # each its own controller
