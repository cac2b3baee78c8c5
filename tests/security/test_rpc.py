"""A rogue on the RPC port of a real server (issue #20).

A ZeroMQ DEALER in the test process, without the server's secret, tries
what a process that can reach the RPC port could: register as a deployed
model's replica, send heartbeats and results for guessed batch ids, flood
the port with registrations that carry forged log lines, and send messages
with too many or too large frames. It never registers, never receives a
query, changes no answer and nothing in the cache; the server's log stays
short and unforged; and the server keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from clipper.rpc import protocol as p
from clipper.statedir import RPC_SECRET_FILE, read_secret
from tests.e2e import models
from tests.helpers import Clipper, wait_for
from tests.reliability.support import deploy

pytestmark = pytest.mark.slow

APP, MODEL = "sec-app", "sec-m"
# A registration name that, written raw to the log, would forge a line of its own.
FORGED = "2001-01-01 00:00:00,000 INFO clipper.rpc: replica forged of sec-m:1 joined"


@pytest.fixture(scope="module")
def clipper(tmp_path_factory) -> Iterator[Clipper]:
    # No secret configured: the server makes its own, as in production.
    server = Clipper(tmp_path_factory.mktemp("rpc-attack")).start()
    try:
        assert read_secret(server.cm.state_path, RPC_SECRET_FILE)
        deploy(server, APP, MODEL, models.total)
        yield server
    finally:
        server.stop()


class Rogue:
    """A DEALER that does not know the secret, and keeps everything it receives."""

    def __init__(self, port: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.received: list[dict[str, Any]] = []

    def send(self, header: dict[str, Any], *data: bytes) -> None:
        self.sock.send_multipart([msgpack.packb({"v": 1, **header}), *data])

    def receive(self, timeout: float = 0.0) -> dict[str, Any] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        header = msgpack.unpackb(self.sock.recv_multipart()[0])
        self.received.append(header)
        return header  # type: ignore[no-any-return]

    def receive_all(self) -> None:
        while self.receive() is not None:
            pass

    def next_reply(self, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            header = self.receive(timeout=1.0)
            if header is not None and header["type"] == kind:
                return header
        raise AssertionError(f"no {kind!r} reply within 30s")

    def disconnected(self) -> bool:
        if not self.monitor.poll(0):
            return False
        event = parse_monitor_message(self.monitor.recv_multipart())
        return bool(event["event"] == zmq.EVENT_DISCONNECTED)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close()
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def rogue(clipper) -> Iterator[Rogue]:
    r = Rogue(clipper.cm.clipper_rpc_port)
    try:
        yield r
    finally:
        # Whatever it tried, it was never given work or a registration.
        r.receive_all()
        assert {h["type"] for h in r.received} <= {p.REJECTED, p.REREGISTER}, r.received
        r.close()


def register(**fields: Any) -> dict[str, Any]:
    return {
        "type": "register",
        "model_name": MODEL,
        "model_version": "1",
        "input_type": "doubles",
        "pid": 1,
        "replica": "rogue",
        **fields,
    }


def log_lines(clipper: Clipper) -> list[str]:
    return (clipper.cm.state_path / "logs" / "server.log").read_text().splitlines()


def the_real_replica(clipper: Clipper) -> list[tuple[str, int]]:
    return [(r["replica"], r["pid"]) for r in clipper.live_replicas(MODEL)]


def assert_answers_from_the_model(clipper: Clipper, xs: list[list[float]]) -> None:
    for x in xs:
        r = clipper.predict(APP, {"input": x})
        assert r.status_code == 200, r.text
        assert r.json() == {**r.json(), "output": sum(x), "default": False}, r.json()


def test_a_rogue_cannot_register_and_its_flood_leaves_the_log_short(clipper, rogue):
    before = the_real_replica(clipper)
    assert len(before) == 1
    started = time.monotonic()
    for fields in ({}, {"secret": "guess"}, {"secret": ""}, {"secret": 0}):
        rogue.send(register(**fields))
        reply = rogue.next_reply(p.REJECTED)
        assert reply["reason"] == "wrong or missing secret"
    flood = 300
    for i in range(flood):
        rogue.send(register(model_name=f"{MODEL}\n{FORGED}", replica=f"r{i}\n{FORGED}"))
    for _ in range(flood):
        assert rogue.next_reply(p.REJECTED)["reason"] == "wrong or missing secret"
    elapsed = time.monotonic() - started
    assert the_real_replica(clipper) == before
    lines = log_lines(clipper)
    # Nothing the rogue sent became a line of its own...
    assert not any(line.startswith("2001-01-01") for line in lines)
    # ...and 304 refusals are a line every 10 seconds, not a line each.
    refusals = [line for line in lines if "wrong or missing secret" in line]
    assert 1 <= len(refusals) <= 2 + elapsed / 10, refusals
    assert all(len(line) < 500 for line in refusals)


def test_a_rogue_gets_no_query_and_cannot_change_answers_or_the_cache(clipper, rogue):
    assert_answers_from_the_model(clipper, [[1.0, 2.0]])  # cached from now on
    stop = threading.Event()
    sent = 0

    def spam() -> None:
        # Heartbeats, and outputs and errors for every batch id the server may use
        # (they count up from 1), over and over while the queries run.
        nonlocal sent
        while not stop.is_set():
            for batch_id in range(1, 200):
                rogue.send({"type": "heartbeat"})
                rogue.send({"type": "result", "id": batch_id, "ok": True}, msgpack.packb([-1.0]))
                rogue.send(
                    {"type": "result", "id": batch_id, "ok": False, "error_type": "E"}
                    | {"error_message": "poisoned"}
                )
                sent += 3
            stop.wait(0.01)  # let the server keep up with the replies it owes

    started = time.monotonic()
    spammer = threading.Thread(target=spam, daemon=True)
    spammer.start()
    try:
        wait_for(lambda: sent > 3000, what="the rogue's messages")
        # Fresh inputs (computed by the model while the rogue sends) and the cached one.
        assert_answers_from_the_model(clipper, [[float(i), 0.5] for i in range(30)])
        assert_answers_from_the_model(clipper, [[1.0, 2.0]])
    finally:
        stop.set()
        spammer.join(30)
    elapsed = time.monotonic() - started
    assert len(the_real_replica(clipper)) == 1
    assert_answers_from_the_model(clipper, [[1.0, 2.0], [3.0, 4.0]])
    # The rogue's thousands of results are a line now and then in the log.
    dropped = [line for line in log_lines(clipper) if "has not registered" in line]
    assert 1 <= len(dropped) <= 2 * (2 + elapsed / 10), dropped


def test_many_frames_and_oversized_frames_are_dropped_and_the_server_serves(clipper, rogue):
    before = the_real_replica(clipper)
    # A message of many frames: dropped unread (a stranger may send one frame).
    rogue.sock.send_multipart([msgpack.packb({"v": 1, "type": "heartbeat"})] + [b"x"] * 10_000)
    rogue.send({"type": "heartbeat"})  # answered: the connection still stands
    rogue.next_reply(p.REREGISTER)
    assert not rogue.disconnected()
    # A frame over the server's limit (64 MiB) costs the rogue its connection
    # before the server buffers it.
    rogue.sock.send_multipart([b"\x00" * (p.DEFAULT_MAX_MESSAGE_BYTES + 1)])
    wait_for(rogue.disconnected, what="the server to drop the oversized sender")
    # After all of the attacks, the server serves as before.
    assert the_real_replica(clipper) == before
    assert clipper.http.get(f"{clipper.query_url}/health").status_code == 200
    assert_answers_from_the_model(clipper, [[5.0, 6.0], [1.0, 2.0]])
    assert not any(line.startswith("2001-01-01") for line in log_lines(clipper))
