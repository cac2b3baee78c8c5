"""The RPC endpoint with real ZeroMQ sockets on a free port, its liveness checks
on fake timers (``server.timers``: they run when a test moves the clock)."""

import asyncio

import msgpack
import numpy as np
import pytest
import zmq
import zmq.asyncio

from clipper.rpc import protocol as p
from clipper.rpc.server import RPCServer
from clipper.timers import FakeTimers
from tests.helpers import free_port


class Recorder:
    def __init__(self):
        self.events = []
        self.results = {}  # batch id -> the result, as the listener got it
        self.replicas = []

    def replica_joined(self, replica):
        self.events.append(("joined", replica.model.name))
        self.replicas.append(replica)

    def replica_left(self, replica, reason):
        self.events.append(("left", reason))

    def batch_done(self, replica, batch_id, result):
        self.events.append(("result", batch_id))
        self.results[batch_id] = result


async def until(condition, timeout=20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def run(coro_fn, listener=None, **settings):
    """Run ``coro_fn(server, listener, dealer)`` against an endpoint on a free
    port (``settings`` override its keyword arguments; its timers are fake
    unless given) and a raw DEALER."""

    async def main():
        nonlocal listener
        listener = listener or Recorder()
        address = f"tcp://127.0.0.1:{free_port()}"
        server = RPCServer(
            address,
            listener,
            **{
                "check_registration": lambda m, t: None if m.name != "ghost" else "unknown model",
                "heartbeat_interval": 0.05,
                "heartbeat_timeout": 0.5,
                "timers": FakeTimers(),
                **settings,
            },
        )
        await server.start()
        ctx = zmq.asyncio.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(address)
        try:
            await coro_fn(server, listener, dealer)
        finally:
            dealer.close(0)
            ctx.term()
            await server.stop()

    asyncio.run(main())


def register(name="m"):
    return [p.make(p.REGISTER, model_name=name, model_version="1", input_type="doubles", pid=1)]


async def recv_type(dealer):
    frames = await asyncio.wait_for(dealer.recv_multipart(), 20)
    return p.parse_header(frames[0])["type"]


def test_registration_heartbeats_results_and_goodbye():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        assert listener.events == [("joined", "m")]
        # The frontend heartbeats us, every interval; results for a known
        # replica reach the listener, decoded.
        server.timers.advance(0.05)
        assert await recv_type(dealer) == p.HEARTBEAT
        await dealer.send_multipart(p.encode_result_ok(9, [1]))
        await until(lambda: ("result", 9) in listener.events)
        assert listener.results[9] == [1]
        await dealer.send_multipart([p.make(p.GOODBYE)])
        await until(lambda: ("left", "container shut down") in listener.events)
        assert server.replicas == {}

    run(body)


def test_unknown_models_are_rejected_and_strangers_asked_to_register():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register("ghost"))
        assert await recv_type(dealer) == p.REJECTED
        await dealer.send_multipart([p.make(p.HEARTBEAT)])
        assert await recv_type(dealer) == p.REREGISTER
        assert listener.events == []

    run(body)


def test_a_silent_replica_is_removed_and_sends_to_it_fail():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        identity = next(iter(server.replicas))
        dealer.close(0)  # gone without a goodbye
        server.timers.advance(1.0)  # heartbeats until the timeout: still counted live
        assert server.replicas and not any(e[0] == "left" for e in listener.events)
        server.timers.advance(0.25)  # the next check: silent past the timeout
        assert listener.events[-1] == ("left", "no heartbeat for 1.2s") and not server.replicas
        await until(lambda: not server.send(identity, [p.make(p.HEARTBEAT)]))
        assert not server.send(b"nobody", [p.make(p.HEARTBEAT)])

    run(body, heartbeat_interval=0.25, heartbeat_timeout=1.0)


def test_garbage_is_counted_and_dropped():
    async def body(server, listener, dealer):
        for frames in ([b"\xc1"], [msgpack.packb({"v": 7, "type": "register"})], [b""]):
            await dealer.send_multipart(frames)
        await until(lambda: server.malformed_messages >= 3)
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED

    run(body)


class Clock:
    """Sets the time of fake timers: ``clock.now = t`` moves them to ``t``."""

    def __init__(self, timers):
        self.timers = timers

    @property
    def now(self):
        return self.timers.now()

    @now.setter
    def now(self, when):
        self.timers.advance(when - self.timers.now())


def run_hung(coro_fn, grace=5.0):
    """A registered replica on an endpoint whose liveness the test drives
    (``check_liveness`` on the fake clock; the interval is too long for a
    tick) and which records what it reports hung."""
    hung = []

    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        await coro_fn(server, listener, dealer, Clock(server.timers), hung)

    run(
        body,
        heartbeat_interval=3600.0,
        heartbeat_timeout=3.0,
        on_unresponsive=hung.append,
        unresponsive_after=lambda model: grace if model.name == "m" else 1.0,
    )


