"""GPU placement: the ``devices`` option parsed, placed against fake device lists, and each
replica process started with its ``CUDA_VISIBLE_DEVICES`` (real processes; no GPU needed)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from clipper.exceptions import ValidationError
from clipper.managers.devices import (
    Gpu,
    Placement,
    PlacementError,
    parse_devices,
    parse_nvidia_smi,
    place,
    usage,
    visible_filter,
)
from clipper.managers.local import LocalProcessManager
from clipper.managers.ray import RayContainerManager, RayReplicaOptions
from clipper.types import ModelOptions

from .contract import Harness
from .ray_cluster import RAY_ENV, RayCluster


def gpus_of(placements: list[Placement]) -> list[tuple[int, ...]]:
    return [p.gpus for p in placements]


# -- the option's syntax -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "amount", "indices"),
    [
        ("cpu", "cpu", 0.0, ()),
        ("cuda", "share", 1.0, ()),
        ("CUDA", "share", 1.0, ()),
        ("cuda:all", "all", 0.0, ()),
        ("cuda:1", "explicit", 0.0, (1,)),
        ("cuda:0,3", "explicit", 0.0, (0, 3)),
        (0.5, "share", 0.5, ()),
        (1, "whole", 1.0, ()),
        (2, "whole", 2.0, ()),
    ],
)
def test_each_form_parses(value: Any, kind: str, amount: float, indices: tuple[int, ...]) -> None:
    (request,) = parse_devices(value)
    assert (request.kind, request.amount, request.indices) == (kind, amount, indices)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gpu", "must be"),
        ("cuda:", "must be"),
        ("cuda:0,0", "names a GPU twice"),
        ("cuda:-1", "must be"),
        (1.5, "whole number"),
        (0, "whole number"),
        (-0.5, "whole number"),
        (True, "must be"),
        ([], "1 to 64 entries"),
        (["cuda", ["cpu"]], r"devices'\[1\] must be"),
        ({"cuda": 1}, "must be"),
    ],
)
def test_bad_forms_are_refused_naming_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_devices(value)
    # The management API's check: a ValidationError (400) naming the option.
    with pytest.raises(ValidationError, match="devices"):
        ModelOptions.parse({"devices": value})


def test_devices_and_precision_are_model_options() -> None:
    options = ModelOptions.parse({"devices": ["cuda:0", 0.5], "precision": "bf16"})
    assert options.devices == ("cuda:0", 0.5) and options.precision == "bf16"
    assert options.to_json() == {"devices": ["cuda:0", 0.5], "precision": "bf16"}
    assert ModelOptions.from_record(options.to_json()) == options
    assert ModelOptions().devices is None and ModelOptions().precision is None


def test_devices_with_ray_num_gpus_is_refused() -> None:
    with pytest.raises(ValidationError, match="'devices' and 'ray_num_gpus'"):
        ModelOptions.parse({"devices": "cuda", "ray_num_gpus": 1})


def test_a_bad_precision_is_refused() -> None:
    with pytest.raises(ValidationError, match="'precision' must be one of fp32, fp16, bf16"):
        ModelOptions.parse({"precision": "int8"})


# -- placement (pure) --------------------------------------------------------------------


def test_cuda_spreads_one_gpu_per_replica() -> None:
    assert gpus_of(place(parse_devices("cuda"), 3, [0, 1, 2, 3])) == [(0,), (1,), (2,)]


def test_cuda_refuses_more_replicas_than_gpus() -> None:
    with pytest.raises(
        PlacementError, match=r"3 replica\(s\) need 3 GPU\(s\), but this machine has 2"
    ):
        place(parse_devices("cuda"), 3, [0, 1])


def test_a_share_puts_several_replicas_on_one_gpu_spreading_first() -> None:
    assert gpus_of(place(parse_devices(0.5), 2, [0, 1])) == [(0,), (1,)]
    assert gpus_of(place(parse_devices(0.5), 4, [0, 1])) == [(0,), (1,), (0,), (1,)]
    assert gpus_of(place(parse_devices(0.3), 3, [0])) == [(0,), (0,), (0,)]  # a third each
    with pytest.raises(PlacementError, match="does not fit"):
        place(parse_devices(0.5), 3, [0])


def test_whole_gpus_per_replica_are_disjoint() -> None:
    assert gpus_of(place(parse_devices(2), 2, [0, 1, 2, 3])) == [(0, 1), (2, 3)]
    with pytest.raises(PlacementError):
        place(parse_devices(2), 2, [0, 1, 2])


def test_explicit_gpus_are_what_every_replica_sees() -> None:
    assert gpus_of(place(parse_devices("cuda:1"), 2, [0, 1])) == [(1,), (1,)]
    assert gpus_of(place(parse_devices("cuda:0,1"), 1, [0, 1])) == [(0, 1)]
    with pytest.raises(PlacementError, match=r"names GPU 2, but this machine has GPU\(s\) 0, 1"):
        place(parse_devices("cuda:2"), 1, [0, 1], found_by="nvidia-smi found 2")


def test_all_and_cpu() -> None:
    assert gpus_of(place(parse_devices("cuda:all"), 2, [0, 1])) == [(0, 1), (0, 1)]
    assert gpus_of(place(parse_devices("cpu"), 2, [])) == [(), ()]
    assert Placement(()).env()["CUDA_VISIBLE_DEVICES"] == ""  # hides every GPU
    assert Placement(()).label == "cpu" and Placement((0, 2)).label == "cuda:0,2"
    assert Placement((2,)).env() == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2",
        "CLIPPER_DEVICE": "cuda",
    }


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:all", 0.5, 2])
def test_a_gpu_on_a_machine_without_one_is_a_clear_error(value: Any) -> None:
    with pytest.raises(PlacementError, match="asks for a GPU, but this machine has none"):
        place(parse_devices(value), 1, [], found_by="nvidia-smi found 0")


def test_a_list_gives_each_replica_its_own_and_must_cover_them() -> None:
    requests = parse_devices(["cuda:1", "cpu", 0.5])
    assert gpus_of(place(requests, 3, [0, 1])) == [(1,), (), (0,)]
    assert gpus_of(place(requests, 2, [0, 1])) == [(1,), ()]
    with pytest.raises(PlacementError, match="lists 3 entries, one per replica, but 4"):
        place(requests, 4, [0, 1])


def test_other_versions_load_orders_the_spread_but_never_refuses() -> None:
    # GPU 0 already holds a replica of another version: this one starts on GPU 1.
    assert gpus_of(place(parse_devices("cuda"), 1, [0, 1], load={0: 1.0})) == [(1,)]
    assert gpus_of(place(parse_devices("cuda"), 2, [0, 1], load={0: 5.0, 1: 5.0})) == [(0,), (1,)]
    assert usage([Placement((0,)), Placement((0, 1)), Placement(())]) == {0: 1.5, 1: 0.5}


# -- discovery's parsing ------------------------------------------------------------------


def test_nvidia_smi_output_and_the_servers_visible_devices() -> None:
    text = "0, GPU-aaa, NVIDIA H100 80GB HBM3, 81559\n1, GPU-bbb, NVIDIA H100 80GB HBM3, 81559\n"
    found = parse_nvidia_smi(text)
    assert [(g.index, g.uuid, g.memory_total_mb) for g in found] == [
        (0, "GPU-aaa", 81559),
        (1, "GPU-bbb", 81559),
    ]
    assert visible_filter(found, {}) == found
    assert [g.index for g in visible_filter(found, {"CUDA_VISIBLE_DEVICES": "1"})] == [1]
    assert [g.index for g in visible_filter(found, {"CUDA_VISIBLE_DEVICES": "GPU-aaa"})] == [0]
    assert visible_filter(found, {"CUDA_VISIBLE_DEVICES": ""}) == []


# -- the Ray manager's mapping ------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "num_gpus"),
    [("cpu", 0.0), ("cuda", 1.0), (0.5, 0.5), (2, 2.0), ("cuda:0,1", 2.0)],
)
def test_ray_maps_devices_to_num_gpus(devices: Any, num_gpus: float) -> None:
    opts = RayReplicaOptions.from_model_options(ModelOptions.parse({"devices": devices}))
    assert opts.num_gpus == num_gpus
    assert opts.env["CLIPPER_DEVICE"] == ("cuda" if num_gpus else "cpu")
    assert opts.actor_options().get("num_gpus", 0.0) == num_gpus


def test_ray_takes_a_per_replica_list_and_refuses_cuda_all() -> None:
    options = ModelOptions.parse({"devices": ["cuda", "cpu"], "precision": "fp16"})
    first, second = (RayReplicaOptions.from_model_options(options, i) for i in (0, 1))
    assert (first.num_gpus, second.num_gpus) == (1.0, 0.0)
    assert first.env == {"CLIPPER_DEVICE": "cuda", "CLIPPER_PRECISION": "fp16"}
    manager = RayContainerManager(rpc_address="tcp://127.0.0.1:7000")  # connects to nothing
    manager.check_placement(options, 2)
    with pytest.raises(PlacementError, match="lists 2 entries"):
        manager.check_placement(options, 3)
    with pytest.raises(PlacementError, match="names no number of GPUs"):
        manager.check_placement(ModelOptions.parse({"devices": "cuda:all"}), 1)


# -- the local manager: real replica processes, a fake list of GPUs -----------------------


def placed_env(xs: Any) -> list[str]:
    """Each input answered with this replica's pid and what its placement set."""
    env = os.environ
    seen = f"{os.getpid()}|{env.get('CUDA_VISIBLE_DEVICES')}|{env.get('CLIPPER_DEVICE')}"
    return [seen + f"|{env.get('CLIPPER_PRECISION')}"] * len(xs)


