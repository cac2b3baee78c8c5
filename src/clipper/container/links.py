"""A container's connection to one frontend process: ZeroMQ, or a local Unix socket.

``tcp://`` (and any other ZeroMQ address) gets a DEALER socket, which ZeroMQ
reconnects by itself. ``unix://<path>`` (a frontend on this host, its socket
in the state folder) gets a plain stream socket read by the container's main
thread (rpc/stream.py: the same messages, two thread hand-offs fewer per
batch); it is connected again after the frontend goes, every
``RECONNECT_S``. Either registers itself with the main loop's poller.
A ``Link`` is one frontend the container serves: its connection and clocks.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from ..exceptions import RPCError
from ..rpc import protocol as p
from ..rpc import stream

RECONNECT_S = 0.1
SEND_TIMEOUT_S = 5.0  # a local frontend that reads nothing for this long is gone
IOV_MAX = 1024  # buffers per sendmsg call (Linux's limit)
# What a container takes from its frontend in one message: a batch's header and
# its inputs (one frame each at most); each frame's length is 4 bytes anyway.
MAX_FRAMES = 1 << 20


class Conn(Protocol):
    """What a link needs of its connection."""

    def send(self, frames: p.Frames) -> bool: ...

    def receive(self) -> list[list[Any]]: ...

    def maintain(self, now: float) -> bool: ...

    def close(self, linger_ms: int) -> None: ...

    def ready(self, events: dict[Any, int]) -> bool:
        """Whether the poller's ``events`` say this connection has input."""
        ...


class DealerConn:
    """A ZeroMQ DEALER to the frontend (ZeroMQ connects and reconnects it)."""

    def __init__(
        self, ctx: zmq.Context[Any], address: str, poller: zmq.Poller, server_key: bytes | None
    ) -> None:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        # Queue nothing while disconnected: stale heartbeats and results are
        # useless to a frontend that restarted, and registration is resent.
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if server_key:
            public, secret = zmq.curve_keypair()  # ours is ephemeral: auth is the secret
            dealer.curve_serverkey = server_key
            dealer.curve_publickey = public
            dealer.curve_secretkey = secret
        dealer.connect(address)
        poller.register(dealer, zmq.POLLIN)
        self.sock = dealer
        self.poller = poller

    def ready(self, events: dict[Any, int]) -> bool:
        return self.sock in events

    def send(self, frames: p.Frames) -> bool:
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def receive(self) -> list[list[Any]]:
        return [[f.buffer for f in self.sock.recv_multipart(copy=False)]]

    def maintain(self, now: float) -> bool:
        return False  # ZeroMQ reconnects by itself

    def close(self, linger_ms: int) -> None:
        with contextlib.suppress(KeyError):
            self.poller.unregister(self.sock)
        self.sock.close(linger=linger_ms)


class StreamConn:
    """A Unix stream socket to a frontend on this host."""

    def __init__(self, path: str, poller: zmq.Poller) -> None:
        self.path = path
        self.poller = poller
        self.sock: socket.socket | None = None
        self.decoder = stream.Decoder(MAX_FRAMES, 2**32 - 1)
        self.next_try = 0.0
        self._connect()

    def ready(self, events: dict[Any, int]) -> bool:
        # The poller names a plain socket by its file descriptor.
        return self.sock is not None and self.sock.fileno() in events

    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SEND_TIMEOUT_S)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return False
        self.sock = sock
        self.decoder = stream.Decoder(MAX_FRAMES, 2**32 - 1)
        self.poller.register(sock, zmq.POLLIN)
        return True

    def maintain(self, now: float) -> bool:
        """Connect again when the frontend went away; True: (re)connected just now."""
        if self.sock is not None or now < self.next_try:
            return False
        self.next_try = now + RECONNECT_S
        return self._connect()

    def _lost(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(KeyError):
                self.poller.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def send(self, frames: p.Frames) -> bool:
        sock = self.sock
        if sock is None:
            return False
        views = [memoryview(b) for b in stream.encode(frames)]
        try:
            while views:
                sent = sock.sendmsg(views[:IOV_MAX])
                while sent:  # drop what went out, keep the rest
                    if sent >= views[0].nbytes:
                        sent -= views.pop(0).nbytes
                    else:
                        views[0], sent = views[0][sent:], 0
        except OSError:  # the frontend went (or reads nothing): connect again later
            self._lost()
            return False
        return True

    def receive(self) -> list[list[Any]]:
        sock = self.sock
        if sock is None:
            return []
        try:
            data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:  # the frontend closed it
            self._lost()
            return []
        try:
            return list(self.decoder.feed(data))
        except RPCError:
            self._lost()
            return []

    def close(self, linger_ms: int) -> None:
        self._lost()


def connect(
    ctx: zmq.Context[Any], address: str, poller: zmq.Poller, server_key: bytes | None
) -> Conn:
    """The connection ``address`` calls for, registered with ``poller``."""
    path = stream.path_of(address)
    if path is not None:
        return StreamConn(path, poller)
    return DealerConn(ctx, address, poller, server_key)


@dataclass(eq=False)
class Link:
    """One frontend this container serves: its connection and its clocks.

    The first link goes to the address the container was given; the frontend
    answers its registration with ``peers`` when it runs several worker
    processes, and the container opens one more link to each (the same host,
    the ports named), so every worker sends it batches directly.
    """

    address: str
    conn: Conn  # ZeroMQ, or a Unix socket to a frontend on this host
    primary: bool
    last_heard: float
    last_register: float = 0.0
    last_beat: float = 0.0
    registered: bool = False
    # A ``register`` not yet sent: a new connection takes no message until it
    # is up (``IMMEDIATE``), so it is sent again at each turn until it goes.
    register_unsent: bool = False
    rejected_logged: float = float("-inf")

    def __post_init__(self) -> None:
        self.last_register = self.last_beat = self.last_heard

    def send(self, frames: p.Frames) -> bool:
        return self.conn.send(frames)
