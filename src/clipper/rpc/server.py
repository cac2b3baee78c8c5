"""The frontend's RPC endpoint: a ZeroMQ ROUTER that containers connect to.

Replicas on the same host may connect to a Unix stream socket instead
(``local_dir``; rpc/local.py, with rpc/stream.py framing the same
messages): each connection is a peer with an identity of its own, handled
by the same code as a ZeroMQ peer, with the same checks and limits.

It owns the socket, registration and liveness (heartbeats both ways, a
timeout that removes silent replicas) and the wire encoding of batches: the
dispatcher hands it a replica's batch of inputs (``send_batch``, a
``BatchTransport``) and hears, as its ``ReplicaListener``, that a replica
joined, left, or answered a batch (the outputs decoded, or why there are
none). Its liveness checks run on a timer source (``clipper.timers``) that
tests can move by hand. A replica removed for silence that has not
registered again within its grace (``unresponsive_after``) is reported once
to ``on_unresponsive``: its process is alive but hung (a ``predict`` stuck
in C code that holds the GIL stops the container's own watchdog too, as
does a frozen process), and only its manager can end it. Malformed frames
and unknown protocol versions are logged and dropped; they never stop the
endpoint.

The port is open to whoever can reach it, so a peer is a stranger until it
registers with the server's secret, and what a stranger sends costs little:

- a ``register`` without the right secret is refused before anything else
  runs (no registration check, no state kept for the peer), with a bounded,
  escaped log line at most once per ``LOG_EVERY_S``;
- a stranger's heartbeat gets ``reregister`` (how a live container learns the
  frontend restarted) within a global rate, a ``goodbye`` nothing, and
  anything else (a ``result``, say) is dropped and counted: a stranger never
  receives a batch and never settles one;
- frames: each at most ``max_message_bytes`` (ZeroMQ's ``MAXMSGSIZE``: the
  peer is disconnected), a stranger's message one frame with a small header,
  a replica's at most two (a ``result``: header and outputs) and
  ``max_message_bytes`` in all. A replica's result over those limits, or
  with an error text past ``MAX_ERROR_MESSAGE``, settles its batch as a model
  error (the text cut) rather than vanishing.

libzmq buffers every frame of a multipart message before handing it over,
and bounds each frame (``MAXMSGSIZE``), not their number: only
authentication at the ZeroMQ handshake (CurveZMQ with known client keys)
would stop a peer that can reach the port from growing that buffer with a
message that never ends. Bind the port where only replicas reach it.

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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import zmq

from ..exceptions import RPCError
from ..timers import TimerHandle, Timers, timers_for
from ..types import ModelId
from . import protocol as p
from . import stream
from .local import LocalPeer

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
    # What the container says it runs on (``runtime`` in ``register``: device,
    # provider, precision), for the status; empty from older containers.
    runtime: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "input_type": self.input_type,
            "replica": self.label,
            "pid": self.pid,
            "batches": self.batches,
            **({"runtime": dict(self.runtime)} if self.runtime else {}),
        }


class ReplicaListener(Protocol):
    def replica_joined(self, replica: Replica) -> None: ...

    def replica_left(self, replica: Replica, reason: str) -> None: ...

    def batch_done(self, replica: Replica, batch_id: int, result: p.BatchResult) -> None:
        """A replica answered a batch: its outputs (count unchecked) or a failure."""
        ...


@runtime_checkable
class BatchTransport(Protocol):
    def send_batch(
        self,
        replica: Replica,
        batch_id: int,
        inputs: Sequence[Any],
        time_limit_s: float | None = None,
        deadline_s: float | None = None,
    ) -> bool:
        """Send a replica one batch, encoded for its input type: False when
        the replica is gone; raises (nothing sent) when the inputs cannot be
        encoded. ``deadline_s``: seconds until the batch's last deadline."""
        ...


