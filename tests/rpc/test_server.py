"""The RPC endpoint with real ZeroMQ sockets on a free port."""

import asyncio

import msgpack
import zmq
import zmq.asyncio

from clipper.rpc import protocol as p
from clipper.rpc.server import RPCServer
from tests.helpers import free_port


class Recorder:
    def __init__(self):
        self.events = []
        self.headers = {}  # batch id -> the result's header, as the listener got it

    def replica_joined(self, replica):
        self.events.append(("joined", replica.model.name))

    def replica_left(self, replica, reason):
        self.events.append(("left", reason))

    def batch_result(self, replica, batch_id, header, frames):
        self.events.append(("result", batch_id))
        self.headers[batch_id] = (header, frames)


async def until(condition, timeout=20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def run(coro_fn, **settings):
    """Run ``coro_fn(server, listener, dealer)`` against an endpoint on a free
    port (``settings`` override its keyword arguments) and a raw DEALER."""

    async def main():
        listener = Recorder()
        address = f"tcp://127.0.0.1:{free_port()}"
        server = RPCServer(
            address,
            listener,
            **{
                "check_registration": lambda m, t: None if m.name != "ghost" else "unknown model",
                "heartbeat_interval": 0.05,
                "heartbeat_timeout": 0.5,
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
        # The frontend heartbeats us; results for a known replica reach the listener.
        assert await recv_type(dealer) == p.HEARTBEAT
        await dealer.send_multipart(p.encode_result_ok(9, [1]))
        await until(lambda: ("result", 9) in listener.events)
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
        await until(lambda: any(e[0] == "left" for e in listener.events))
        assert not server.send(identity, [p.make(p.HEARTBEAT)])
        assert not server.send(b"nobody", [p.make(p.HEARTBEAT)])

    run(body)


def test_garbage_is_counted_and_dropped():
    async def body(server, listener, dealer):
        for frames in ([b"\xc1"], [msgpack.packb({"v": 7, "type": "register"})], [b""]):
            await dealer.send_multipart(frames)
        await until(lambda: server.malformed_messages >= 3)
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED

    run(body)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_hung(coro_fn, grace=5.0):
    """A registered replica on an endpoint whose liveness the test drives
    (``check_liveness`` on a fake clock; the background loop never ticks) and
    which records what it reports hung."""
    clock, hung = FakeClock(), []

    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        await coro_fn(server, listener, dealer, clock, hung)

    run(
        body,
        heartbeat_interval=3600.0,
        heartbeat_timeout=3.0,
        clock=clock,
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
