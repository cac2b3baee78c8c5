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

from ..types import ModelId, ModelSpec
from .base import reconcile_counts, replica_label

log = logging.getLogger("clipper.manager")


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica process runs."""

    model: ModelSpec
    index: int

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
        }

    async def _supervise(self) -> None:
        backoff = self.manager.backoff_initial
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
                env=self.manager.child_env,
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
    ) -> None:
        self.rpc_address = rpc_address
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
        while spec is not None and len(running) < count:
            running.append(_ReplicaProcess(self, ReplicaSpec(spec, len(running))))
        if not running:
            del self._replicas[model]

    def replicas(self) -> list[dict[str, Any]]:
        return [r.describe() for procs in self._replicas.values() for r in procs]

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
