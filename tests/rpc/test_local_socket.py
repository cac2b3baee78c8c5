"""The RPC protocol over the local Unix socket (rpc/stream.py): the framing, the
frontend's listener, and a container's connection to it (real sockets)."""

import asyncio
import os
import stat
import threading
import time

import numpy as np
import pytest
import zmq

from clipper.container.links import StreamConn
from clipper.exceptions import RPCError
from clipper.rpc import protocol as p
from clipper.rpc import stream
from clipper.rpc.server import RPCServer
from clipper.timers import FakeTimers
from tests.helpers import free_port
from tests.rpc.test_server import Recorder, register, until


def test_messages_survive_any_split_of_the_stream():
    frames = [b"header", np.arange(6, dtype=np.float64).reshape(2, 3), b""]
    wire = b"".join(bytes(b) for b in stream.encode(frames)) * 3
    for chunk in (1, 2, 7, len(wire)):
        decoder = stream.Decoder(max_frames=4, max_frame_bytes=1024)
        got = []
        for i in range(0, len(wire), chunk):
            got += decoder.feed(wire[i : i + chunk])
        assert len(got) == 3
        assert got[0][0] == b"header" and got[0][2] == b""
        assert np.frombuffer(got[0][1]).tolist() == [0, 1, 2, 3, 4, 5]


def test_the_decoder_refuses_what_is_over_its_limits_before_buffering_it():
    decoder = stream.Decoder(max_frames=2, max_frame_bytes=16)
    with pytest.raises(RPCError, match="3 frames"):
        decoder.feed(b"".join(stream.encode([b"a", b"b", b"c"])))
    decoder = stream.Decoder(max_frames=2, max_frame_bytes=16)
    header = b"".join(bytes(b) for b in stream.encode([b"x" * 17]))[:8]
    with pytest.raises(RPCError, match="17 bytes"):
        decoder.feed(header)  # refused on the length, not after the bytes came
    with pytest.raises(RPCError, match="0 frames"):
        stream.Decoder(2, 16).feed(b"\0\0\0\0")


def test_paths_and_peers():
    assert stream.local_path("/s/run", 7000) == "/s/run/rpc-7000.sock"
    assert stream.local_path("/" + "x" * 120, 7000) is None  # too long for a socket
    assert stream.peer_path("/s/run/rpc-7000.sock", 41000) == "/s/run/rpc-41000.sock"
    assert stream.path_of("unix:///s/run/rpc-1.sock") == "/s/run/rpc-1.sock"
    assert stream.path_of("tcp://h:1") is None


def run_local(body, tmp_path, **settings):
    async def main():
        listener = Recorder()
        server = RPCServer(
            f"tcp://127.0.0.1:{free_port()}",
            listener,
            check_registration=lambda m, t: None,
            heartbeat_interval=0.05,
            heartbeat_timeout=0.5,
            timers=FakeTimers(),
            local_dir=str(tmp_path / "run"),
            **settings,
        )
        await server.start()
        try:
            await body(server, listener)
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_replica_registers_and_answers_over_the_local_socket(tmp_path):
    async def body(server, listener):
        path = stream.path_of(server.local_address)
        assert path is not None and path.startswith(str(tmp_path))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # its owner's only
        reader, writer = await asyncio.open_unix_connection(path)
        decoder = stream.Decoder(8, 1 << 20)

        async def receive():
            while True:
                messages = decoder.feed(await asyncio.wait_for(reader.read(65536), 20))
                if messages:
                    return messages[0]

        writer.writelines(stream.encode(register()))
        assert p.parse_header((await receive())[0])["type"] == p.REGISTERED
        assert listener.events == [("joined", "m")]
        replica = listener.replicas[0]
        # A batch goes out on the socket; its result comes back decoded.
        assert server.send_batch(replica, 3, [np.ones(2), np.zeros(2)])
        batch = await receive()
        assert p.parse_header(batch[0])["type"] == p.BATCH
        writer.writelines(stream.encode(p.encode_result_ok(3, [1.0, 2.0])))
        await until(lambda: ("result", 3) in listener.events)
        assert listener.results[3] == [1.0, 2.0]
        # Closing the connection removes the replica at once.
        writer.close()
        await until(lambda: ("left", "connection lost") in listener.events)
        assert not server.send_batch(replica, 4, [np.ones(2)])
        await server.stop()
        assert not os.path.exists(path)

    run_local(body, tmp_path)


def test_a_peer_that_breaks_the_limits_is_disconnected(tmp_path):
    async def body(server, listener):
        reader, writer = await asyncio.open_unix_connection(stream.path_of(server.local_address))
        writer.write(b"\0\0\0\x09")  # nine frames: more than any message has
        assert await asyncio.wait_for(reader.read(), 20) == b""  # closed
        writer.close()
        await until(lambda: server.oversized_messages == 1)
        # A stranger's garbage is dropped and counted, as over ZeroMQ.
        reader, writer = await asyncio.open_unix_connection(stream.path_of(server.local_address))
        writer.writelines(stream.encode([b"\xc1 not msgpack"]))
        await until(lambda: server.malformed_messages == 1)
        writer.close()
        await writer.wait_closed()

    run_local(body, tmp_path)


def test_a_container_link_reconnects_when_the_frontend_comes_back(tmp_path):
    path = str(tmp_path / "rpc-1.sock")
    poller = zmq.Poller()
    conn = StreamConn(path, poller)  # no frontend yet
    assert conn.sock is None and not conn.send([b"x"])
    accepted = []

    def serve():
        import socket

        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen()
        peer, _ = srv.accept()
        accepted.append(peer.recv(1024))
        peer.sendall(b"".join(bytes(b) for b in stream.encode([b"hello", b"there"])))
        peer.close()
        srv.close()

    thread = threading.Thread(target=serve)
    thread.start()
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert conn.maintain(time.monotonic() + 1)  # connected now
    assert conn.send([b"reg"])
    events = dict(poller.poll(20_000))
    assert conn.ready(events)
    messages = []
    while not messages:
        messages = conn.receive()
    assert messages == [[b"hello", b"there"]]
    thread.join(20)
    assert accepted and accepted[0].endswith(b"reg")
    # The frontend went: the next read sees it, and the link waits to reconnect.
    dict(poller.poll(20_000))
    assert conn.receive() == [] and conn.sock is None
