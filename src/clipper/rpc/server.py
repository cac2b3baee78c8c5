"""The frontend's RPC endpoint: a ZeroMQ ROUTER that containers connect to.

It owns the socket, registration and liveness (heartbeats both ways, a
timeout that removes silent replicas) and hands everything else to a
``ReplicaListener`` (the dispatcher): a replica joined, left, or answered a
batch. A replica removed for silence that has not registered again within
its grace (``unresponsive_after``) is reported once to ``on_unresponsive``:
its process is alive but hung (a ``predict`` stuck in C code that holds the
GIL stops the container's own watchdog too, as does a frozen process), and
only its manager can end it. Malformed frames and unknown protocol versions
are logged and dropped; they never stop the endpoint.

The socket is a plain (blocking-API) ZeroMQ socket driven by the event
loop's reader on its file descriptor, not pyzmq's asyncio adapter: a wake-up
drains every message that is ready (``NOBLOCK`` until ``Again``) and sends
are immediate, so no future is created per message. ZeroMQ's descriptor is
edge-triggered, and a send can consume its signal, so every send schedules
one more drain on the next loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import zmq

from ..exceptions import RPCError
from ..types import ModelId
from . import protocol as p

log = logging.getLogger("clipper.rpc")


@dataclass(eq=False)
class Replica:
    """A connected container, as the frontend knows it."""

    identity: bytes
    model: ModelId
    input_type: str
    pid: int | None
    label: str
    joined_at: float
    last_seen: float
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "input_type": self.input_type,
            "replica": self.label,
            "pid": self.pid,
            "batches": self.batches,
        }


class ReplicaListener(Protocol):
    def replica_joined(self, replica: Replica) -> None: ...

    def replica_left(self, replica: Replica, reason: str) -> None: ...

    def batch_result(
        self, replica: Replica, batch_id: int, header: dict[str, Any], frames: list[bytes]
    ) -> None: ...


# Decides whether a registering container is acceptable: None, or the reason not.
RegistrationCheck = Callable[[ModelId, str], str | None]

# How long a replica removed for silence may take to register again before it
# counts as hung (seconds, per model version).
UnresponsiveAfter = Callable[[ModelId], float]


# Messages handled per wake-up before yielding to the loop (HTTP must not starve).
DRAIN_LIMIT = 512


class RPCServer:
    """Binds the ROUTER socket and keeps the table of live replicas."""

    def __init__(
        self,
        address: str,
        listener: ReplicaListener,
        *,
        check_registration: RegistrationCheck | None = None,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 3.0,
        secret: str | None = None,
        curve_secret_key: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_unresponsive: Callable[[Replica], None] | None = None,
        unresponsive_after: UnresponsiveAfter = lambda _model: 30.0,
    ) -> None:
        self.address = address
        self._curve_secret_key = curve_secret_key
        self._secret = secret.encode() if secret else None
        self.listener = listener
        self.check_registration = check_registration
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock
        self.on_unresponsive = on_unresponsive
        self.unresponsive_after = unresponsive_after
        self.replicas: dict[bytes, Replica] = {}
        # Replicas removed for silence, each with the time it counts as hung by.
        self._silent: dict[bytes, tuple[Replica, float]] = {}
        self.malformed_messages = 0
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._fd = -1

    async def start(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Fail sends to vanished peers instead of silently dropping them.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        if self._curve_secret_key is not None:
            sock.curve_server = True
            sock.curve_secretkey = self._curve_secret_key
        sock.bind(self.address)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._drain)
        self._tasks = [asyncio.create_task(self._liveness_loop(), name="rpc-liveness")]
        self._schedule_drain()  # messages that arrived before the reader was set
        log.info("RPC endpoint listening on %s", self.address)

    @property
    def bound_address(self) -> str:
        assert self._sock is not None
        return str(self._sock.getsockopt_string(zmq.LAST_ENDPOINT))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            self._sock.close(linger=0)
            self._sock = None
        self._ctx.term()

    def send(self, identity: bytes, frames: p.Frames) -> bool:
        """Send frames to one container; False when it is gone (or its queue is full)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # Again (queue full) or EHOSTUNREACH (peer gone)
            log.warning("could not send to replica %s: %s", identity.hex(), exc)
            return False
        finally:
            # The send may have consumed the descriptor's edge for waiting input.
            self._schedule_drain()
        return True

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def process_exited(self, pid: int) -> None:
        """A manager saw a replica's process exit: forget it without waiting."""
        for identity, replica in list(self.replicas.items()):
            if replica.pid == pid:
                self._drop(identity, f"process {pid} exited")
        for identity, (replica, _) in list(self._silent.items()):
            if replica.pid == pid:
                del self._silent[identity]

    def _drop(self, identity: bytes, reason: str) -> None:
        replica = self.replicas.pop(identity, None)
        if replica is not None:
            log.info("replica %s of %s left: %s", replica.label, replica.model, reason)
            self.listener.replica_left(replica, reason)

    def _drain(self) -> None:
        """Handle every message that is ready (the reader callback)."""
        self._drain_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(DRAIN_LIMIT):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:  # the socket is closing
                log.debug("RPC receive stopped: %s", exc)
                return
            try:
                self._handle(frames)
            except RPCError as exc:
                self.malformed_messages += 1
                log.warning("dropped a malformed RPC message: %s", exc)
            except Exception:  # never let one message stop the endpoint
                self.malformed_messages += 1
                log.exception("error while handling an RPC message")
        self._schedule_drain()  # more may be waiting: continue after other work

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            raise RPCError("message has no header frame")
        identity, header_frame, data = frames[0], frames[1], frames[2:]
        header = p.parse_header(header_frame)
        kind = header["type"]
        replica = self.replicas.get(identity)
        now = self.clock()
        if replica is not None:
            replica.last_seen = now
        if kind == p.RESULT:
            if replica is None:
                raise RPCError("result from an unregistered container")
            batch_id = header.get("id")
            if not isinstance(batch_id, int):
                raise RPCError("result without an integer 'id'")
            replica.batches += 1
            self.listener.batch_result(replica, batch_id, header, data)
        elif kind == p.HEARTBEAT:
            if replica is None:
                self.send(identity, [p.make(p.REREGISTER)])
            else:
                self.send(identity, [p.make(p.HEARTBEAT)])
        elif kind == p.REGISTER:
            self._register(identity, header, now)
        elif kind == p.GOODBYE:
            self._drop(identity, "container shut down")
        else:
            raise RPCError(f"unexpected message type {kind!r} from a container")

    def _register(self, identity: bytes, header: dict[str, Any], now: float) -> None:
        name, version = header.get("model_name"), header.get("model_version")
        input_type = header.get("input_type")
        if not all(isinstance(v, str) and v for v in (name, version, input_type)):
            self.send(
                identity,
                [
                    p.make(
                        p.REJECTED,
                        reason="register needs model_name, model_version and input_type strings",
                    )
                ],
            )
            return
        assert isinstance(name, str) and isinstance(version, str) and isinstance(input_type, str)
        model = ModelId(name, version)
        if self._secret is not None:
            offered = header.get("secret")
            offered_bytes = offered.encode() if isinstance(offered, str) else b""
            # Constant-time: the comparison must not leak how much matched.
            if not hmac.compare_digest(offered_bytes, self._secret):
                log.warning("rejected a container for %s: wrong or missing secret", model)
                self.send(identity, [p.make(p.REJECTED, reason="wrong or missing secret")])
                return
        if identity in self.replicas:
            existing = self.replicas[identity]
            if existing.model == model:
                self.send(identity, [p.make(p.REGISTERED)])
                return
            self._drop(identity, "re-registered as another model")
        reason = self.check_registration(model, input_type) if self.check_registration else None
        if reason is not None:
            log.warning("rejected container for %s: %s", model, reason)
            self.send(identity, [p.make(p.REJECTED, reason=reason)])
            return
        pid = header.get("pid")
        replica = Replica(
            identity=identity,
            model=model,
            input_type=input_type,
            pid=pid if isinstance(pid, int) else None,
            label=str(header.get("replica") or identity.hex()),
            joined_at=now,
            last_seen=now,
        )
        self.replicas[identity] = replica
        self.send(identity, [p.make(p.REGISTERED, heartbeat_interval=self.heartbeat_interval)])
        log.info("replica %s of %s joined (pid %s)", replica.label, model, replica.pid)
        self.listener.replica_joined(replica)

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self.check_liveness()

    def check_liveness(self) -> None:
        """Remove replicas silent past the timeout, heartbeat the others, and
        report the removed ones that stayed away past their grace."""
        now = self.clock()
        for identity, replica in list(self.replicas.items()):
            if now - replica.last_seen > self.heartbeat_timeout:
                self._drop(identity, f"no heartbeat for {now - replica.last_seen:.1f}s")
                if replica.pid is not None and self.on_unresponsive is not None:
                    grace = self.unresponsive_after(replica.model)
                    self._silent[identity] = (replica, now + grace)
            elif not self.send(identity, [p.make(p.HEARTBEAT)]):
                self._drop(identity, "connection lost")
        for identity, (replica, hung_by) in list(self._silent.items()):
            if self._back(replica):
                del self._silent[identity]
            elif now >= hung_by:
                del self._silent[identity]
                log.error(
                    "replica %s of %s (pid %s) has not been heard from for %.0fs; "
                    "reporting it hung",
                    replica.label,
                    replica.model,
                    replica.pid,
                    now - replica.last_seen,
                )
                assert self.on_unresponsive is not None
                try:
                    self.on_unresponsive(replica)
                except Exception:  # the liveness loop must go on
                    log.exception("could not report replica %s hung", replica.label)

    def _back(self, silent: Replica) -> bool:
        """Whether a replica removed for silence registered again (same process)."""
        again = self.replicas.get(silent.identity)
        if again is not None and again.pid == silent.pid:
            return True
        return any(r.pid == silent.pid and r.label == silent.label for r in self.replicas.values())
