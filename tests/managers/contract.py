"""The behaviour every container manager must have; test modules subclass ManagerContract.

A manager is driven as the server drives it, without the server: a real
RPC endpoint (``RPCServer``) and dispatcher on a free port, which the
replicas register with and answer batches from. A subclass provides the
``make_manager`` fixture: a callable that builds a manager for a
:class:`Harness` (its RPC address, its ``on_exit`` callback).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from clipper.batching.dispatcher import Dispatcher
from clipper.managers.base import REPLICA_FIELDS, ContainerManager
from clipper.rpc import protocol as p
from clipper.rpc.protocol import curve_keypair
from clipper.rpc.server import Replica, RPCServer
from clipper.types import InputType, ModelOptions, ModelSpec, Outcome
from tests.helpers import free_port, pid_alive
from tests.managers import models

cloudpickle.register_pickle_by_value(models)

MakeManager = Callable[["Harness"], ContainerManager]


class _Listener:
    """Forwards to the dispatcher and records who joined and left."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def replica_joined(self, replica: Replica) -> None:
        self.harness.joined.append(replica)
        self.harness.dispatcher.replica_joined(replica)

    def replica_left(self, replica: Replica, reason: str) -> None:
        self.harness.left.append((replica, reason))
        self.harness.dispatcher.replica_left(replica, reason)

    def batch_done(self, replica: Replica, batch_id: int, result: p.BatchResult) -> None:
        self.harness.dispatcher.batch_done(replica, batch_id, result)


