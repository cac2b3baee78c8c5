"""Replicas on this host: the RPC server's peers on its Unix socket.

A replica the server started on its own host connects to a Unix socket in the
state folder instead of ZeroMQ over TCP (rpc/stream.py frames the same
messages): two thread hand-offs fewer per batch. Each connection is a
``LocalPeer``, a ZeroMQ peer in all but transport: its own identity, the same
messages, checks and limits. The server (``LocalHost``) keeps the peers and
takes their messages.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from ..exceptions import RPCError
from . import protocol as p
from . import stream

# A local peer's messages may wait in its socket's buffer up to this (then a
# send fails, as ZeroMQ's does past its high-water mark).
LOCAL_SEND_BUFFER_BYTES = 256 * 1024 * 1024


class LocalHost(Protocol):
    """What a local peer needs of the RPC server."""

    max_message_bytes: int

    def handle(self, frames: list[bytes]) -> None:
        """One message: the sender's identity, then its frames."""

    def local_connected(self, peer: LocalPeer) -> None: ...

    def local_oversized(self, exc: RPCError) -> None: ...

    def local_lost(self, peer: LocalPeer) -> None: ...


class LocalPeer(asyncio.Protocol):
    """One replica's connection to the local socket."""

    def __init__(self, host: LocalHost, identity: bytes) -> None:
        self.host = host
        self.identity = identity
        self.decoder = stream.Decoder(p.MAX_FRAMES_REGISTERED, host.max_message_bytes)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.host.local_connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except RPCError as exc:  # as ZeroMQ's MAXMSGSIZE: the peer is disconnected
            self.host.local_oversized(exc)
            self.close()
            return
        for frames in messages:
            self.host.handle([self.identity, *frames])

    def send(self, frames: p.Frames) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > LOCAL_SEND_BUFFER_BYTES:
            return False
        transport.writelines(stream.encode(frames))
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.local_lost(self)