class TestLocalPlacement:
    timeout = 60.0

    def drive(self, tmp_path: Path, gpus: list[Gpu], body: Any) -> None:
        """Run ``body(harness, manager)`` against a real RPC endpoint, the manager
        given ``gpus`` as this machine's; everything stopped after."""

        async def main() -> None:
            harness = Harness(tmp_path, self.timeout)
            await harness.rpc.start()
            manager = LocalProcessManager(
                rpc_address=harness.address,
                state_dir=tmp_path / "state",
                on_exit=harness.on_exit,
                backoff_initial=0.2,
                gpus=gpus,
            )
            try:
                await body(harness, manager)
            finally:
                try:
                    await manager.stop_all()
                finally:
                    harness.dispatcher.close()
                    await harness.rpc.stop()

        asyncio.run(main())

    def test_each_replica_process_sees_its_own_gpu(self, tmp_path: Path) -> None:
        async def body(h: Harness, manager: LocalProcessManager) -> None:
            spec = h.deploy("placed", placed_env, options={"devices": "cuda", "precision": "fp16"})
            await h.scale(manager, spec, 2)
            devices = {r["pid"]: r["device"] for r in manager.replicas()}
            assert sorted(devices.values()) == ["cuda:0", "cuda:1"]
            seen: dict[int, str] = {}
            for _ in range(200):  # until both replicas answered (the idle one takes work)
                outcome = await h.predict(spec, [0.0])
                assert outcome.ok, outcome.error
                pid, visible, device, precision = str(outcome.output).split("|")
                seen[int(pid)] = visible
                assert (device, precision) == ("cuda", "fp16")
                if len(seen) == 2:
                    break
            assert {pid: f"cuda:{v}" for pid, v in seen.items()} == devices

        self.drive(tmp_path, [Gpu(0, "fake"), Gpu(1, "fake")], body)

    def test_cpu_hides_the_gpus_and_unset_leaves_the_environment(self, tmp_path: Path) -> None:
        async def body(h: Harness, manager: LocalProcessManager) -> None:
            cpu = h.deploy("oncpu", placed_env, options={"devices": "cpu"})
            plain = h.deploy("plain", placed_env)
            await manager.reconcile({cpu.id: (cpu, 1), plain.id: (plain, 1)})
            await h.settled(manager, cpu, 1)
            await h.settled(manager, plain, 1)
            on_cpu = await h.predict(cpu, [0.0])
            assert str(on_cpu.output).split("|")[1:] == ["", "cpu", "None"]
            unset = await h.predict(plain, [0.0])
            inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
            assert str(unset.output).split("|")[1:] == [str(inherited), "None", "None"]
            described = {r["model_name"]: r for r in manager.replicas()}
            assert described["oncpu"]["device"] == "cpu" and "device" not in described["plain"]

        self.drive(tmp_path, [Gpu(0, "fake")], body)

    def test_a_placement_that_does_not_exist_is_refused_and_reported(self, tmp_path: Path) -> None:
        async def body(h: Harness, manager: LocalProcessManager) -> None:
            options = ModelOptions.parse({"devices": "cuda:3"})
            with pytest.raises(PlacementError, match="names GPU 3, but this machine has GPU"):
                manager.check_placement(options, 1)
            with pytest.raises(PlacementError, match=r"2 replica\(s\) need 2 GPU"):
                manager.check_placement(ModelOptions.parse({"devices": "cuda"}), 2)
            manager.check_placement(ModelOptions.parse({"devices": 0.5}), 2)  # fits
            # Reached anyway (a stored version): no process, the reason in its description.
            spec = h.deploy("nowhere", placed_env, options={"devices": "cuda:3"})
            await manager.reconcile({spec.id: (spec, 1)})
            (described,) = manager.replicas()
            assert described["pid"] is None and described["device"] is None
            assert "names GPU 3" in described["error"]

        self.drive(tmp_path, [Gpu(0, "fake")], body)


