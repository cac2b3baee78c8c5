"""The Ray manager: its option parsing, and the container-manager contract on a real cluster.

The contract runs against a one-node Ray cluster started by this module
(``ray start --head`` on 127.0.0.2, stopped by PID); this process joins it
as a Ray driver, as the server does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from clipper.exceptions import ValidationError
from clipper.managers.ray import RAY_OPTION_KEYS, RayContainerManager, RayReplicaOptions
from clipper.types import ModelOptions
from tests.helpers import pid_alive, wait_for

from . import models
from .contract import Harness, MakeManager, ManagerContract
from .ray_cluster import RAY_ENV, RayCluster


def test_options_default_to_spread_with_rays_own_resource_defaults() -> None:
    opts = RayReplicaOptions.from_model_options(ModelOptions())
    assert opts.placement == "spread" and opts.max_restarts == -1
    assert opts.requirements() == {"CPU": 1.0}
    assert opts.actor_options() == {"max_restarts": -1, "max_concurrency": 4}


def test_options_pass_resource_requests_to_ray() -> None:
    opts = RayReplicaOptions.from_model_options(
        ModelOptions.parse(
            {
                "ray_num_cpus": 0.5,
                "ray_num_gpus": 1,
                "ray_memory_mb": 256,
                "ray_resources": {"node_b": 1},
                "ray_placement": "pack",
                "ray_max_restarts": 3,
                "batching": "aimd",  # not ours: ignored
            }
        )
    )
    assert opts.actor_options() == {
        "max_restarts": 3,
        "max_concurrency": 4,
        "num_cpus": 0.5,
        "num_gpus": 1,
        "memory": 256 * 1024 * 1024,
        "resources": {"node_b": 1.0},
    }
    assert opts.requirements() == {
        "CPU": 0.5,
        "GPU": 1,
        "memory": 256 * 1024 * 1024,
        "node_b": 1.0,
    }
    assert opts.placement == "pack"
    assert {k for k in RAY_OPTION_KEYS} == {
        "ray_num_cpus",
        "ray_num_gpus",
        "ray_memory_mb",
        "ray_resources",
        "ray_placement",
        "ray_max_restarts",
        "devices",
        "precision",
    }


@pytest.mark.parametrize(
    "options",
    [
        {"ray_num_cpus": "two"},
        {"ray_num_cpus": -1},
        {"ray_num_gpus": True},
        {"ray_memory_mb": 1.5},
        {"ray_resources": ["node_b"]},
        {"ray_resources": {"node_b": 0}},
        {"ray_placement": "everywhere"},
        {"ray_max_restarts": -2},
    ],
)
def test_bad_option_values_are_refused_or_ignored_never_fatal(options: dict[str, object]) -> None:
    # The management API refuses them; in a stored record they are set aside.
    with pytest.raises(ValidationError, match=next(iter(options))):
        ModelOptions.parse(options)
    stored = ModelOptions.from_record(options)
    assert RayReplicaOptions.from_model_options(stored) == RayReplicaOptions()


def test_containers_dial_this_nodes_address_when_rpc_binds_every_interface() -> None:
    class FakeRay:
        class util:
            @staticmethod
            def get_node_ip_address() -> str:
                return "10.1.2.3"

        @staticmethod
        def nodes() -> list[dict[str, object]]:
            return [{"Alive": True, "NodeManagerAddress": "127.0.0.2"}]

    wildcard = RayContainerManager(rpc_address="tcp://0.0.0.0:7000")
    assert wildcard._address_for_containers(FakeRay) == "tcp://10.1.2.3:7000"
    loopback = RayContainerManager(rpc_address="tcp://127.0.0.1:7000")
    assert loopback._address_for_containers(FakeRay) == "tcp://127.0.0.1:7000"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        cluster = RayCluster()
        try:
            cluster.start_head(num_cpus=2)
            yield cluster
        finally:
            cluster.stop()


@pytest.mark.slow
class TestRayContainerManager(ManagerContract):
    timeout = 90.0

    @pytest.fixture
    def make_manager(self, ray_cluster: RayCluster) -> MakeManager:
        def make(h: Harness) -> RayContainerManager:
            return RayContainerManager(
                rpc_address=h.address,
                address=ray_cluster.address,
                on_exit=h.on_exit,
                secret=h.secret,
                server_key=h.server_key,
                backoff_initial=0.2,
                restart_delay=0.2,
            )

        return make


_DRIVER = """
import asyncio, json, sys
from clipper.managers.ray import RayContainerManager
from clipper.types import InputType, ModelSpec

async def main():
    manager = RayContainerManager(rpc_address="tcp://127.0.0.1:9", address=sys.argv[1])
    spec = ModelSpec("orphan", "1", InputType.DOUBLES, model_data_path=sys.argv[2])
    await manager.reconcile({spec.id: (spec, 2)})
    while not all(r["pid"] for r in manager.replicas()):
        await asyncio.sleep(0.05)
    print(json.dumps([r["pid"] for r in manager.replicas()]), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.slow
def test_replicas_die_with_their_frontend(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """A frontend killed outright takes its replicas with it (it owns their actors)."""
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(cloudpickle.dumps(models.total))
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, ray_cluster.address, str(artifact)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None
        pids = json.loads(driver.stdout.readline())
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    finally:
        driver.kill()
        driver.wait()
        if driver.stdout is not None:
            driver.stdout.close()
    wait_for(lambda: not any(pid_alive(p) for p in pids), 60, "the orphaned replicas to exit")