class Harness:
    """A real RPC endpoint and dispatcher, wired as the server wires them."""

    def __init__(self, state_dir: Path, timeout: float, secure: bool = False) -> None:
        self.state_dir = state_dir
        self.timeout = timeout
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.dispatcher = Dispatcher()
        self.joined: list[Replica] = []
        self.left: list[tuple[Replica, str]] = []
        # Secure: containers must present the secret, and the socket is encrypted
        # (managers hand replicas ``secret`` and the public ``server_key``).
        self.secret = "s3cret-for-replicas" if secure else None
        self.server_key: bytes | None = None
        curve_secret: bytes | None = None
        if secure:
            self.server_key, curve_secret = curve_keypair(str(state_dir / "curve"))
        self.rpc = RPCServer(
            self.address,
            _Listener(self),
            heartbeat_interval=0.2,
            heartbeat_timeout=2.0,
            secret=self.secret,
            curve_secret_key=curve_secret,
        )
        self.dispatcher.set_transport(self.rpc)

    def on_exit(self, pid: int) -> None:
        self.rpc.process_exited(pid)

    def deploy(
        self, name: str, model: Any, version: str = "1", options: dict[str, Any] | None = None
    ) -> ModelSpec:
        """Write a model's artifact as the management service does; its spec."""
        folder = self.state_dir / "models" / name / version
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.pkl"
        path.write_bytes(cloudpickle.dumps(model))
        return ModelSpec(
            name,
            version,
            InputType.DOUBLES,
            model_data_path=str(path),
            options=ModelOptions.parse(options or {}),
        )

    def live(self, spec: ModelSpec) -> list[Replica]:
        return [r for r in self.rpc.replicas.values() if r.model == spec.id]

    async def predict(self, spec: ModelSpec, values: list[float]) -> Outcome:
        deadline = time.monotonic() + 10.0
        return await self.dispatcher.submit(spec.id, np.array(values), deadline, use_cache=False)

    async def until(self, condition: Callable[[], Any], what: str) -> Any:
        """Poll ``condition`` until truthy, within this harness's (generous) timeout."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {self.timeout:.0f}s waiting for {what}")

    async def scale(self, manager: ContainerManager, spec: ModelSpec, count: int) -> None:
        """Ask for ``count`` replicas of one version (the only one wanted) and wait for them."""
        await manager.reconcile({spec.id: (spec, count)})
        await self.settled(manager, spec, count)

    async def settled(self, manager: ContainerManager, spec: ModelSpec, count: int) -> None:
        """Wait until ``count`` replicas are live and the manager reports the same ones."""

        def same() -> bool:
            live = {(r.label, r.pid) for r in self.live(spec)}
            mine = {
                (r["replica"], r["pid"])
                for r in manager.replicas()
                if (r["model_name"], r["model_version"]) == (spec.name, spec.version)
            }
            return len(live) == count and live == mine

        await self.until(same, f"{count} live replica(s) of {spec.id}, as the manager reports")


def _pids(manager: ContainerManager, spec: ModelSpec | None = None) -> list[int]:
    return [
        r["pid"]
        for r in manager.replicas()
        if r["pid"] and (spec is None or r["model_name"] == spec.name)
    ]


class ManagerContract:
    """Tests any container manager passes. Subclasses provide ``make_manager``."""

    timeout = 60.0  # generous: replicas start real processes

    @pytest.fixture
    def drive(
        self, make_manager: MakeManager, tmp_path: Path
    ) -> Callable[[Callable[[Harness, ContainerManager], Awaitable[None]]], None]:
        """Run ``body(harness, manager)`` on a fresh endpoint; stop everything after."""

        def run(
            body: Callable[[Harness, ContainerManager], Awaitable[None]], secure: bool = False
        ) -> None:
            async def main() -> None:
                harness = Harness(tmp_path, self.timeout, secure)
                await harness.rpc.start()
                manager = make_manager(harness)
                try:
                    await body(harness, manager)
                finally:
                    try:
                        await manager.stop_all()
                    finally:
                        harness.dispatcher.close()
                        await harness.rpc.stop()

            asyncio.run(main())

        return run

    def test_it_is_a_container_manager(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            assert isinstance(manager, ContainerManager)
            assert manager.replicas() == []
            await manager.reconcile({})
            assert manager.replicas() == []

        drive(body)

    def test_reconcile_starts_replicas_that_register_and_answer(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            spec = h.deploy("adder", models.total)
            await h.scale(manager, spec, 2)
            reported = manager.replicas()
            assert all(set(REPLICA_FIELDS) <= set(r) for r in reported)
            assert sorted(r["replica"] for r in reported) == ["adder-1-0", "adder-1-1"]
            assert all(r["restarts"] == 0 for r in reported)
            outcome = await h.predict(spec, [1.0, 2.5])
            assert outcome.ok and outcome.output == 3.5
            # The same desired state again changes nothing.
            before = sorted(_pids(manager))
            await manager.reconcile({spec.id: (spec, 2)})
            assert sorted(_pids(manager)) == before

        drive(body)

    def test_scaling_up_and_down(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            spec = h.deploy("scaled", models.whoami)
            await h.scale(manager, spec, 1)
            first = _pids(manager)
            await h.scale(manager, spec, 3)
            assert set(first) <= set(_pids(manager))  # scaling up keeps what runs
            await h.scale(manager, spec, 1)
            assert _pids(manager) == first  # scaling down stops the newest
            answered = await h.predict(spec, [0.0])
            assert answered.ok and answered.output == first[0]

        drive(body)

    def test_a_model_left_out_of_the_desired_state_is_stopped(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            keep, drop = h.deploy("keep", models.total), h.deploy("drop", models.total)
            await manager.reconcile({keep.id: (keep, 1), drop.id: (drop, 2)})
            await h.settled(manager, keep, 1)
            await h.settled(manager, drop, 2)
            dropped = _pids(manager, drop)
            await manager.reconcile({keep.id: (keep, 1)})
            await h.settled(manager, drop, 0)
            assert {r["model_name"] for r in manager.replicas()} == {"keep"}
            await h.until(
                lambda: not any(pid_alive(p) for p in dropped), "the dropped replicas to exit"
            )

        drive(body)

    def test_a_crashed_replica_is_restarted(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            spec = h.deploy("crashy", models.total)
            await h.scale(manager, spec, 2)
            victim = manager.replicas()[0]
            os.kill(victim["pid"], signal.SIGKILL)
            await h.until(
                lambda: any(
                    r["replica"] == victim["replica"]
                    and r["restarts"] >= 1
                    and r["pid"] not in (None, victim["pid"])
                    for r in manager.replicas()
                ),
                f"{victim['replica']} to be restarted",
            )
            await h.settled(manager, spec, 2)
            assert (await h.predict(spec, [2.0, 2.0])).output == 4.0

        drive(body)

    def test_a_hung_replica_is_ended_and_restarted(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            flag = h.state_dir / "hold-the-gil"
            spec = h.deploy("hung", models.make_gil_holder(str(flag)))
            await h.scale(manager, spec, 1)
            (victim,) = manager.replicas()
            label, pid = victim["replica"], victim["pid"]
            # A report about a replica it did not start, or about another
            # process under that label (one already restarted), ends nothing.
            assert manager.replica_unresponsive("stranger-1-0", pid) is False
            assert manager.replica_unresponsive(label, pid + 1_000_000) is False
            assert pid_alive(pid) and manager.replicas()[0]["restarts"] == 0
            # Wired as the server wires it: the endpoint reports, the manager ends.
            h.rpc.unresponsive_after = lambda _model: 0.5
            h.rpc.on_unresponsive = lambda r: manager.replica_unresponsive(r.label, r.pid or 0)
            flag.touch()
            stuck = asyncio.ensure_future(h.predict(spec, [1.0, 2.0]))
            await h.until(
                lambda: any(r.pid == pid and why.startswith("no heartbeat") for r, why in h.left),
                "the replica holding the GIL to be removed for silence",
            )
            assert pid_alive(pid)  # hung, not dead: nothing but its manager can end it
            flag.unlink()
            await h.until(
                lambda: any(
                    r["replica"] == label and r["restarts"] >= 1 and r["pid"] not in (None, pid)
                    for r in manager.replicas()
                ),
                f"{label} to be ended and restarted",
            )
            await h.until(lambda: not pid_alive(pid), "the hung process to be gone")
            await h.settled(manager, spec, 1)
            assert (await h.predict(spec, [2.0, 2.0])).output == 4.0
            # The query it hung on is answered: by the new process (it was retried
            # once), or with an error saying why (its deadline passed meanwhile).
            outcome = await asyncio.wait_for(stuck, h.timeout)
            assert outcome.output == 3.0 if outcome.ok else outcome.error, outcome

        drive(body)

    def test_a_frozen_replica_is_ended_and_restarted(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            spec = h.deploy("frozen", models.total)
            await h.scale(manager, spec, 1)
            (victim,) = manager.replicas()
            label, pid = victim["replica"], victim["pid"]
            os.kill(pid, signal.SIGSTOP)
            try:
                await h.until(
                    lambda: any(r.pid == pid for r, _ in h.left), "the frozen replica to be removed"
                )
                assert manager.replica_unresponsive(label, pid) is True
                await h.until(
                    lambda: any(
                        r["replica"] == label and r["pid"] not in (None, pid)
                        for r in manager.replicas()
                    ),
                    f"{label} to be ended and restarted",
                )
                await h.until(lambda: not pid_alive(pid), "the frozen process to be gone")
            finally:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            await h.settled(manager, spec, 1)
            assert (await h.predict(spec, [2.0, 5.0])).output == 7.0

        drive(body)

    def test_a_model_that_does_not_load_is_retried(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            spec = h.deploy("broken", models.Unloadable())
            await manager.reconcile({spec.id: (spec, 1)})
            await h.until(
                lambda: manager.replicas()[0]["restarts"] >= 2, "two restarts of the replica"
            )
            assert h.live(spec) == []
            await manager.reconcile({})
            assert manager.replicas() == []

        drive(body)

    def test_replicas_present_the_secret_over_an_encrypted_socket(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            spec = h.deploy("secure", models.total)
            await h.scale(manager, spec, 1)
            assert (await h.predict(spec, [4.0, 1.0])).output == 5.0

        drive(body, secure=True)

    def test_stop_all_leaves_nothing_running(self, drive: Any) -> None:
        async def body(h: Harness, manager: ContainerManager) -> None:
            a, b = h.deploy("a", models.total), h.deploy("b", models.total)
            await manager.reconcile({a.id: (a, 2), b.id: (b, 1)})
            await h.settled(manager, a, 2)
            await h.settled(manager, b, 1)
            pids = _pids(manager)
            assert len(pids) == 3
            await manager.stop_all()
            assert manager.replicas() == []
            await h.until(lambda: not any(pid_alive(p) for p in pids), "every replica to exit")
            await h.until(lambda: not h.rpc.replicas, "every replica to leave the endpoint")

        drive(body)
