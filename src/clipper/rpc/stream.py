"""The RPC protocol's messages over a stream socket (pure, no I/O).

ZeroMQ carries the protocol between hosts; between a frontend and a replica
on the same host, a Unix stream socket in the state folder carries the same
messages with fewer thread hand-offs: ZeroMQ moves every message through an
I/O thread on each side (four thread wake-ups per batch's round trip), while
a stream socket is read by the event loop itself on the frontend and by the
container's main thread (two). At low load, where each wake-up costs tens
of microseconds on an idle core, that is about half of the hop's latency
(docs/benchmarks.md).

A message is its frames, framed: a 4-byte big-endian frame count, then each
frame as a 4-byte big-endian length and its bytes. The decoder bounds what a
peer can make it hold before a message is complete: at most ``max_frames``
frames, each at most ``max_frame_bytes`` (the same limits ZeroMQ's
``MAXMSGSIZE`` and the frame counts enforce), else ``RPCError``: the
connection is closed, as ZeroMQ disconnects such a peer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ..exceptions import RPCError

_U32 = struct.Struct("!I")
SCHEME = "unix://"
# sockaddr_un's path is at most 107 bytes on Linux (108 with the NUL).
MAX_PATH_BYTES = 107


def encode(frames: Sequence[Any]) -> list[Any]:
    """One message as buffers to write in order (the frames themselves are not copied)."""
    out: list[Any] = [_U32.pack(len(frames))]
    for frame in frames:
        view = memoryview(frame)
        out.append(_U32.pack(view.nbytes))
        out.append(view.cast("B") if view.ndim != 1 or view.format != "B" else view)
    return out


class Decoder:
    """Messages out of a byte stream, fed as it arrives."""

    def __init__(self, max_frames: int, max_frame_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._frames: list[bytes] = []
        self._count: int | None = None  # frames in the message being read

    def feed(self, data: bytes | bytearray | memoryview) -> list[list[bytes]]:
        """Take ``data``; the messages it completes. Raises ``RPCError`` when the
        peer breaks the framing or the limits (then stop reading from it)."""
        buf = self._buffer
        buf += data
        pos = 0
        done: list[list[bytes]] = []
        while True:
            if self._count is None:
                if len(buf) - pos < 4:
                    break
                (count,) = _U32.unpack_from(buf, pos)
                if not 0 < count <= self.max_frames:
                    raise RPCError(f"a message of {count} frames (at most {self.max_frames})")
                self._count, pos = count, pos + 4
            if len(buf) - pos < 4:
                break
            (size,) = _U32.unpack_from(buf, pos)
            if size > self.max_frame_bytes:
                raise RPCError(f"a frame of {size:,} bytes (at most {self.max_frame_bytes:,})")
            if len(buf) - pos - 4 < size:
                break
            self._frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
            if len(self._frames) == self._count:
                done.append(self._frames)
                self._frames, self._count = [], None
        del buf[:pos]
        return done


def path_of(address: str) -> str | None:
    """The socket path of a ``unix://`` address, or None for another scheme."""
    return address[len(SCHEME) :] if address.startswith(SCHEME) else None


def local_path(directory: str, port: int) -> str | None:
    """Where the frontend process whose RPC (TCP) port is ``port`` listens for
    replicas on its host: ``<directory>/rpc-<port>.sock``; None when that path
    is too long for a Unix socket."""
    path = f"{directory.rstrip('/')}/rpc-{port}.sock"
    return path if len(path.encode()) <= MAX_PATH_BYTES else None


def peer_path(path: str, port: int) -> str:
    """A worker peer's socket, beside ``path`` (a frontend's ``rpc-<port>.sock``)."""
    directory = path.rsplit("/", 1)[0]
    return f"{directory}/rpc-{port}.sock"