# -- the Ray manager: the same option, real actors on a real (GPU-less) cluster -----------


@pytest.mark.slow
def test_ray_replicas_get_the_device_and_precision_the_option_asks(tmp_path: Path) -> None:
    async def body(h: Harness, manager: RayContainerManager) -> None:
        spec = h.deploy("on-ray", placed_env, options={"devices": "cpu", "precision": "bf16"})
        await h.scale(manager, spec, 1)
        outcome = await h.predict(spec, [0.0])
        assert outcome.ok, outcome.error
        assert str(outcome.output).split("|")[2:] == ["cpu", "bf16"]
        (described,) = manager.replicas()
        assert described["device"] == "cpu"  # no GPU assigned by Ray

    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        cluster = RayCluster()
        try:
            cluster.start_head(num_cpus=2)

            async def main() -> None:
                harness = Harness(tmp_path, 90.0)
                await harness.rpc.start()
                manager = RayContainerManager(
                    rpc_address=harness.address,
                    address=cluster.address,
                    on_exit=harness.on_exit,
                    backoff_initial=0.2,
                    restart_delay=0.2,
                )
                try:
                    await body(harness, manager)
                finally:
                    try:
                        await manager.stop_all()
                    finally:
                        harness.dispatcher.close()
                        await harness.rpc.stop()

            asyncio.run(main())
        finally:
            cluster.stop()
