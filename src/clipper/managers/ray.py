"""The Ray container manager: each replica a Ray actor that runs the container runtime.

Ray does placement, lifecycle and restart; the data path stays ZeroMQ. An
actor gets the model's artifact bytes through Ray (nodes share no state
folder), runs :class:`~clipper.container.runtime.ContainerRuntime` in a
thread and dials the frontend's RPC address over TCP like any container.
The frontend process owns the actors (it is a Ray driver): they die with it.

Failures: when a replica's process or node dies, Ray restarts the actor
(``max_restarts``, unbounded by default), elsewhere if its node is gone;
the supervisor here tells the RPC layer at once (``on_exit(pid)``). When
an actor dies for good (the model does not load, restarts used up), the
supervisor creates a new one after an exponential back-off, as the local
manager restarts a process. Ray (the ``ray`` extra) is imported only here;
the model options read are :data:`RAY_OPTION_KEYS` (see
:class:`RayReplicaOptions`), typed and checked by
:class:`~clipper.types.ModelOptions`: the management API refuses a bad value,
and one in a stored record is set aside there (the default applies), never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..container.runtime import ContainerRuntime
from ..types import ModelId, ModelOptions, ModelSpec
from .base import reconcile_counts, replica_label
from .devices import PlacementError, parse_devices

log = logging.getLogger("clipper.manager")

RAY_OPTION_KEYS: tuple[str, ...] = ("ray_num_cpus", "ray_num_gpus", "ray_memory_mb")
RAY_OPTION_KEYS += ("ray_resources", "ray_placement", "ray_max_restarts")  # what this reads
RAY_OPTION_KEYS += ("devices", "precision")

INLINE_ARTIFACT_BYTES = 90 * 1024  # below Ray's inline limit for task arguments (100 KiB)
WILDCARD_HOSTS = ("0.0.0.0", "*", "", "::")


def import_ray() -> Any:
    """The ``ray`` module, or a RuntimeError that says how to install it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the dev extra
        raise RuntimeError(
            "the Ray container manager needs Ray: pip install 'clipper-serve[ray]'"
        ) from exc
    return ray


@dataclass(frozen=True)
class RayReplicaOptions:
    """What a replica asks of Ray, from a model version's options.

    - ``ray_num_cpus`` (number >= 0): CPUs reserved per replica. Unset: Ray's
      actor default (schedulable on a node with a CPU, none reserved).
    - ``ray_num_gpus`` (number >= 0): GPUs per replica, passed to Ray as is.
    - ``ray_memory_mb`` (integer >= 1): memory reserved per replica (a
      scheduling request, not a limit).
    - ``ray_resources`` (object of name -> number): custom resources per
      replica; pins replicas to nodes started with them
      (``ray start --resources '{"gpu_box": 100}'``).
    - ``ray_placement``: ``"spread"`` (default: each new replica goes to the
      alive node that fits and holds the fewest replicas of this model, a soft
      preference that Ray overrides when that node is gone) or ``"pack"``
      (Ray's default scheduler decides).
    - ``ray_max_restarts`` (integer >= -1): Ray's restarts of a crashed actor
      before the manager re-creates it after a back-off; -1 (default): no bound.
    - ``devices``: mapped to ``num_gpus`` (``"cpu"``: 0, ``"cuda"``: 1, a
      number as is, ``"cuda:I,J"``: as many GPUs as it names, which Ray
      picks; a list: replica ``i`` takes entry ``i``); ``"cuda:all"`` names
      no count and is refused. With ``precision``, it reaches the replica's
      deployer as ``CLIPPER_DEVICE`` and ``CLIPPER_PRECISION`` (Ray itself
      sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned).
    """

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory_mb: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    placement: str = "spread"
    max_restarts: int = -1
    env: dict[str, str] = field(default_factory=dict)  # for the replica's deployer

    @classmethod
    def from_model_options(cls, options: ModelOptions, index: int = 0) -> RayReplicaOptions:
        num_gpus, env = options.ray_num_gpus, {}
        if options.devices is not None:
            try:
                num_gpus = gpus_for_replica(options, index)
            except PlacementError as exc:  # stored before this check existed: 1 GPU
                log.error("%s; asking Ray for 1 GPU per replica", exc)
                num_gpus = 1.0
            env["CLIPPER_DEVICE"] = "cuda" if num_gpus else "cpu"
        if options.precision is not None:
            env["CLIPPER_PRECISION"] = options.precision
        return cls(
            num_cpus=options.ray_num_cpus,
            num_gpus=num_gpus,
            env=env,
            memory_mb=options.ray_memory_mb,
            resources={k: float(v) for k, v in options.ray_resources.items()},
            placement=options.ray_placement,
            max_restarts=options.ray_max_restarts,
        )

    def requirements(self) -> dict[str, float]:
        """The resources a node must have in total to hold one replica."""
        need = dict(self.resources)
        # An actor without num_cpus still needs a CPU to be scheduled (Ray's default).
        need["CPU"] = 1.0 if self.num_cpus is None else self.num_cpus
        if self.num_gpus:
            need["GPU"] = self.num_gpus
        if self.memory_mb:
            need["memory"] = self.memory_mb * 1024 * 1024
        return {k: v for k, v in need.items() if v > 0}

    def actor_options(self) -> dict[str, Any]:
        """Keyword arguments for ``ActorClass.options``."""
        memory = self.memory_mb * 1024 * 1024 if self.memory_mb else None
        asked: dict[str, Any] = dict(num_cpus=self.num_cpus, num_gpus=self.num_gpus, memory=memory)
        asked["resources"] = dict(self.resources) or None
        out = {"max_restarts": self.max_restarts, "max_concurrency": 4}
        return out | {k: v for k, v in asked.items() if v is not None}


