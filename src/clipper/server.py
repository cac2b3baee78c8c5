"""The composition root: ``python -m clipper.server`` wires every layer together.

One process hosts the query frontend, the management frontend, the RPC
endpoint and the container manager (DESIGN.md's process model). This is the
only module that imports across layers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import ipaddress
import logging
import logging.handlers
import os
import signal
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from . import settings as settings_mod
from .address import connect_host
from .batching.controllers import (
    AIMDController,
    BatchSizeController,
    FixedBatchSize,
    QuantileRegressionController,
)
from .batching.dispatcher import Dispatcher, ModelConfig, ModelStatistics
from .batching.model_state import merge_statistics
from .cache import PredictionCache
from .cache.prediction_cache import CacheStatistics
from .dashboard import Dashboard
from .exceptions import StoreError, ValidationError
from .frontend.brownout import Brownout
from .frontend.metrics_route import metrics_route
from .frontend.oip import OIPFrontend
from .frontend.oip import error as oip_error
from .frontend.query import QueryFrontend
from .gpu_metrics import GpuMonitor, start_gpu_monitor
from .http.auth import HostOriginGuard
from .http.server import Handler, HTTPServer
from .management.api import ManagementFrontend
from .management.autoscale import Autoscaler
from .management.service import ManagementService
from .managers.base import ContainerManager
from .managers.local import LocalProcessManager
from .metrics import (
    Counters,
    Metrics,
    ReplicaStatistics,
    ServerStatistics,
    pick_format,
)
from .rpc.protocol import curve_keypair
from .rpc.server import Replica, RPCServer
from .selection.processor import QueryProcessor
from .selection.rollouts import RolloutRouter
from .selection.state import PolicyStates
from .settings import Settings
from .statedir import (
    ADMIN_TOKEN_FILE,
    RPC_SECRET_FILE,
    load_or_create_secret,
    private_dir,
    remove_server_record,
    write_server_record,
)
from .store import open_store
from .store.catalog import Catalog
from .types import InputType, ModelId, ModelOptions
from .workers import Channel, Retired, Worker, WorkerPool

log = logging.getLogger("clipper.server")

DEFAULT_SLO_MICROS = 100_000  # for a model no app links to yet
MAX_BATCH_SIZE = 1024


def _check_settings(settings: Settings) -> None:
    """Refuse settings that cannot work, before anything is opened or written."""
    if bool(settings.tls_certfile) != bool(settings.tls_keyfile):
        raise ValidationError("TLS needs both --tls-certfile and --tls-keyfile")
    if settings.manager not in ("local", "ray"):
        raise ValidationError(
            f"unknown container manager {settings.manager!r}; use 'local' or 'ray'"
        )
    if settings.batching not in ("aimd", "quantile", "fixed"):
        raise ValidationError(
            f"unknown batching policy {settings.batching!r}; use aimd, quantile or fixed"
        )
    if settings.rpc_curve not in ("", "off", "on"):
        raise ValidationError("--rpc-curve takes 'on' or 'off'")


class ClipperServer:
    """Every layer of one query frontend, wired together.

    With ``--workers N`` (N > 1), the process ``clipper start`` runs is the
    supervisor (``worker_index`` 0): all of this, plus N - 1 worker processes
    (:mod:`clipper.workers`). A worker (``supervisor`` given: its control
    channel) is this class without the management port, the container
    manager, the autoscaler and the rollouts' decisions."""

    def __init__(
        self, settings: Settings, *, supervisor: Channel | None = None, worker_index: int = 0
    ) -> None:
        _check_settings(settings)
        self.settings = settings
        self.supervisor = supervisor  # a worker's channel to its supervisor
        self.worker_index = worker_index
        self.is_worker = supervisor is not None
        # A supervisor's workers (made in start(): the ports must be bound first).
        self.pool: WorkerPool | None = None
        # What workers that exited had counted (their last reports, gauges left
        # out): still in the sums, so counters never go back when one restarts.
        self._retired = Retired()
        # With workers, every process serves the supervisor's summed exposition
        # (by content type), so a scrape reads the same figures from any of them.
        self.shared_exposition: dict[str, bytes] | None = None
        private_dir(settings.state_dir)
        # Closed by default: a token and a secret always, generated at first
        # start unless configured (then owner-only files in the state folder).
        self.admin_token = settings.admin_token or load_or_create_secret(
            settings.state_dir, ADMIN_TOKEN_FILE
        )
        self.rpc_secret = settings.rpc_secret or load_or_create_secret(
            settings.state_dir, RPC_SECRET_FILE
        )
        self.ready = False
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # From the bottom of the layer diagram up.
        self.store = open_store(settings.store)
        self.catalog = Catalog(self.store)
        self.cache = PredictionCache(settings.cache_bytes) if settings.cache_bytes > 0 else None
        self.dispatcher = Dispatcher(
            configure=self._configure_model,
            cache=self.cache,
            shed_at_arrival=self.settings.shed_at_arrival,
        )
        curve_public = self._wire_rpc()
        self.manager: ContainerManager | None = None
        self.service: ManagementService | None = None
        if self.is_worker:
            self._wire_metrics(scale=_no_scaling)
        else:
            self.manager = self._container_manager(curve_public)
            self._wire_management(self.manager)
        self._wire_queries()

    def _wire_rpc(self) -> bytes | None:
        """The RPC endpoint replicas register with; returns the server's CurveZMQ
        public key (None without encryption), which replicas are given."""
        st = self.settings
        curve_public = curve_secret = None
        if st.rpc_curve == "on":
            curve_public, curve_secret = curve_keypair(str(st.state_dir / "curve"))
        self.rpc = RPCServer(
            # A worker's own port: any free one, which it tells its supervisor.
            f"tcp://{st.rpc_host}:{0 if self.is_worker else st.rpc_port}",
            self.dispatcher,
            check_registration=self._check_registration,
            heartbeat_interval=st.heartbeat_interval,
            heartbeat_timeout=st.heartbeat_timeout,
            secret=self.rpc_secret,
            curve_secret_key=curve_secret,
            # Only the supervisor's manager can end a hung replica's process.
            on_unresponsive=None if self.is_worker else self._replica_hung,
            unresponsive_after=self._hung_after,
            peers=self._worker_ports if st.workers > 1 and not self.is_worker else None,
            # Replicas on this host: a Unix socket in the state folder (rpc/stream.py).
            local_dir=str(st.state_dir / "run") if st.local_rpc else None,
        )
        self.dispatcher.set_transport(self.rpc)  # batches go out encoded by the RPC server
        return curve_public

    def _container_manager(self, curve_public: bytes | None) -> ContainerManager:
        st = self.settings
        if st.manager == "ray":
            from .managers.ray import RayContainerManager  # Ray is an optional extra

            return RayContainerManager(
                # Unresolved: a wildcard host becomes this node's Ray address.
                rpc_address=f"tcp://{st.rpc_host}:{st.rpc_port}",
                address=st.ray_address,
                on_exit=self._process_exited,
                secret=self.rpc_secret,
                server_key=curve_public,
            )
        return LocalProcessManager(
            rpc_address=st.rpc_address,
            state_dir=st.state_dir,
            on_exit=self._process_exited,
            secret=self.rpc_secret,
            server_key=curve_public,
            nice=st.replica_nice,
            cpus=self._replica_cpus(),
        )

    def _replica_cpus(self) -> str:
        """``replica_cpus``, checked against the CPUs this server may use."""
        cpus = settings_mod.parse_cpu_list(self.settings.replica_cpus)
        have = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else cpus
        if not cpus <= have:
            raise ValueError(
                f"replica_cpus {self.settings.replica_cpus!r} names CPUs this server cannot "
                f"use: {sorted(cpus - have)} (it may use {sorted(have)})"
            )
        return self.settings.replica_cpus

    def _wire_metrics(self, scale: Callable[[], Awaitable[None]]) -> None:
        """The autoscaler (``scale`` applies its targets) and the metrics."""
        self.autoscaler = Autoscaler(self._autoscale_statistics, self._model_options, scale)
        self.gpu_monitor: GpuMonitor | None = None  # started with the server, where GPUs are
        self.metrics = Metrics(self.statistics, catalog=self.catalog, store=self.store)
        self.dispatcher.batch_listeners.append(self.metrics.observe_batch)
        # Once a second: deleted versions' state goes once their last replica has.
        self.metrics.add_listener(lambda _now, _stats: self._forget_deleted())
        if self.is_worker:
            self.metrics.log_misses = False  # the supervisor logs the sums
            self.metrics.add_listener(lambda _now, _stats: self._report_to_supervisor())
        elif self.settings.workers > 1:
            self.metrics.peers = self._worker_counters
            self.metrics.add_listener(lambda _now, _stats: self._publish_metrics())

    def _wire_management(self, manager: ContainerManager) -> None:
        """The management service, the autoscaler, the metrics, and their port."""
        st = self.settings
        service = self.service = ManagementService(
            self.store,
            self.catalog,
            manager,
            st.state_dir,
            default_batch_size=st.default_batch_size,
            max_artifact_bytes=st.max_artifact_bytes,
        )
        service.uploads.prepare()  # what earlier runs left unused goes
        self._wire_metrics(scale=service.sync_replicas)
        service.replica_target = self.autoscaler.target
        service.listeners.append(self._after_change)
        self.metrics.add_listener(lambda _now, _stats: service.uploads.sweep_if_due())
        self.management_app = ManagementFrontend(
            service,
            self.status,
            admin_token=self.admin_token,
            dashboard=Dashboard(self.metrics, self.catalog),
            is_ready=lambda: self.ready,
            secure=bool(st.tls_certfile),
        )
        self.management_http = self._http_server("management", self.management_app.handle)
        self.management_http.stream = self.management_app.stream  # artifact uploads

    def _wire_queries(self) -> None:
        """The selection layer, the query and OIP frontends, and their port."""
        st = self.settings
        self.processor = QueryProcessor(
            self.catalog,
            self.dispatcher,
            PolicyStates(
                self.store, max_bytes=st.policy_cache_bytes, max_user_states=st.max_user_states
            ),
            observer=self.metrics,
            is_autoscaled=self.autoscaler.is_autoscaled,
        )
        # Safe rollouts (#27): routing, shadow copies, evidence, the bandit's decisions.
        self.rollouts = RolloutRouter(
            self.catalog,
            self.dispatcher,
            self.store,
            self.service,
            clock=self.processor.clock,
            is_autoscaled=self.autoscaler.is_autoscaled,
            follower=self.is_worker,
        )
        self.processor.rollouts = self.rollouts
        if self.service is not None:
            self.service.rollout_report = self.rollouts.rollout_report
        self.metrics.rollouts = self.rollouts.snapshot
        self.metrics.add_listener(lambda _now, _stats: self.rollouts.tick())
        self.oip = OIPFrontend(
            self.catalog,
            self.processor,
            max_body_bytes=st.max_body_bytes,
            is_ready=lambda: self.ready,
            max_batch_inputs=st.max_batch_inputs,
        )
        # Shed before parsing while the event loop runs late (with shed_at_arrival).
        self.brownout = Brownout() if st.shed_at_arrival else None
        self.query_app = QueryFrontend(
            self.catalog,
            self.processor,
            is_ready=lambda: self.ready,
            v2=self.oip.handle,
            v2_error=oip_error,
            metrics=metrics_route(self._exposition, st.metrics_token),
            max_batch_inputs=st.max_batch_inputs,
            brownout=self.brownout,
        )
        self.query_http = self._http_server("query", self.query_app.handle)
        self.query_http.error_page = self.query_app.error_page
        self.grpc: Any = None  # the OIP's gRPC server (grpc.aio), made on the loop in start()
        self.grpc_port = st.grpc_port  # the bound one, once started

    def _http_server(self, name: str, handler: Handler) -> HTTPServer:
        """One of the two ports: the same HTTP stack, limits and Host/Origin guard."""
        st = self.settings
        guard = HostOriginGuard(
            bind_host=st.host,
            loopback=_is_loopback(st.host),
            scheme="https" if st.tls_certfile else "http",
            allowed_hosts=st.allowed_hosts.split(","),
            allowed_origins=st.allowed_origins.split(","),
        )
        return HTTPServer(
            handler,
            max_body_bytes=st.max_body_bytes,
            header_timeout_s=st.request_head_timeout,
            body_timeout_s=st.request_body_timeout,
            max_connections=st.max_connections,
            max_inflight_bytes=st.max_inflight_bytes,
            guard=guard,
            name=name,
        )

    # -- wiring callbacks ---------------------------------------------------------

    def _configure_model(self, model: ModelId) -> ModelConfig:
        """Batching and queueing of a model version, from its spec and the settings."""
        st = self.settings
        spec = self.catalog.model(model)
        slo_micros = self.catalog.slo_for_model(model.name) or DEFAULT_SLO_MICROS
        target = slo_micros / 1e6 * st.batch_slo_fraction
        # The model's options override the settings; unset (None), the setting applies.
        options = spec.options if spec is not None else ModelOptions()
        policy = options.batching or st.batching
        fixed = spec.batch_size if spec is not None and spec.batch_size > 0 else None
        controller: BatchSizeController
        if policy == "fixed" or (fixed and options.batching is None):
            controller = FixedBatchSize(fixed or st.default_batch_size)
        elif policy == "quantile":
            controller = QuantileRegressionController(target, ceiling=fixed or MAX_BATCH_SIZE)
        else:
            controller = AIMDController(target, ceiling=fixed or MAX_BATCH_SIZE)
        delay_ms, capacity = options.max_batch_delay_ms, options.queue_capacity
        return ModelConfig(
            controller,
            max_delay_s=float(st.max_batch_delay_ms if delay_ms is None else delay_ms) / 1000,
            queue_capacity=int(st.queue_capacity if capacity is None else capacity),
            # Far beyond any sane batch: a replica stuck this long is restarted.
            batch_time_limit_s=max(10 * slo_micros / 1e6, 5.0),
        )

    def _hung_after(self, model: ModelId) -> float:
        """How long a replica removed for silence may stay away before its process
        is ended: the model's batch time limit, which the container's own
        watchdog enforces whenever it can run."""
        return self._configure_model(model).batch_time_limit_s or 30.0

    def _replica_hung(self, replica: Replica) -> None:
        manager = self.manager
        if (
            replica.pid is None
            or manager is None
            or not manager.replica_unresponsive(replica.label, replica.pid)
        ):
            log.warning(
                "replica %s (pid %s) looks hung, but this server's container manager did not"
                " start that process (a container started by hand?): it is left running",
                replica.label,
                replica.pid,
            )

    def _autoscale_statistics(self) -> list[ModelStatistics]:
        """What the autoscaler reads: the dispatcher's typed statistics, per model
        version (summed over the workers)."""
        return self._model_statistics()

    def _model_statistics(self) -> list[ModelStatistics]:
        """The dispatcher's statistics, with the workers' summed in (a supervisor's)."""
        own = self.dispatcher.statistics()
        if self.pool is None:
            return own
        live = [w.stats["models"] for w in self.pool.workers if w.stats is not None]
        return merge_statistics(own, [*live, self._retired.models])

    def _cache_statistics(self) -> CacheStatistics | None:
        if self.cache is None:
            return None
        total = self.cache.statistics()
        for worker in self.pool.workers if self.pool is not None else ():
            if worker.stats is not None and worker.stats["cache"] is not None:
                total = total + worker.stats["cache"]
        if self._retired.cache is not None:
            total = total + self._retired.cache
        return total

    def _model_options(self) -> dict[ModelId, ModelOptions]:
        return {m: spec.options for m, spec in self.catalog.snapshot.models.items()}

    def _forget_deleted(self) -> None:
        """Drop what the dispatcher keeps of deleted model versions (when drained)."""
        self.dispatcher.forget(self.catalog.snapshot.models.keys())

    def _after_change(self) -> None:
        if self.pool is not None:  # the workers read the store again
            self.pool.broadcast({"type": "changed"})
        self.autoscaler.refresh()
        self._forget_deleted()
        self.dispatcher.reconfigure()
        self.processor.states.clear()
        self.rollouts.sync()
        if self.cache is not None:
            self.cache.retain_models({(m.name, m.version) for m in self.catalog.snapshot.models})

    def _check_registration(self, model: ModelId, input_type: str) -> str | None:
        try:
            self.catalog.refresh()
        except StoreError as exc:  # the store is down: judge by the last snapshot
            log.warning(
                "store unavailable (%s); checking a registration against the last known state", exc
            )
        spec = self.catalog.model(model)
        if spec is None:
            return f"model {model} is not registered with this Clipper; add it first"
        try:
            itype = InputType.parse(input_type)
        except ValueError as exc:
            return str(exc)
        if itype != spec.input_type:
            return f"model {model} takes '{spec.input_type.value}', not '{itype.value}'"
        return None

    def statistics(self) -> ServerStatistics:
        """What the dispatcher, the cache and the container manager count, typed: what
        the metrics and the dashboard read, and ``status()`` renders."""
        live = {(r.model, r.label): r for r in self.dispatcher.replicas()}
        if self.pool is not None:  # live: registered with every worker that serves
            served = [w.stats["replicas"] for w in self.pool.workers if w.stats is not None]
            live = {key: r for key, r in live.items() if all(key in s for s in served)}
        batching = self.dispatcher.replica_batching()

        def replica(
            key: tuple[ModelId, str], is_live: bool, details: dict[str, Any]
        ) -> ReplicaStatistics:
            # Each live replica's own batch-size maximum and latency estimate.
            stats = batching.get(key)
            return ReplicaStatistics(
                model=key[0],
                replica=key[1],
                live=is_live,
                restarts=int(details.get("restarts") or 0),
                max_batch_size=stats.max_batch_size if stats is not None else None,
                latency_estimate_ms=stats.latency_estimate_ms if stats is not None else None,
                details=details,
            )

        replicas = []
        for proc in self.manager.replicas() if self.manager is not None else ():
            key = (ModelId(proc["model_name"], proc["model_version"]), proc["replica"])
            rpc = live.pop(key, None)
            if rpc is not None and rpc.runtime:  # what it says it runs on (device, provider)
                proc = {**proc, "runtime": dict(rpc.runtime)}
            replicas.append(replica(key, rpc is not None, proc))
        for key, rpc_replica in live.items():  # containers started by someone else
            replicas.append(replica(key, True, {**rpc_replica.describe(), "restarts": 0}))
        # A deleted version is not reported, even while its last replica stops.
        known = self.catalog.snapshot.models
        return ServerStatistics(
            uptime_s=round(time.time() - self.started_at, 3),
            models=[m for m in self._model_statistics() if m.model in known],
            cache=self._cache_statistics(),
            replicas=replicas,
            gpus=self.gpu_monitor.samples() if self.gpu_monitor is not None else (),
        )

    def status(self) -> dict[str, Any]:
        """What ``/admin/status`` and ``get_all_containers`` report: the typed
        statistics rendered as JSON, with the server's own settings and figures."""
        stats = self.statistics().to_json()
        return {
            "pid": os.getpid(),
            "uptime_s": stats["uptime_s"],
            "query_port": self.settings.query_port,
            "management_port": self.settings.management_port,
            "rpc_port": self.settings.rpc_port,
            "grpc_port": self.settings.grpc_port,
            "state_dir": str(self.settings.state_dir),
            "store": _redact(self.settings.store),
            "manager": self.settings.manager,
            "replicas": stats["replicas"],
            "models": stats["models"],
            "autoscale": {
                "targets": {str(m): n for m, n in self.autoscaler.targets.items()},
                "events": [dataclasses.asdict(e) for e in self.autoscaler.events[-50:]],
            },
            "cache": stats["cache"],
            "metrics": self.metrics.figures(),
            "workers": self.settings.workers,
            **({"worker_processes": self._describe_workers()} if self.pool is not None else {}),
            **({"gpus": stats["gpus"]} if "gpus" in stats else {}),
        }

    # -- lifecycle ---------------------------------------------------------------

    def _store_changed(self) -> None:
        """Another writer changed the store (or it reconnected): catch up."""
        if self.catalog.refresh():
            self._after_change()
            if self.service is None:  # a worker: the supervisor runs the replicas
                return
            task = asyncio.create_task(self.service.sync_replicas())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        # Redis-backed stores notify changes made by other frontends.
        def notify() -> None:  # called from the store's watcher thread
            loop.call_soon_threadsafe(self._store_changed)

        self.store.watch(notify)
        await self.rpc.start()
        if self.rpc.local_address is not None and isinstance(self.manager, LocalProcessManager):
            self.manager.rpc_address = self.rpc.local_address  # the replicas it starts
        tls = None
        if self.settings.tls_certfile:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.settings.tls_certfile, self.settings.tls_keyfile)
        shared = self.settings.workers > 1  # the query port, with every worker
        ports = [("query", self.query_http, self.settings.query_port)]
        if not self.is_worker:
            ports.append(("management", self.management_http, self.settings.management_port))
        for what, http, port in ports:
            try:
                await http.start(
                    self.settings.host, port, tls, reuse_port=shared and what == "query"
                )
            except OSError as exc:
                raise SystemExit(
                    f"could not bind the {what} port {port} on {self.settings.host}: {exc}"
                ) from None
        if self.settings.grpc_port:
            await self._start_grpc(tls is not None)
        if self.is_worker:
            await self._start_worker()
            return
        if shared:
            await self._start_workers()
        self.autoscaler.refresh()
        assert self.service is not None
        await self.service.sync_replicas()
        self.autoscaler.start()
        self.rollouts.tick()
        self._write_server_file()
        self.gpu_monitor = start_gpu_monitor()
        self._serve()
        log.info(
            "Clipper is up: queries on http://%s:%d, management on http://%s:%d, RPC on %s%s",
            self.settings.host,
            self.settings.query_port,
            self.settings.host,
            self.settings.management_port,
            self.rpc.bound_address,
            f", {self.settings.workers} worker processes" if shared else "",
        )

    def _serve(self) -> None:
        """The last steps of every process's start: background work, then ready."""
        self.metrics.start()
        if self.brownout is not None:
            self.brownout.start()
        # What start-up made lives as long as the server: out of the cyclic
        # collector's way, a full collection walks only what serving creates
        # (at start-up ~43,000 objects: a 6 ms pause each time, now ~0).
        gc.collect()
        gc.freeze()
        self.ready = True

    # -- several worker processes (--workers) ---------------------------------------------

    async def _start_workers(self) -> None:
        """The supervisor's: start the other workers on the ports just bound."""
        st = dataclasses.replace(
            self.settings,
            query_port=self.query_http.port,  # the bound one, should 0 have been asked for
            grpc_port=self.grpc_port,
            admin_token=self.admin_token,
            rpc_secret=self.rpc_secret,
        )
        self.pool = WorkerPool(
            st.workers,
            st,
            on_peers_changed=self.rpc.announce_peers,
            on_message=self._on_worker_message,
        )
        try:
            await self.pool.start()
        except (RuntimeError, OSError) as exc:
            await self.pool.stop(timeout_s=5)
            raise SystemExit(f"could not start the worker processes: {exc}") from None

    async def _start_worker(self) -> None:
        """A worker's: serve, say hello (with the RPC port), follow the supervisor."""
        assert self.supervisor is not None
        self.rollouts.tick()
        self._serve()
        port = int(self.rpc.bound_address.rsplit(":", 1)[1])
        self.supervisor.send({"type": "hello", "rpc_port": port, "pid": os.getpid()})
        task = asyncio.create_task(self._follow_supervisor(), name="supervisor")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        log.info("worker %d (pid %d) is up; RPC on %s", self.worker_index, os.getpid(), port)

    async def _follow_supervisor(self) -> None:
        """A worker's: what the supervisor says, until it says stop or goes away."""
        assert self.supervisor is not None
        while (message := await self.supervisor.recv()) is not None:
            kind = message.get("type")
            if kind == "changed":
                try:
                    self._store_changed()
                except StoreError as exc:  # caught up with at the next tick
                    log.warning("store unavailable (%s): the catalog stays as it was", exc)
            elif kind == "exited":
                self.rpc.process_exited(int(message["pid"]))
            elif kind == "tick":
                self.shared_exposition = message["exposition"]
                self.rollouts.set_shares(message["shares"])
            elif kind == "stop":
                log.info("worker %d: the supervisor asks it to stop", self.worker_index)
                break
        else:
            log.warning("worker %d: the supervisor is gone; stopping", self.worker_index)
        self.request_stop()

    def _report_to_supervisor(self) -> None:
        """A worker's, once a second: its counters and evidence, and a catch-up
        with the store (should a change notice have been missed)."""
        assert self.supervisor is not None
        self.supervisor.send(
            {
                "type": "stats",
                "counters": self.metrics.counters(),
                "models": self.dispatcher.statistics(),
                "cache": self.cache.statistics() if self.cache is not None else None,
                "evidence": self.rollouts.export_evidence(),
                "replicas": {(r.model, r.label) for r in self.dispatcher.replicas()},
            }
        )
        try:
            self._store_changed()
        except StoreError as exc:
            log.debug("store unavailable (%s): the catalog stays as it was", exc)

    def _on_worker_message(self, worker: Worker, message: dict[str, Any]) -> None:
        """The supervisor's: a worker's statistics, or that it exited."""
        kind = message.get("type")
        if kind == "stats":
            worker.stats = message
            self.rollouts.set_peer_evidence(worker.index, message["evidence"])
        elif kind == "exited":
            self.rollouts.set_peer_evidence(worker.index, None)
            if worker.stats is not None:  # its last report: kept in the sums
                self._retired.add(worker.stats)

    def _describe_workers(self) -> list[dict[str, Any]]:
        """Every worker process (the supervisor first) and the queries each answered."""
        assert self.pool is not None
        own = {"index": 0, "pid": os.getpid(), "rpc_port": None, "live": True, "restarts": 0}
        rows = [own, *self.pool.describe()]
        counts = [
            self.metrics.counters(),
            *(w.stats["counters"] if w.stats is not None else None for w in self.pool.workers),
        ]
        for row, counters in zip(rows, counts, strict=True):
            row["queries"] = (
                sum(c.queries for c in counters.apps.values()) if counters is not None else 0
            )
        own["rpc_port"] = int(self.rpc.bound_address.rsplit(":", 1)[1])
        return rows

    def _worker_ports(self) -> list[int]:
        return self.pool.peers() if self.pool is not None else []

    def _worker_counters(self) -> list[Counters]:
        if self.pool is None:
            return []
        live = [w.stats["counters"] for w in self.pool.workers if w.stats is not None]
        retired = self._retired.counters
        return live if retired is None else [*live, retired]

    def _publish_metrics(self) -> None:
        """The supervisor's, once a second: the summed exposition, served by every
        worker as it is (and the rollouts' shares)."""
        if self.pool is None:
            return
        self.shared_exposition = self.metrics.render_formats()
        self.pool.broadcast(
            {"type": "tick", "exposition": self.shared_exposition, "shares": self.rollouts.shares()}
        )

    def _exposition(self, accept: str) -> tuple[bytes, str]:
        """``GET /metrics``: with workers, the supervisor's latest summed exposition."""
        shared = self.shared_exposition
        if shared is not None:
            picked = pick_format(shared, accept)
            if picked is not None:
                return picked
        return self.metrics.exposition(accept)

    def _process_exited(self, pid: int) -> None:
        """A replica's process exited (its manager saw it): every worker forgets it."""
        self.rpc.process_exited(pid)
        if self.pool is not None:
            self.pool.broadcast({"type": "exited", "pid": pid})

    async def _start_grpc(self, secure: bool) -> None:
        """The Open Inference Protocol over gRPC, on the event loop (grpc.aio)."""
        from .frontend.oip_grpc import bind, grpc_server  # grpcio loads only when asked for

        st = self.settings
        self.grpc = grpc_server(
            self.oip,
            is_ready=lambda: self.ready,
            max_message_bytes=st.max_body_bytes,
            reuse_port=st.workers > 1,
        )
        try:
            self.grpc_port = bind(
                self.grpc,
                st.host,
                st.grpc_port,
                (st.tls_certfile, st.tls_keyfile) if secure else None,
            )
        except OSError as exc:
            raise SystemExit(
                f"could not bind the gRPC port {st.grpc_port} on {st.host}: {exc}"
            ) from None
        await self.grpc.start()

    def banner(self) -> str:
        """What the server prints once up (stdout, not the log: it holds the token)."""
        address = self.settings.address
        management = address.management_url
        grpc = ""
        if self.settings.grpc_port:
            grpc = f"  gRPC (OIP): {connect_host(address.host)}:{self.settings.grpc_port}\n"
        return (
            f"\nClipper is up (pid {os.getpid()}).\n"
            f"  Queries:    {address.query_url}/<app>/predict\n"
            f"{grpc}"
            f"  Management: {management}/admin/ (needs the admin token: `clipper token`)\n"
            f"  Dashboard:  {management}/dashboard?token={self.admin_token}\n"
            f"  State:      {address.state_path}\n"
            "Another shell finds this server and its token with:\n"
            f"  export CLIPPER_HOME={address.state_path}\n"
        )

    def _write_server_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "host": self.settings.host,
            "query_port": self.settings.query_port,
            "management_port": self.settings.management_port,
            "rpc_port": self.settings.rpc_port,
            "grpc_port": self.settings.grpc_port,
            "tls": bool(self.settings.tls_certfile),
            "started_at": self.started_at,
        }
        write_server_record(self.settings.state_dir, info)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        # Drain: /ready turns false (load balancers stop sending), queries in
        # flight finish, then the listeners close. A supervisor's workers drain
        # first, while the replicas still serve them.
        self.ready = False
        if not self.is_worker:
            log.info("stopping Clipper: draining queries in flight")
        if self.pool is not None:
            await self.pool.stop(timeout_s=self.settings.drain_timeout + 10)
        deadline = time.monotonic() + self.settings.drain_timeout
        while self.dispatcher.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.gather(
            self.query_http.shutdown(timeout_s=5),
            *([] if self.is_worker else [self.management_http.shutdown(timeout_s=5)]),
            *([self.grpc.stop(grace=5)] if self.grpc is not None else []),
        )
        await self.autoscaler.stop()
        if self.manager is not None:
            await self.manager.stop_all()
        await self.metrics.stop()
        if self.brownout is not None:
            self.brownout.stop()
        if self.gpu_monitor is not None:
            self.gpu_monitor.stop()
        await self.rollouts.close()
        self.dispatcher.close()
        self.processor.states.close()
        await self.rpc.stop()
        self.store.close()
        if self.is_worker:
            log.info("worker %d stopped", self.worker_index)
            return
        remove_server_record(self.settings.state_dir, os.getpid())
        log.info("Clipper stopped")

    async def run(self, demo: bool = False) -> None:
        """Start, serve until SIGINT/SIGTERM, stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            print(self.banner(), flush=True)
            if demo:
                from .demo import MODEL as DEMO_MODEL
                from .demo import install_demo

                assert self.service is not None
                greeting = await install_demo(self.service, self.settings)
                model = ModelId(DEMO_MODEL, "1")
                deadline = time.monotonic() + 60
                while (
                    self.dispatcher.live_replicas(model) == 0
                    and time.monotonic() < deadline
                    and not self._stop.is_set()
                ):
                    await asyncio.sleep(0.1)
                print(greeting, flush=True)
            await self._stop.wait()
        finally:
            await self.stop()


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _redact(url: str) -> str:
    """A URL without its password, for status output and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def configure_logging(level: str, state_dir: Path, filename: str = "server.log") -> None:
    """Log to stderr and to ``<state_dir>/logs/server.log`` (what ``clipper logs``
    reads; a worker process: ``worker-<N>.log``)."""
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(
        log_dir / filename, maxBytes=20 * 1024 * 1024, backupCount=3
    )
    logging.basicConfig(
        level=level.upper(),
        format=LOG_FORMAT,
        handlers=[logging.StreamHandler(sys.stderr), file_handler],
    )


