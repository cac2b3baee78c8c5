"""A real two-node Ray cluster on this machine: placement across nodes, and a node dying.

Node A (the head) is 127.0.0.2, node B is 127.0.0.3 and carries the custom
resource ``node_b``; both are ``ray start`` processes this module starts
and stops by PID. The first test drives the manager in-process (with the
Ray placement options); the second runs the whole
server with ``--manager ray``, kills node B's raylet under load and checks
that queries keep being answered by node A's replica while Ray restarts the
lost one there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipper.admin import LocalContainerManager
from clipper.deployers.python import deploy_python_closure
from clipper.managers.ray import RayContainerManager
from tests.helpers import Clipper, free_port, wait_for

from . import models
from .contract import Harness
from .ray_cluster import RAY_ENV, RayCluster, RayNode

pytestmark = pytest.mark.slow

NODE_A, NODE_B = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[RayCluster, RayNode]]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        ray_cluster = RayCluster()
        try:
            ray_cluster.start_head(NODE_A, num_cpus=2)
            node_b = ray_cluster.add_node(NODE_B, num_cpus=2, node_b=100)
            yield ray_cluster, node_b
        finally:
            ray_cluster.stop()


def test_replicas_spread_over_nodes_or_pinned_by_a_custom_resource(
    cluster: tuple[RayCluster, RayNode], tmp_path: Path
) -> None:
    ray_cluster, _ = cluster

    async def main() -> None:
        h = Harness(tmp_path, timeout=90.0)
        await h.rpc.start()
        manager = RayContainerManager(
            rpc_address=h.address, address=ray_cluster.address, on_exit=h.on_exit
        )
        try:
            spread = h.deploy("spread", models.total)
            pinned = h.deploy("pinned", models.total, options={"ray_resources": {"node_b": 1}})
            await manager.reconcile({spread.id: (spread, 2), pinned.id: (pinned, 2)})
            await h.settled(manager, spread, 2)
            await h.settled(manager, pinned, 2)
            nodes: dict[str, list[str]] = {}
            for r in manager.replicas():
                nodes.setdefault(r["model_name"], []).append(r["node"])
            assert sorted(nodes["spread"]) == [NODE_A, NODE_B]
            assert nodes["pinned"] == [NODE_B, NODE_B]
            assert all(r["restarts"] == 0 and r["state"] == "running" for r in manager.replicas())
            assert (await h.predict(pinned, [1.0, 1.0])).output == 2.0
        finally:
            await manager.stop_all()
            h.dispatcher.close()
            await h.rpc.stop()

    asyncio.run(main())


class _Load:
    """Queries back to back from a thread; every answer recorded with its time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                r = client.post(self.url, json={"input": [float(i), 1.0]})
                self.answers.append((time.monotonic(), r.status_code, r.json()))

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_killing_a_node_leaves_the_other_serving_while_ray_restarts_its_replicas(
    cluster: tuple[RayCluster, RayNode], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray_cluster, node_b = cluster
    for key, value in RAY_ENV.items():  # the server is a Ray driver too
        monkeypatch.setenv(key, value)
    cm = LocalContainerManager(
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        state_dir=tmp_path / "state",
        server_flags=["--manager", "ray", "--ray-address", ray_cluster.address],
    )
    clipper = Clipper(tmp_path, cm).start()
    try:
        conn = clipper.conn
        conn.register_application("sum", "doubles", default_output="-1", slo_micros=2_000_000)
        deploy_python_closure(conn, "sum", "1", "doubles", models.total, num_replicas=2)
        conn.link_model_to_app(app_name="sum", model_name="sum")

        def placed() -> list[dict[str, Any]]:
            live = clipper.live_replicas("sum")
            return live if sorted(r["node"] for r in live) == [NODE_A, NODE_B] else []

        wait_for(placed, 120, "one live replica on each node")

        with _Load(f"{clipper.query_url}/sum/predict") as load:
            wait_for(lambda: len(load.answers) >= 20, 30, "queries before the kill")
            killed_at = time.monotonic()
            ray_cluster.kill_raylet(node_b)

            def moved() -> list[dict[str, Any]]:
                live = clipper.live_replicas("sum")
                ok = len(live) == 2 and all(r["node"] == NODE_A for r in live)
                return live if ok and sum(r["restarts"] for r in live) >= 1 else []

            wait_for(moved, 120, "both replicas live on node A again")
            restored_at = time.monotonic()
            wait_for(lambda: load.answers[-1][0] > restored_at + 1.0, 30, "queries after")

        during = [a for a in load.answers if killed_at <= a[0] <= restored_at]
        print(
            f"node B killed: both replicas live on node A after {restored_at - killed_at:.1f}s; "
            f"{len(during)} queries answered meanwhile, "
            f"{sum(a[2].get('default', True) for a in during)} with the default"
        )
        assert all(status == 200 for _, status, _ in load.answers)
        # Node A's replica kept answering: the outage cost at most the batch in flight.
        assert len(during) >= 10
        defaults = [body for _, _, body in load.answers if body["default"]]
        assert len(defaults) <= 2, defaults
        assert all(
            body["output"] == i + 1.0
            for i, (_, _, body) in enumerate(load.answers, start=1)
            if not body["default"]
        )
    finally:
        clipper.stop()