def gpus_for_replica(options: ModelOptions, index: int) -> float:
    """Ray's ``num_gpus`` for replica ``index`` of a version with ``devices`` set;
    PlacementError (a 400 at deploy) for a form that names no number of GPUs."""
    requests = parse_devices(options.devices)
    request = requests[min(index, len(requests) - 1)]
    count = request.gpus_per_replica
    if count is None:
        raise PlacementError(
            f"option 'devices' {request.text!r} names no number of GPUs, which the Ray manager "
            'needs: give "cuda" (one per replica) or a number such as 2 or 0.5'
        )
    return count


def _fits(total: dict[str, float], need: dict[str, float]) -> bool:
    return all(total.get(k, 0.0) >= v for k, v in need.items())


class ReplicaActor:
    """One replica, inside a Ray worker process: the container runtime in a thread.

    Ray calls the constructor again on every restart, so a restarted actor
    reconnects and registers by itself. Methods run on the actor's thread
    pool (``max_concurrency``), so ``wait`` may block while ``stop`` is called.
    """

    def __init__(self, artifact: Any, config: dict[str, Any]) -> None:
        import cloudpickle

        self.label = str(config["replica_label"])
        handler = logging.StreamHandler()  # the worker's stderr: Ray's log files
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("clipper").addHandler(handler)
        logging.getLogger("clipper").setLevel(logging.INFO)
        self._restart_delay = float(config.pop("restart_delay", 1.0))
        os.environ.update(config.pop("env", None) or {})  # before the model loads
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._status = 0
        # ``artifact``: bytes (a small one), or a read-only uint8 array that Ray maps
        # from its object store without a copy: unpickled straight from there.
        model = cloudpickle.loads(memoryview(artifact))
        del artifact
        self._runtime = ContainerRuntime(model, **config)
        self._thread = threading.Thread(target=self._serve, name="clipper-replica", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # Ray prefixes forwarded log lines with it
        return f"ReplicaActor({self.label})"

    def _serve(self) -> None:
        try:
            self._status = self._runtime.serve_forever()
        except Exception:
            logging.getLogger("clipper.container").exception("the container runtime failed")
            self._status = 1
        finally:
            self._done.set()
        if self._status != 0 and not self._stopping.is_set():
            # Out of memory (3), rejected (2) or broken: end this process so Ray
            # starts a fresh one, after a pause so a rejected replica cannot spin.
            time.sleep(self._restart_delay)
            os._exit(self._status)

    def info(self) -> dict[str, Any]:
        """Where this replica runs: its process id and its Ray node."""
        ray = import_ray()
        node_id, node_ip = ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
        gpus = [str(g) for g in ray.get_gpu_ids()]
        device = "cuda:" + ",".join(gpus) if gpus else "cpu"
        return {"pid": os.getpid(), "node_ip": node_ip, "node_id": node_id, "device": device}

    def wait(self) -> int:
        """Block until the runtime stops; its exit status."""
        self._done.wait()
        return self._status

    def stop(self, timeout: float) -> int:
        """Stop serving: finish the batch in progress, say goodbye to the frontend."""
        self._stopping.set()
        self._runtime.stop()
        self._thread.join(timeout)
        return self._status


class _Replica:
    """The manager's side of one replica actor: creates it, watches it, stops it."""

    def __init__(self, manager: RayContainerManager, spec: ModelSpec, index: int) -> None:
        self.manager = manager
        self.spec = spec
        self.index = index
        self.label = replica_label(spec, index)
        self.options = RayReplicaOptions.from_model_options(spec.options, index)
        self.device: str | None = None
        self.handle: Any = None
        self.pid: int | None = None
        self.node_id: str | None = None
        self.node_ip: str | None = None
        self.state = "starting"
        self.restarts = 0
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"ray-replica-{self.label}")

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.spec.name,
            "model_version": self.spec.version,
            "replica": self.label,
            "pid": self.pid,
            "restarts": self.restarts,
            "node": self.node_ip,
            "state": self.state,
            **({"device": self.device} if self.spec.options.devices is not None else {}),
        }

    def _lost(self, why: str) -> None:
        self.state = "restarting"
        if self.pid is not None:
            log.warning(
                "replica %s (pid %d on %s) lost: %s", self.label, self.pid, self.node_ip, why
            )
            # Tell the RPC layer now, not after its heartbeat timeout. A pid is unique
            # per node only: a live replica elsewhere that shares it is dropped and
            # registers again on its next heartbeat.
            self.manager.on_exit(self.pid)
        self.pid = None

    async def _supervise(self) -> None:
        ray = import_ray()
        backoff = self.manager.backoff_initial
        seen_pid: int | None = None
        while not self._stopping:
            try:
                if self.handle is None:
                    self.handle = self.manager.create_actor(self)
                info = await self.handle.info.remote()
                if seen_pid is not None and info["pid"] != seen_pid:
                    self.restarts += 1
                    log.info("replica %s restarted by Ray on %s", self.label, info["node_ip"])
                seen_pid = self.pid = info["pid"]
                self.node_id, self.node_ip = info["node_id"], info["node_ip"]
                self.device = info.get("device")
                self.state, backoff = "running", self.manager.backoff_initial
                await self.handle.wait.remote()
                return  # the runtime stopped: we asked it to
            except ray.exceptions.ActorUnavailableError as exc:
                self._lost(type(exc).__name__)  # its process or node died: Ray restarts it
                await asyncio.sleep(0.1)
            except Exception as exc:  # gone for good (the model does not load...): anew
                if self._stopping:
                    return
                self._lost("actor died")
                why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                log.error("replica %s failed (%s); again in %.1fs", self.label, why, backoff)
                self._kill()
                self.restarts += 1
                seen_pid = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.manager.backoff_max)

    def kill_if(self, pid: int) -> bool:
        """End the actor if its process is still ``pid``: Ray restarts it."""
        if self.handle is None or self.pid != pid or self._stopping:
            return False
        log.error("replica %s (pid %d on %s) is hung; killing it", self.label, pid, self.node_ip)
        with contextlib.suppress(Exception):
            import_ray().kill(self.handle, no_restart=False)
        return True

    def _kill(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                import_ray().kill(handle, no_restart=True)

    async def stop(self, timeout: float) -> None:
        """Drain the runtime (it says goodbye to the frontend), then end the actor."""
        self._stopping = True
        if self.handle is not None:
            # A replica still starting (or being restarted) may be up already, or
            # may wait for a node that fits: give it a moment, not the full drain.
            patience = timeout + 2.0 if self.state == "running" else 1.0
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.handle.stop.remote(timeout), patience)
        self._kill()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.pid is not None:
            self.manager.on_exit(self.pid)
        log.info("stopped replica %s", self.label)


