"""Server settings: one typed record, read from flags and CLIPPER_* variables."""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .address import (
    DEFAULT_HOST,
    DEFAULT_MANAGEMENT_PORT,
    DEFAULT_QUERY_PORT,
    DEFAULT_RPC_PORT,
    ServerAddress,
    connect_host,
    default_state_dir,
)

__all__ = ["Settings", "add_arguments", "default_state_dir", "from_args"]

MAX_WORKERS = 64


def default_workers() -> int:
    """``--workers 0``: a quarter of the CPUs this process may use, at least 1
    (the replicas need the rest)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // 4)


@dataclass(frozen=True)
class Settings:
    """Everything the server process can be told. Env: CLIPPER_<FIELD>."""

    host: str = field(
        default=DEFAULT_HOST, metadata={"help": "Address the query and management frontends bind."}
    )
    query_port: int = field(
        default=DEFAULT_QUERY_PORT,
        metadata={"help": "Port of the query frontend (/{app}/predict)."},
    )
    management_port: int = field(
        default=DEFAULT_MANAGEMENT_PORT,
        metadata={"help": "Port of the management frontend (/admin/*)."},
    )
    grpc_port: int = field(
        default=0,
        metadata={
            "help": "Port of the Open Inference Protocol's gRPC endpoint "
            "(inference.GRPCInferenceService: the models of /v2, for tritonclient.grpc "
            "and KServe clients), on --host with the query port's TLS, limits and API "
            "keys; 0: off."
        },
    )
    workers: int = field(
        default=0,
        metadata={
            "help": "Frontend processes serving the query (and gRPC) port, which they "
            "share; one of them (the supervisor) also runs the management port, the "
            "container manager and the autoscaler, and every replica serves all of "
            "them. 0: a quarter of this host's CPUs, at least 1."
        },
    )
    local_rpc: bool = field(
        default=True,
        metadata={
            "help": "Replicas the local manager starts reach the server over a Unix socket "
            "in the state folder (<state_dir>/run/rpc-<port>.sock: two thread hand-offs "
            "fewer per batch than ZeroMQ over TCP); false: over the RPC port."
        },
    )
    rpc_host: str = field(
        default=DEFAULT_HOST,
        metadata={
            "help": "Address the RPC endpoint binds (0.0.0.0 for containers on other hosts)."
        },
    )
    rpc_port: int = field(
        default=DEFAULT_RPC_PORT,
        metadata={"help": "Port of the RPC endpoint that model containers connect to."},
    )
    state_dir: Path = field(
        default=Path(),
        metadata={
            "help": "State folder: store, model artifacts, logs. "
            "Default $CLIPPER_HOME, else ~/.clipper."
        },
    )
    store: str = field(
        default="",
        metadata={"help": "Config store URL; default sqlite:///<state_dir>/clipper.db."},
    )
    manager: str = field(
        default="local",
        metadata={"help": "Container manager: local (child processes) or ray (Ray actors)."},
    )
    ray_address: str = field(
        default="",
        metadata={
            "help": "Ray cluster for --manager ray: host:port of its head, or 'auto'; "
            "empty starts a local Ray instance."
        },
    )
    max_body_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "Largest accepted request body; larger ones get a 413."},
    )
    max_artifact_bytes: int = field(
        default=8 * 1024**3,
        metadata={
            "help": "Largest model artifact the management port's streamed upload "
            "(/admin/upload_artifact) accepts; larger ones get a 413."
        },
    )
    default_batch_size: int = field(
        default=64,
        metadata={"help": "Batch size under --batching fixed, for models deployed without one."},
    )
    batching: str = field(
        default="aimd",
        metadata={
            "help": "Default batch-size policy of models deployed without a fixed "
            "batch size: aimd, quantile or fixed."
        },
    )
    batch_slo_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Share of a model's SLO one batch may take (the rest is left for "
            "queueing); the target of the adaptive batch-size policies."
        },
    )
    max_batch_delay_ms: float = field(
        default=0.0,
        metadata={
            "help": "Delayed batching: how long an idle replica may wait for a fuller "
            "batch when the queue is short (0: off)."
        },
    )
    queue_capacity: int = field(
        default=10_000,
        metadata={
            "help": "Queries that may wait per model version; past it, new queries "
            "are answered at once (overloaded)."
        },
    )
    shed_at_arrival: bool = field(
        default=True,
        metadata={
            "help": "Answer at once (with the app's default output, or 503) a query "
            "that the queue ahead of it would make miss its SLO, by the replicas' "
            "latency estimates, instead of queueing it to expire (true or false)."
        },
    )
    replica_nice: int = field(
        default=0,
        metadata={
            "help": "Niceness (0-19) of the replicas this server starts, so a frontend "
            "sharing their cores preempts them (0: the server's own priority; measured "
            "on Linux 6.18's scheduler, a higher value cost goodput and did not shorten "
            "the tail: see docs/benchmarks.md, Overload)."
        },
    )
    replica_cpus: str = field(
        default="",
        metadata={
            "help": "CPUs the replicas this server starts may run on, as taskset "
            "writes them (for example 1-3 or 2,3); empty: any. Keep a core for the "
            "frontend (pin the server with taskset) so replicas never delay its answers."
        },
    )
    cache_bytes: int = field(
        default=32 * 1024 * 1024,
        metadata={"help": "Size of the prediction cache in bytes (0: no cache)."},
    )
    max_batch_inputs: int = field(
        default=10_000,
        metadata={"help": "Most inputs one input_batch request may carry."},
    )
    drain_timeout: float = field(
        default=10.0,
        metadata={"help": "Seconds a stopping server waits for queries in flight."},
    )
    admin_token: str = field(
        default="",
        metadata={
            "help": "Token the management API requires, always (prefer the env "
            "variable: flags are visible to other users). Default: generated at "
            "first start and kept in <state_dir>/admin_token (owner-only), where "
            "the admin client and the CLI find it; `clipper token` prints it."
        },
    )
    rpc_secret: str = field(
        default="",
        metadata={
            "help": "Shared secret containers present when they register (prefer the env "
            "variable). Default: generated at first start, kept in <state_dir>/rpc_secret "
            "(`clipper token` prints it with its rpc option)."
        },
    )
    metrics_token: str = field(
        default="",
        metadata={
            "help": "If set, GET /metrics needs 'Authorization: Bearer <this>' "
            "(default: open, for Prometheus)."
        },
    )
    allowed_hosts: str = field(
        default="",
        metadata={
            "help": "Comma-separated host names the HTTP ports answer to besides the "
            "loopback names and the bound address (the Host check, against DNS "
            "rebinding; on a non-loopback bind it is on only when this is set)."
        },
    )
    allowed_origins: str = field(
        default="",
        metadata={
            "help": "Comma-separated web origins (scheme://host:port) whose pages may "
            "call the HTTP ports; other cross-origin requests get a 403."
        },
    )
    max_connections: int = field(
        default=1024,
        metadata={
            "help": "Connections served at once per HTTP port; more wait (accepted, "
            "unread) until one closes."
        },
    )
    max_inflight_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={
            "help": "Request bytes all connections of a port may hold at once; past it, "
            "clients are not read until answers free bytes."
        },
    )
    request_head_timeout: float = field(
        default=10.0,
        metadata={"help": "Seconds a request's head may take to arrive in full (else 408, close)."},
    )
    request_body_timeout: float = field(
        default=60.0,
        metadata={"help": "Seconds a request's body may take to arrive in full (else 408, close)."},
    )
    rpc_curve: str = field(
        default="",
        metadata={
            "help": "Encrypt the RPC socket with CurveZMQ: 'on' keeps the server's "
            "key pair in <state_dir>/curve/; containers get the public key in "
            "CLIPPER_RPC_SERVER_KEY."
        },
    )
    tls_certfile: str = field(
        default="",
        metadata={"help": "PEM certificate: serve both HTTP ports and the gRPC port over TLS."},
    )
    tls_keyfile: str = field(default="", metadata={"help": "PEM private key for TLS."})
    heartbeat_interval: float = field(
        default=0.5, metadata={"help": "Seconds between heartbeats on the RPC socket."}
    )
    heartbeat_timeout: float = field(
        default=3.0, metadata={"help": "A replica silent this many seconds is removed."}
    )
    log_level: str = field(
        default="INFO", metadata={"help": "Log level: DEBUG, INFO, WARNING, ERROR."}
    )
    policy_cache_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "Memory budget (approximate bytes, > 0) of the per-user policy state "
            "cache; past it, the least recently used users' states are forgotten first."
        },
    )
    max_user_states: int = field(
        default=100_000,
        metadata={
            "help": "Most per-user policy states the store keeps per app (0: no limit); "
            "feedback from a new user past it removes the least recently updated user's state."
        },
    )

    def __post_init__(self) -> None:
        if self.workers == 0:
            object.__setattr__(self, "workers", default_workers())
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(
                f"workers must be 1 to {MAX_WORKERS} (0: automatic), not {self.workers}"
            )
        if not 0 <= self.replica_nice <= 19:
            raise ValueError(f"replica_nice must be 0 to 19, not {self.replica_nice}")
        parse_cpu_list(self.replica_cpus)  # a ValueError naming what is wrong
        if self.state_dir == Path():
            object.__setattr__(self, "state_dir", default_state_dir())
        object.__setattr__(self, "state_dir", Path(self.state_dir).expanduser().resolve())
        if not self.store:
            object.__setattr__(self, "store", f"sqlite:///{self.state_dir / 'clipper.db'}")

    @property
    def address(self) -> ServerAddress:
        """Where this server is, as its clients see it."""
        return ServerAddress(
            self.host,
            self.query_port,
            self.management_port,
            self.rpc_port,
            self.state_dir,
            tls=bool(self.tls_certfile),
        )

    @property
    def rpc_address(self) -> str:
        """The address containers connect to."""
        return f"tcp://{connect_host(self.rpc_host)}:{self.rpc_port}"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then CLIPPER_* variables, then non-None overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"CLIPPER_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.type, raw)
        if "state_dir" not in values and os.environ.get("CLIPPER_HOME"):
            values["state_dir"] = Path(os.environ["CLIPPER_HOME"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting, so flags, env and code never drift apart."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            type=functools.partial(_convert, f.type),
            help=f"{f.metadata.get('help', '')} (env CLIPPER_{f.name.upper()})",
        )


def from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(**{f.name: getattr(args, f.name, None) for f in fields(Settings)})


def _convert(type_name: Any, raw: str) -> Any:
    name = str(type_name)
    if name == "int":
        return int(raw)
    if name == "float":
        return float(raw)
    if name == "Path":
        return Path(raw)
    if name == "bool":
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, not {raw!r}")
    return raw


def parse_cpu_list(text: str) -> set[int]:
    """CPUs written as taskset and /proc write them (``0-2,5``); empty: none.

    Raises ValueError naming what is wrong (the replicas' ``--cpus``, the
    server's ``replica_cpus``)."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"not a CPU list: {text!r} (write it as 0-2,5)") from None
        if first < 0 or last < first or last > 4095:
            raise ValueError(f"not a CPU range: {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return cpus