class FrameSender:
    """A ``BatchTransport`` over a function that sends one message's frames
    to a replica identity (a replica scripted without sockets, in tests)."""

    def __init__(self, send: Callable[[bytes, p.Frames], bool]) -> None:
        self.send = send

    def send_batch(
        self,
        replica: Replica,
        batch_id: int,
        inputs: Sequence[Any],
        time_limit_s: float | None = None,
        deadline_s: float | None = None,
    ) -> bool:
        frames = p.encode_batch(batch_id, replica.input_type, inputs, time_limit_s, deadline_s)
        return self.send(replica.identity, frames)


# Decides whether a registering container is acceptable: None, or the reason not.
RegistrationCheck = Callable[[ModelId, str], str | None]

# How long a replica removed for silence may take to register again before it
# counts as hung (seconds, per model version).
UnresponsiveAfter = Callable[[ModelId], float]


# Messages handled per wake-up before yielding to the loop (HTTP must not starve).
DRAIN_LIMIT = 512
# Each kind of warning a peer can cause is logged at most once per this many
# seconds; the next one says how many were left out.
LOG_EVERY_S = 10.0
# ``reregister`` answers to strangers' heartbeats: per second, and at once.
REREGISTER_RATE = 1000.0
REREGISTER_BURST = 1000.0
# The longest secret and replica label taken from a ``register``.
MAX_SECRET_CHARS = 4096
MAX_LABEL_CHARS = 128
MAX_RUNTIME_ENTRIES, MAX_RUNTIME_CHARS = 8, 120


def runtime_details(value: Any) -> dict[str, str]:
    """A ``register``'s optional ``runtime`` map, bounded: printable strings only."""
    if not isinstance(value, dict):
        return {}
    return {
        k: v
        for k, v in list(value.items())[:MAX_RUNTIME_ENTRIES]
        if isinstance(k, str)
        and isinstance(v, str)
        and 0 < len(k) <= 32
        and len(v) <= MAX_RUNTIME_CHARS
        and (k + v).isprintable()
    }