class RayContainerManager:
    """Keeps the requested number of replica actors per model version on a Ray cluster.

    ``address``: a running cluster (``"host:port"`` or ``"auto"``); empty
    starts a local one (``ray.init()``), owned by this process. The
    connection is made on the first :meth:`reconcile`.
    """

    def __init__(
        self,
        *,
        rpc_address: str,
        address: str = "",
        on_exit: Callable[[int], None] = lambda _pid: None,
        secret: str | None = None,
        server_key: bytes | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        stop_timeout: float = 5.0,
        restart_delay: float = 1.0,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        self.rpc_address, self.address, self.on_exit = rpc_address, address, on_exit
        self.secret, self.server_key = secret, server_key
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.stop_timeout, self.restart_delay = stop_timeout, restart_delay
        self.init_options = dict(init_options or {})  # more ray.init() arguments
        self._replicas: dict[ModelId, list[_Replica]] = {}
        self._artifacts: dict[ModelId, tuple[tuple[str, int, int], Any]] = {}
        self._actor_class: Any = None
        self._owns_connection = False
        self._container_address = rpc_address
        self._lock = asyncio.Lock()
        self._warned_envs: set[ModelId] = set()

    # -- connection -------------------------------------------------------------

    def connect(self) -> None:
        """Join the Ray cluster (or start a local one), once."""
        ray = import_ray()
        if self._actor_class is not None and ray.is_initialized():
            return
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address or None, "log_to_driver": True}
            if not self.address:
                kwargs["include_dashboard"] = False
            kwargs.update(self.init_options)
            main = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGTERM) if main else None
            ray.init(**kwargs)
            if previous is not None:  # ray.init replaces it; the server drains on SIGTERM
                signal.signal(signal.SIGTERM, previous)
            self._owns_connection = True  # (a process has one Ray connection, shared)
            log.info("connected to Ray (%s)", self.address or "a local cluster started here")
        self._container_address = self._address_for_containers(ray)
        self._actor_class = ray.remote(ReplicaActor)

    def _address_for_containers(self, ray: Any) -> str:
        """The frontend's RPC address as replicas on any node must dial it."""
        parts = urllib.parse.urlsplit(self.rpc_address)
        host = parts.hostname or ""
        if host in WILDCARD_HOSTS:
            # Bound on every interface: dial the address Ray knows this node by.
            host = ray.util.get_node_ip_address()
            return f"tcp://{host}:{parts.port}"
        if host.startswith("127.") or host in ("localhost", "::1"):
            here = ray.util.get_node_ip_address()
            remote = sorted(
                ip
                for n in ray.nodes()
                if n.get("Alive")
                and not (ip := str(n.get("NodeManagerAddress", ""))).startswith("127.")
                and ip != here
            )
            if remote:
                log.warning(
                    "the RPC endpoint %s is loopback-only, but Ray nodes %s may be on other "
                    "machines: their replicas cannot connect (set --rpc-host 0.0.0.0)",
                    self.rpc_address,
                    ", ".join(remote),
                )
        return self.rpc_address

    # -- replicas ---------------------------------------------------------------

    def _artifact(self, spec: ModelSpec) -> Any:
        """The model's artifact as an actor argument: its bytes, or a shared ObjectRef.

        Small artifacts travel inside each actor's creation spec; a large one is
        put in the object store once per version and held here while the version
        has replicas (Ray logs, per actor, that restarts need it kept alive). A
        large one goes as a uint8 array over the file's memory map: Ray copies it
        into the object store from the page cache (this process never holds it
        whole on its heap), and actors read it there in place (no copy each).
        """
        path = Path(spec.model_data_path)
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        cached = self._artifacts.get(spec.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        if (path.parent / "env.json").is_file() and spec.id not in self._warned_envs:
            self._warned_envs.add(spec.id)
            log.warning(
                "model %s was deployed with its own packages (pkgs_to_install); Ray replicas "
                "run in the Ray workers' environment: install them on every Ray node",
                spec.id,
            )
        if stat.st_size <= INLINE_ARTIFACT_BYTES:
            ref: Any = path.read_bytes()
        else:
            import numpy as np

            mapped = np.memmap(path, dtype=np.uint8, mode="r")
            ref = import_ray().put(np.asarray(mapped))  # a plain array: pickled out of band
            del mapped
        self._artifacts[spec.id] = (key, ref)
        return ref

    def _pick_node(self, replica: _Replica) -> str | None:
        """For ``spread``: the alive, fitting node with fewest replicas of this model."""
        need = replica.options.requirements()
        nodes = [
            n["NodeID"]
            for n in import_ray().nodes()
            if n.get("Alive") and _fits(n.get("Resources", {}), need)
        ]
        if not nodes:
            return None  # nothing fits now: let Ray queue it until a node does
        mine = Counter(r.node_id for r in self._replicas.get(replica.spec.id, []) if r.node_id)
        ours = Counter(r.node_id for rs in self._replicas.values() for r in rs if r.node_id)
        return min(nodes, key=lambda n: (mine[n], ours[n], n))

    def create_actor(self, replica: _Replica) -> Any:
        """Start the actor of one replica (Ray schedules it; this does not wait)."""
        ray = import_ray()
        spec = replica.spec
        options = replica.options.actor_options()
        if replica.options.placement == "spread":
            node = self._pick_node(replica)
            if node is not None:
                replica.node_id = node  # counted for the next pick, until info() says
                strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
                options["scheduling_strategy"] = strategy(node_id=node, soft=True)
        config = dict(
            address=self._container_address,
            replica_label=replica.label,
            model_name=spec.name,
            model_version=spec.version,
            input_type=spec.input_type.value,
            restart_delay=self.restart_delay,
            env=replica.options.env,
            secret=self.secret,
            server_key=self.server_key,
        )
        log.info("starting replica %s as a Ray actor", replica.label)
        return self._actor_class.options(**options).remote(self._artifact(spec), config)

    async def reconcile(self, desired: dict[ModelId, tuple[ModelSpec, int]]) -> None:
        """Create or end actors so each model version has its desired count."""
        async with self._lock:
            self.connect()
            await reconcile_counts(self._replicas, desired, self._scale)

    async def _scale(self, model: ModelId, spec: ModelSpec | None, count: int) -> None:
        running = self._replicas.setdefault(model, [])
        surplus = []
        while len(running) > count:
            surplus.append(running.pop())
        await asyncio.gather(*(r.stop(self.stop_timeout) for r in surplus))
        while spec is not None and len(running) < count:
            running.append(_Replica(self, spec, len(running)))
        if not running:
            del self._replicas[model]
            self._artifacts.pop(model, None)

    def replica_unresponsive(self, label: str, pid: int) -> bool:
        return any(r.kill_if(pid) for rs in self._replicas.values() for r in rs if r.label == label)

    def check_placement(self, options: ModelOptions, count: int) -> None:
        """PlacementError (a 400) for a ``devices`` form Ray cannot express, or a
        per-replica list shorter than ``count``; Ray itself queues replicas that
        no node can hold yet (the status shows them ``starting``)."""
        if options.devices is None:
            return
        requests = parse_devices(options.devices)
        if len(requests) > 1 and count > len(requests):
            raise PlacementError(
                f"option 'devices' lists {len(requests)} entries, one per replica, "
                f"but {count} replicas are wanted"
            )
        for i in range(min(count, len(requests))):
            gpus_for_replica(options, i)

    def replicas(self) -> list[dict[str, Any]]:
        """Each replica, with the Ray node it runs on (``node``) and its ``state``."""
        return [r.describe() for reps in self._replicas.values() for r in reps]

    async def stop_all(self) -> None:
        """End every actor; then leave the cluster if this manager joined it."""
        async with self._lock:
            reps = [r for reps in self._replicas.values() for r in reps]
            self._replicas.clear()
            await asyncio.gather(*(r.stop(self.stop_timeout) for r in reps))
            self._artifacts.clear()
            if self._owns_connection:
                import_ray().shutdown()
                self._owns_connection = False
                self._actor_class = None