def test_a_replica_silent_past_its_grace_is_reported_hung_once():
    async def body(server, listener, dealer, clock, hung):
        clock.now = 3.5  # past the heartbeat timeout: removed
        server.check_liveness()
        assert listener.events[-1] == ("left", "no heartbeat for 3.5s")
        assert server.replicas == {}
        clock.now = 3.5 + 4.9  # within the model's grace (5 s): it may still come back
        server.check_liveness()
        assert hung == []
        clock.now = 3.5 + 5.0
        server.check_liveness()
        assert [(r.model.name, r.pid) for r in hung] == [("m", 1)]
        clock.now = 100.0
        server.check_liveness()
        assert len(hung) == 1  # reported once

    run_hung(body)


def test_a_replica_that_comes_back_within_its_grace_is_not_reported():
    async def body(server, listener, dealer, clock, hung):
        clock.now = 3.5
        server.check_liveness()
        assert server.replicas == {}
        # It was only slow: its next heartbeat is answered "register again", and it does.
        await dealer.send_multipart([p.make(p.HEARTBEAT)])
        assert await recv_type(dealer) == p.REREGISTER
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        clock.now = 100.0
        server.check_liveness()  # removed again (silent again), but it came back once
        assert hung == []
        clock.now = 200.0
        server.check_liveness()
        assert len(hung) == 1  # the second silence was never followed by a return

    run_hung(body)


def test_a_replica_whose_process_exited_is_not_reported_hung():
    async def body(server, listener, dealer, clock, hung):
        clock.now = 3.5
        server.check_liveness()
        server.process_exited(1)  # its manager saw it exit: nothing left to end
        clock.now = 100.0
        server.check_liveness()
        assert hung == []

    run_hung(body)


def test_a_failing_hung_report_does_not_stop_liveness_checks():
    async def body(server, listener, dealer, clock, hung):
        def boom(replica):
            hung.append(replica)
            raise RuntimeError("manager unavailable")

        server.on_unresponsive = boom
        clock.now = 3.5
        server.check_liveness()
        clock.now = 100.0
        server.check_liveness()  # logged, not raised
        assert len(hung) == 1
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        clock.now = 200.0
        server.check_liveness()  # the loop still removes silent replicas
        assert listener.events.count(("joined", "m")) == 2
        assert listener.events[-1][0] == "left"

    run_hung(body)


def test_a_batch_goes_out_encoded_and_its_result_comes_back_decoded():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        (replica,) = listener.replicas
        inputs = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
        assert server.send_batch(replica, 7, inputs, time_limit_s=3.0)
        frames = await asyncio.wait_for(dealer.recv_multipart(), 20)
        header = p.parse_header(frames[0])
        assert header["type"] == p.BATCH and header["id"] == 7 and header["time_limit_s"] == 3.0
        assert p.decode_inputs(header, frames[1:]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
        await dealer.send_multipart(p.encode_result_ok(7, [3.0, 7.0]))
        await dealer.send_multipart(p.encode_result_error(8, "ValueError", "boom"))
        await dealer.send_multipart([p.make(p.RESULT, id=9, ok=True), p.pack({"not": "a list"})])
        await until(lambda: ("result", 9) in listener.events)
        assert listener.results[7] == [3.0, 7.0]
        assert listener.results[8] == p.ModelRaised("ValueError", "boom")
        assert listener.results[9] == p.BadResult("outputs frame is not a list")

    run(body)


def test_a_listener_gets_a_result_decoded():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        await dealer.send_multipart(p.encode_result_ok(3, ["x"]))
        await until(lambda: ("result", 3) in listener.events)
        assert listener.results[3] == ["x"]

    run(body)


def test_a_send_batch_to_a_vanished_replica_is_false_and_bad_inputs_raise():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        (replica,) = listener.replicas
        with pytest.raises((TypeError, ValueError, AttributeError)):
            server.send_batch(replica, 1, ["not a number"])  # nothing is sent
        dealer.close(0)
        await until(lambda: not server.send_batch(replica, 2, [np.array([1.0])]))

    run(body)


def test_liveness_checks_run_every_interval_on_the_servers_timers():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        server.timers.advance(0.75)  # three intervals: three heartbeats
        assert [await recv_type(dealer) for _ in range(3)] == [p.HEARTBEAT] * 3
        await dealer.send_multipart([p.make(p.HEARTBEAT)])  # keeps it live...
        assert await recv_type(dealer) == p.HEARTBEAT
        server.timers.advance(0.75)
        assert server.replicas  # ...past the timeout counted from its registration
        assert server.timers.pending() == [1.75]

    run(body, heartbeat_interval=0.25, heartbeat_timeout=1.0)