class _Throttle:
    """Logs one record per ``interval`` seconds at most; counts the others and
    reports their number with the next one."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self._next = float("-inf")
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self.interval
        if self.suppressed:
            msg += " (and %d more like it since the last report)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        log.log(level, msg, *args, exc_info=exc_info)


class _Bucket:
    """A token bucket: ``take`` is true at most ``rate`` times a second on
    average, ``burst`` times at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


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
        clock: Callable[[], float] | None = None,
        timers: Timers | None = None,
        on_unresponsive: Callable[[Replica], None] | None = None,
        unresponsive_after: UnresponsiveAfter = lambda _model: 30.0,
        max_message_bytes: int = p.DEFAULT_MAX_MESSAGE_BYTES,
        peers: Callable[[], list[int]] | None = None,
        local_dir: str | None = None,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self.address = address
        self.max_message_bytes = max_message_bytes
        self._curve_secret_key = curve_secret_key
        self._secret = secret.encode() if secret else None
        self.listener = listener
        self.check_registration = check_registration
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.timers = timers_for(clock, timers)
        self.clock = clock = self.timers.now
        self.on_unresponsive = on_unresponsive
        self.unresponsive_after = unresponsive_after
        # The RPC ports of this server's other worker processes (``--workers``),
        # named in ``registered``: each container registers with every one of them.
        self.peers = peers
        # Replicas on this host connect to a Unix socket in ``local_dir`` instead
        # of the ZeroMQ port (rpc/stream.py): ``local_address`` once started, None
        # without one (no folder given, or its path too long for a socket).
        self.local_dir = local_dir
        self.local_address: str | None = None
        self._local_server: asyncio.AbstractServer | None = None
        self._local_peers: dict[bytes, LocalPeer] = {}
        self._local_ids = 0
        self.replicas: dict[bytes, Replica] = {}
        # Replicas removed for silence, each with the time it counts as hung by.
        self._silent: dict[bytes, tuple[Replica, float]] = {}
        # What peers sent that was dropped or refused, by cause.
        self.malformed_messages = 0  # not the protocol (undecodable, unknown version or type)
        self.oversized_messages = 0  # more frames or bytes than the sender may send
        self.unregistered_messages = 0  # from a peer that has not registered
        self.rejected_registrations = 0  # without the right secret
        self._log_dropped = _Throttle(LOG_EVERY_S, clock)
        self._log_rejected = _Throttle(LOG_EVERY_S, clock)
        self._log_refused = _Throttle(LOG_EVERY_S, clock)
        self._log_send = _Throttle(LOG_EVERY_S, clock)
        self._reregisters = _Bucket(REREGISTER_RATE, REREGISTER_BURST, clock)
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._liveness: TimerHandle | None = None
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
        # A peer that sends a larger frame is disconnected before it is buffered.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        if self._curve_secret_key is not None:
            sock.curve_server = True
            sock.curve_secretkey = self._curve_secret_key
        sock.bind(self.address)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._drain)
        self._liveness = self.timers.call_later(self.heartbeat_interval, self._liveness_tick)
        self._schedule_drain()  # messages that arrived before the reader was set
        log.info("RPC endpoint listening on %s", self.address)
        if self.local_dir is not None:
            await self._start_local(self.local_dir)

    async def _start_local(self, directory: str) -> None:
        """Listen on ``<directory>/rpc-<port>.sock`` too (owner only), for replicas
        on this host."""
        bound = self.bound_address
        if not bound.startswith("tcp://"):
            return
        path = stream.local_path(directory, int(bound.rsplit(":", 1)[1]))
        if path is None:
            log.info("no local RPC socket: the state folder's path is too long for one")
            return
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of an earlier run on this port
        assert self._loop is not None
        self._local_server = await self._loop.create_unix_server(
            lambda: LocalPeer(self, self._next_local_identity()), path
        )
        os.chmod(path, 0o600)
        self.local_address = stream.SCHEME + path
        log.info("RPC endpoint listening on %s for replicas on this host", self.local_address)

    # -- replicas on this host, through the local socket (rpc/local.py) -------------------

    def _next_local_identity(self) -> bytes:
        self._local_ids += 1
        # Not a ZeroMQ identity (those start with a zero byte): no clash.
        return b"local-%d" % self._local_ids

    def local_connected(self, peer: LocalPeer) -> None:
        self._local_peers[peer.identity] = peer

    def local_oversized(self, exc: RPCError) -> None:
        """A local peer sent past the limits: it is disconnected, as by ZeroMQ's MAXMSGSIZE."""
        self.oversized_messages += 1
        self._log_dropped.log(
            logging.WARNING, "closed a local RPC connection: %s", p.cut(str(exc), 300)
        )

    def local_lost(self, peer: LocalPeer) -> None:
        self._local_peers.pop(peer.identity, None)
        self._drop(peer.identity, "connection lost")

    def statistics(self) -> dict[str, int]:
        """Counts of what peers sent that was dropped or refused (for status and metrics)."""
        return {
            "malformed_messages": self.malformed_messages,
            "oversized_messages": self.oversized_messages,
            "unregistered_messages": self.unregistered_messages,
            "rejected_registrations": self.rejected_registrations,
        }

    @property
    def bound_address(self) -> str:
        assert self._sock is not None
        return str(self._sock.getsockopt_string(zmq.LAST_ENDPOINT))

    async def stop(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None
        if self._local_server is not None:
            self._local_server.close()
            for peer in list(self._local_peers.values()):
                peer.close()
            self._local_server = None
            path = stream.path_of(self.local_address or "")
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            self._sock.close(linger=0)
            self._sock = None
        self._ctx.term()

    def send(self, identity: bytes, frames: p.Frames) -> bool:
        """Send frames to one container; False when it is gone (or its queue is full)."""
        local = self._local_peers.get(identity)
        if local is not None:
            return local.send(frames)
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # Again (queue full) or EHOSTUNREACH (peer gone)
            self._log_send.log(
                logging.WARNING, "could not send to RPC peer %s: %s", identity[:16].hex(), exc
            )
            return False
        finally:
            # The send may have consumed the descriptor's edge for waiting input.
            self._schedule_drain()
        return True

    def send_batch(
        self,
        replica: Replica,
        batch_id: int,
        inputs: Sequence[Any],
        time_limit_s: float | None = None,
        deadline_s: float | None = None,
    ) -> bool:
        """Send a replica one batch (``BatchTransport``): the inputs encoded
        for its input type, arrays as zero-copy frames."""
        frames = p.encode_batch(batch_id, replica.input_type, inputs, time_limit_s, deadline_s)
        return self.send(replica.identity, frames)

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
            self.handle(frames)
        self._schedule_drain()  # more may be waiting: continue after other work

    def handle(self, frames: list[bytes]) -> None:
        """One message (its sender's identity first), whatever it holds: a
        malformed one is counted and logged, never raised."""
        try:
            self._handle(frames)
        except RPCError as exc:
            self.malformed_messages += 1
            self._log_dropped.log(
                logging.WARNING, "dropped a malformed RPC message: %s", p.cut(str(exc), 300)
            )
        except Exception:  # never let one message stop the endpoint
            self.malformed_messages += 1
            self._log_dropped.log(
                logging.ERROR, "error while handling an RPC message", exc_info=True
            )

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            raise RPCError("message has no header frame")
        identity, header_frame, data = frames[0], frames[1], frames[2:]
        replica = self.replicas.get(identity)
        if replica is None:
            self._handle_stranger(identity, frames[1:])
            return
        size = p.frames_size(frames[1:])
        if len(frames) - 1 > p.MAX_FRAMES_REGISTERED or size > self.max_message_bytes:
            self._oversized(replica, len(frames) - 1, size, header_frame)
            return
        header = p.parse_header(header_frame)
        kind = header["type"]
        now = self.clock()
        replica.last_seen = now
        if kind == p.RESULT:
            batch_id = header.get("id")
            if type(batch_id) is not int:  # not a bool either
                raise RPCError("result without an integer 'id'")
            if header.get("ok") is not True:
                p.bound_error(header)
            replica.batches += 1
            self._result(replica, batch_id, header, data)
        elif kind == p.HEARTBEAT:
            self.send(identity, [p.make(p.HEARTBEAT)])
        elif kind == p.REGISTER:
            self._register(identity, header, now)
        elif kind == p.GOODBYE:
            self._drop(identity, "container shut down")
        else:
            raise RPCError(f"unexpected message type {kind!r} from a container")

    def _handle_stranger(self, identity: bytes, frames: list[bytes]) -> None:
        """A message from a peer that has not registered: a ``register`` is
        checked, a heartbeat answered ``reregister`` (within a rate), the rest
        dropped; nothing is kept about the peer."""
        if len(frames) > p.MAX_FRAMES_UNREGISTERED:
            self.oversized_messages += 1
            self._log_dropped.log(
                logging.WARNING,
                "dropped an RPC message of %d frames from a peer that has not registered",
                len(frames),
            )
            return
        header = p.parse_header(frames[0], p.MAX_UNREGISTERED_HEADER_BYTES)
        kind = header["type"]
        if kind == p.REGISTER:
            self._register(identity, header, self.clock())
        elif kind == p.HEARTBEAT:
            # A container the frontend forgot (it restarted, or dropped it for
            # silence) learns to register again; a stranger learns nothing.
            if self._reregisters.take():
                self.send(identity, [p.make(p.REREGISTER)])
        elif kind != p.GOODBYE:  # a refused container says goodbye as it exits
            self.unregistered_messages += 1
            self._log_dropped.log(
                logging.WARNING,
                "dropped a %s message from an RPC peer that has not registered",
                p.summary(kind, 20),
            )

    def _oversized(self, replica: Replica, count: int, size: int, header_frame: bytes) -> None:
        """A replica's message over the frame or size limit: a result settles
        its batch as a model error, anything else is dropped."""
        self.oversized_messages += 1
        what = f"{count} frames of {size:,} bytes in all"
        allowed = f"{p.MAX_FRAMES_REGISTERED} frames of {self.max_message_bytes:,} bytes in all"
        self._log_dropped.log(
            logging.WARNING,
            "replica %s of %s sent a message of %s, over the limit of %s",
            p.summary(replica.label, 40),
            replica.model,
            what,
            allowed,
        )
        try:
            header = p.parse_header(header_frame)
        except RPCError:
            return
        batch_id = header.get("id")
        if header["type"] != p.RESULT or type(batch_id) is not int:
            return
        replica.last_seen = self.clock()
        replica.batches += 1
        failed = {
            "v": p.PROTOCOL_VERSION,
            "type": p.RESULT,
            "id": batch_id,
            "ok": False,
            "error_type": p.RESULT_TOO_LARGE,
            "error_message": f"the result was {what}, over the RPC limit of {allowed}",
        }
        self._result(replica, batch_id, failed, [])

    def _result(
        self, replica: Replica, batch_id: int, header: dict[str, Any], frames: list[bytes]
    ) -> None:
        """Hand a replica's ``result`` to the listener, decoded: the outputs,
        or why there are none."""
        self.listener.batch_done(replica, batch_id, p.decode_result(header, frames))

    def _secret_ok(self, offered: Any) -> bool:
        if self._secret is None:
            return True
        if not isinstance(offered, str) or len(offered) > MAX_SECRET_CHARS:
            return False
        # Constant-time: the comparison must not leak how much matched.
        return hmac.compare_digest(offered.encode(), self._secret)

    def _registered_message(self) -> bytes:
        peers = {"peers": self.peers()} if self.peers is not None else {}
        return p.make(
            p.REGISTERED,
            heartbeat_interval=self.heartbeat_interval,
            max_message_bytes=self.max_message_bytes,
            features=list(p.FEATURES),
            **peers,
        )

    def announce_peers(self) -> None:
        """Tell every registered container the current worker peers (a worker
        started or was replaced): ``registered`` again, with the new list."""
        message = self._registered_message()
        for identity in list(self.replicas):
            self.send(identity, [message])

    def _register(self, identity: bytes, header: dict[str, Any], now: float) -> None:
        name, version = header.get("model_name"), header.get("model_version")
        if not self._secret_ok(header.get("secret")):
            # Before anything else: no registration check, nothing kept, and a
            # short escaped log line now and then (strangers may flood this).
            self.rejected_registrations += 1
            self._log_rejected.log(
                logging.WARNING,
                "refused an RPC registration for model %s version %s: wrong or missing secret",
                p.summary(name, 64),
                p.summary(version, 32),
            )
            self._drop(identity, "registered again without the secret")
            self.send(identity, [p.make(p.REJECTED, reason="wrong or missing secret")])
            return
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
        if identity in self.replicas:
            existing = self.replicas[identity]
            if existing.model == model:
                self.send(identity, [self._registered_message()])
                return
            self._drop(identity, "re-registered as another model")
        reason = self.check_registration(model, input_type) if self.check_registration else None
        if reason is not None:
            self._log_refused.log(
                logging.WARNING,
                "rejected a container for model %s version %s: %s",
                p.summary(name, 64),
                p.summary(version, 32),
                p.cut(reason, 300),
            )
            self.send(identity, [p.make(p.REJECTED, reason=reason)])
            return
        pid = header.get("pid")
        label = header.get("replica")
        replica = Replica(
            identity=identity,
            model=model,
            input_type=input_type,
            pid=pid if type(pid) is int and 0 < pid < 2**31 else None,
            label=(
                label
                if isinstance(label, str)
                and 0 < len(label) <= MAX_LABEL_CHARS
                and label.isprintable()  # it appears in log lines as it is
                else identity.hex()
            ),
            joined_at=now,
            last_seen=now,
            runtime=runtime_details(header.get("runtime")),
        )
        self.replicas[identity] = replica
        self.send(identity, [self._registered_message()])
        log.info("replica %s of %s joined (pid %s)", replica.label, model, replica.pid)
        self.listener.replica_joined(replica)

    def _liveness_tick(self) -> None:
        """Every ``heartbeat_interval``: ``check_liveness``, then the next tick."""
        try:
            self.check_liveness()
        except Exception:  # the checks must go on
            log.exception("RPC liveness check failed")
        self._liveness = self.timers.call_later(self.heartbeat_interval, self._liveness_tick)

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
