"""The local container manager: each replica a child process, restarted on crash.

The manager starts and stops processes; whether a replica is *live* is the
RPC layer's business (it registered and keeps heartbeating). When the RPC
layer reports a replica hung (silent, yet not exited), the manager kills
that process (:meth:`LocalProcessManager.replica_unresponsive`) and the
supervisor restarts it as after a crash. It stops exactly the processes it
started, and a child stops by itself if the server dies without cleaning up
(``--exit-with-parent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..types import ModelId, ModelOptions, ModelSpec
from .base import reconcile_counts, replica_label
from .devices import Gpu, Placement, PlacementError, discover_gpus, parse_devices, place, usage

log = logging.getLogger("clipper.manager")


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica process runs."""

    model: ModelSpec
    index: int
    # The GPUs it sees (None: its ``devices`` option is unset, the server's
    # environment applies); ``error`` when its placement could not be made.
    placement: Placement | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return replica_label(self.model, self.index)


class _ReplicaProcess:
    """Supervises one replica: start, watch, restart with back-off, stop."""

    def __init__(self, manager: LocalProcessManager, spec: ReplicaSpec) -> None:
        self.manager = manager
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.started_at = 0.0
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"replica-{spec.label}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.spec.model.name,
            "model_version": self.spec.model.version,
            "replica": self.spec.label,
            "pid": self.pid,
            "restarts": self.restarts,
            **self.device_details(),
        }

    def device_details(self) -> dict[str, Any]:
        placement, error = self.spec.placement, self.spec.error
        out: dict[str, Any] = {} if placement is None else {"device": placement.label}
        if error is not None:
            out["device"], out["error"] = None, error
        return out

    def env(self) -> dict[str, str]:
        """The process's environment: the manager's, with its placement's."""
        env = self.manager.child_env
        placement, precision = self.spec.placement, self.spec.model.options.precision
        if placement is None and precision is None:
            return env
        env = dict(env)
        if placement is not None:
            env.update(placement.env())
        if precision is not None:
            env["CLIPPER_PRECISION"] = precision
        return env

    async def _supervise(self) -> None:
        backoff = self.manager.backoff_initial
        if self.spec.error is not None:  # no such device: nothing to start
            log.error("replica %s not started: %s", self.spec.label, self.spec.error)
            return
        while not self._stopping:
            self.started_at = time.monotonic()
            try:
                self.process = await self._spawn()
            except OSError as exc:
                log.error("could not start replica %s: %s", self.spec.label, exc)
            else:
                log.info("started replica %s (pid %d)", self.spec.label, self.process.pid)
                code = await self.process.wait()
                # Tell the RPC layer at once, rather than after a heartbeat timeout.
                self.manager.on_exit(self.process.pid)
                if self._stopping:
                    break
                log.warning("replica %s exited with status %s", self.spec.label, code)
            if time.monotonic() - self.started_at > self.manager.backoff_reset_after:
                backoff = self.manager.backoff_initial
            self.restarts += 1
            log.info("restarting replica %s in %.1fs", self.spec.label, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.manager.backoff_max)

    async def _spawn(self) -> asyncio.subprocess.Process:
        model = self.spec.model
        python = self.manager.python
        env_file = Path(model.model_data_path).parent / "env.json"
        if env_file.is_file():  # deployed with pkgs_to_install: its own environment
            python = json.loads(env_file.read_text())["python"]
        extra = []
        if model.options.memory_limit_mb:
            extra = ["--memory-limit-mb", str(model.options.memory_limit_mb)]
        if self.manager.nice > 0:
            extra += ["--nice", str(self.manager.nice)]
        if self.manager.cpus:
            extra += ["--cpus", self.manager.cpus]
        logfile: IO[bytes] = open(self.manager.log_dir / f"{self.spec.label}.log", "ab")  # noqa: SIM115
        try:
            return await asyncio.create_subprocess_exec(
                python,
                "-m",
                "clipper.container",
                *extra,
                "--address",
                self.manager.rpc_address,
                "--model-name",
                model.name,
                "--model-version",
                model.version,
                "--input-type",
                model.input_type.value,
                "--model-path",
                model.model_data_path,
                "--replica",
                self.spec.label,
                "--exit-with-parent",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                env=self.env(),
                # Own session: a terminal's Ctrl-C reaches the server only, which
                # then stops its replicas in order.
                start_new_session=True,
            )
        finally:
            logfile.close()

    def kill_if(self, pid: int) -> bool:
        """SIGKILL the process if it still runs as ``pid`` (a hung one cannot
        be asked: a handler for SIGTERM needs the GIL); the supervisor restarts it."""
        proc = self.process
        if proc is None or proc.returncode is not None or proc.pid != pid or self._stopping:
            return False
        log.error("replica %s (pid %d) is hung; killing it to restart it", self.spec.label, pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning(
                    "replica %s did not stop in %.0fs; killing it", self.spec.label, timeout
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        log.info("stopped replica %s", self.spec.label)


class LocalProcessManager:
    """Keeps the requested number of replica processes per model version."""

    def __init__(
        self,
        *,
        rpc_address: str,
        state_dir: Path,
        python: str = sys.executable,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        backoff_reset_after: float = 30.0,
        on_exit: Callable[[int], None] = lambda _pid: None,
        secret: str | None = None,
        server_key: bytes | None = None,
        gpus: list[Gpu] | None = None,
        nice: int = 0,
        cpus: str = "",
    ) -> None:
        self.rpc_address = rpc_address
        # Replicas run this much nicer than the server (``replica_nice``): a
        # frontend sharing their cores preempts them and answers on time.
        self.nice = nice
        # The CPUs replicas may run on (``replica_cpus``, as taskset writes them).
        self.cpus = cpus
        # The GPUs replicas may be placed on (None: found on first need, so a
        # server whose models all run on the CPU never asks).
        self._gpus: tuple[list[Gpu], str] | None = None if gpus is None else (gpus, "given")
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_reset_after = backoff_reset_after
        self.on_exit = on_exit
        # Model code gets no management credentials, only what it needs.
        self.child_env = {k: v for k, v in os.environ.items() if k not in ("CLIPPER_ADMIN_TOKEN",)}
        self.child_env["PYTHONUNBUFFERED"] = "1"
        if secret:
            self.child_env["CLIPPER_RPC_SECRET"] = secret
        if server_key:
            self.child_env["CLIPPER_RPC_SERVER_KEY"] = server_key.decode()
        self._replicas: dict[ModelId, list[_ReplicaProcess]] = {}

    async def reconcile(self, desired: dict[ModelId, tuple[ModelSpec, int]]) -> None:
        """Start or stop processes so each model version has its desired count."""
        await reconcile_counts(self._replicas, desired, self._scale)

    async def _scale(self, model: ModelId, spec: ModelSpec | None, count: int) -> None:
        running = self._replicas.setdefault(model, [])
        while len(running) > count:
            await running.pop().stop()
        if spec is not None and len(running) < count:
            placements, error = self._placements(model, spec.options, count)
            while len(running) < count:
                i = len(running)
                where = placements[i] if placements else None
                running.append(_ReplicaProcess(self, ReplicaSpec(spec, i, where, error)))
        if not running:
            del self._replicas[model]

    def replicas(self) -> list[dict[str, Any]]:
        return [r.describe() for procs in self._replicas.values() for r in procs]

    # -- devices ---------------------------------------------------------------------

    def gpus(self) -> tuple[list[Gpu], str]:
        """The GPUs replicas may use, and how they were found (asked once)."""
        if self._gpus is None:
            self._gpus = discover_gpus()
            gpus, how = self._gpus
            log.info("GPUs for replicas: %s (%s)", [g.index for g in gpus] or "none", how)
        return self._gpus

    def check_placement(self, options: ModelOptions, count: int) -> None:
        """PlacementError (a 400) when ``count`` replicas with these options cannot
        be placed on this machine's devices: the deploy call refuses it."""
        if options.devices is not None and count > 0:
            self._place(None, options, count)

    def _place(self, model: ModelId | None, options: ModelOptions, count: int) -> list[Placement]:
        requests = parse_devices(options.devices)
        if all(r.kind == "cpu" for r in requests):
            gpus, how = [], ""  # no need to look for GPUs
        else:
            found, how = self.gpus()
            gpus = [g.index for g in found]
        others = [
            r.spec.placement
            for m, procs in self._replicas.items()
            if m != model
            for r in procs
            if r.spec.placement is not None
        ]
        return place(requests, count, gpus, usage(others), found_by=how)

    def _placements(
        self, model: ModelId, options: ModelOptions, count: int
    ) -> tuple[list[Placement] | None, str | None]:
        """Each replica's placement (None: ``devices`` unset), or why there is none."""
        if options.devices is None:
            return None, None
        try:
            return self._place(model, options, count), None
        except PlacementError as exc:
            log.error("cannot place the replicas of %s: %s", model, exc)
            return None, str(exc)

    def replica_unresponsive(self, label: str, pid: int) -> bool:
        return any(
            r.kill_if(pid)
            for procs in self._replicas.values()
            for r in procs
            if r.spec.label == label
        )

    async def stop_all(self) -> None:
        procs = [r for procs in self._replicas.values() for r in procs]
        self._replicas.clear()
        await asyncio.gather(*(r.stop() for r in procs))