async def _no_scaling() -> None:
    """A worker's autoscaler applies nothing: the supervisor's runs the replicas."""


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)


def run_worker(fd: int) -> int:
    """A worker process (``--worker-fd``): its settings come over the control
    channel its supervisor passed it; it serves until told to stop, or until
    the supervisor goes away."""

    async def serve() -> None:
        channel = Channel(socket.socket(fileno=fd))
        await channel.open()
        first = await channel.recv()
        if first is None or first.get("type") != "settings":
            return
        settings, index = first["settings"], int(first["index"])
        os.umask(0o077)
        configure_logging(settings.log_level, settings.state_dir, f"worker-{index}.log")
        server = ClipperServer(settings, supervisor=channel, worker_index=index)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.request_stop)
        try:
            await server.start()
            await server._stop.wait()
        finally:
            await server.stop()

    _run(serve())
    return 0


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if len(args_in) == 2 and args_in[0] == "--worker-fd":  # spawned by a supervisor
        return run_worker(int(args_in[1]))
    parser = argparse.ArgumentParser(
        prog="python -m clipper.server",
        description="Run a Clipper server: query frontend, management frontend, RPC endpoint "
        "and container manager in one process.",
    )
    settings_mod.add_arguments(parser)
    parser.add_argument(
        "--demo",
        action="store_true",
        help="deploy the demo app 'digits' (a scikit-learn classifier)",
    )
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.from_args(args)
    except ValueError as exc:  # a CLIPPER_* variable, or a value out of its range
        parser.error(str(exc))
    # Everything this process (and its replicas) creates in the state folder is
    # its owner's only: the store, logs, artifacts, secrets.
    os.umask(0o077)
    configure_logging(settings.log_level, settings.state_dir)
    try:
        server = ClipperServer(settings)
    except (ValidationError, ValueError) as exc:
        parser.error(str(exc))
    _run(server.run(demo=args.demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
