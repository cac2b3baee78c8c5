"""The RPC endpoint against peers that are not our replicas (issue #20): the
secret, strangers' messages, frame and size limits, and bounded logs.

Real ZeroMQ sockets on free ports, as in test_server.py.
"""

import asyncio
import contextlib
import logging

import msgpack
import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from clipper.rpc import protocol as p
from clipper.rpc import server as server_module
from tests.rpc.test_server import recv_type, run, until

SECRET = "the-right-secret"


def register(secret=None, name="m", **fields):
    header = {"model_name": name, "model_version": "1", "input_type": "doubles", "pid": 1}
    header.update(fields)
    if secret is not None:
        header["secret"] = secret
    return [p.make(p.REGISTER, **header)]


async def recv_header(dealer):
    frames = await asyncio.wait_for(dealer.recv_multipart(), 20)
    return p.parse_header(frames[0])


@contextlib.asynccontextmanager
async def stranger(server):
    """Another DEALER on the endpoint (the test's own is the replica)."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    try:
        yield sock
    finally:
        sock.close(0)
        ctx.term()


def rpc_warnings(caplog):
    return [r for r in caplog.records if r.name == "clipper.rpc" and r.levelno >= logging.WARNING]


def test_a_registration_without_the_secret_is_refused_before_any_work(caplog):
    checked = []

    def check(model, input_type):
        checked.append(model)  # the server refreshes its catalog here: real work
        return None

    rogue_name = "evil\nINJECTED fake log line " + "x" * 5000
    attempts = [
        register(),  # no secret
        register("wrong"),
        register(""),
        register(SECRET.encode()),  # bytes, not a string
        register(12345),
        register(SECRET + "x" * 5000),  # long
        register("wrong", name=rogue_name),
        register(None, name=rogue_name, model_version="\x1b[31m" * 100),
    ] * 5

    async def body(server, listener, dealer):
        for frames in attempts:
            await dealer.send_multipart(frames)
            reply = await recv_header(dealer)
            assert reply["type"] == p.REJECTED and reply["reason"] == "wrong or missing secret"
        assert checked == [] and server.replicas == {} and listener.events == []
        assert server.rejected_registrations == len(attempts)
        # A stranger's header over 16 KiB is not even decoded (and gets no answer).
        await dealer.send_multipart(register(SECRET + "x" * 100_000))
        await until(lambda: server.malformed_messages == 1)
        # The right secret registers, and only then is the registration checked.
        await dealer.send_multipart(register(SECRET))
        reply = await recv_header(dealer)
        assert reply["type"] == p.REGISTERED
        assert [m.name for m in checked] == ["m"] and listener.events == [("joined", "m")]

    run(body, secret=SECRET, check_registration=check, heartbeat_interval=3600.0)
    # One short, escaped line for the whole flood: nothing the peer sent is
    # written raw (no forged line, no terminal escapes), nothing unbounded.
    messages = [r.getMessage() for r in rpc_warnings(caplog)]
    assert len([m for m in messages if "wrong or missing secret" in m]) == 1
    for message in messages:
        assert "\n" not in message and "\x1b" not in message and len(message) < 400


def test_a_replica_registering_again_without_the_secret_is_dropped():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register(SECRET))
        assert await recv_type(dealer) == p.REGISTERED
        await dealer.send_multipart(register("wrong"))
        assert await recv_type(dealer) == p.REJECTED
        assert server.replicas == {}
        assert listener.events[-1] == ("left", "registered again without the secret")

    run(body, secret=SECRET, heartbeat_interval=3600.0)


def test_strangers_cannot_settle_batches_and_are_not_logged_per_message(caplog):
    async def body(server, listener, dealer):
        await dealer.send_multipart(register(SECRET))
        assert await recv_type(dealer) == p.REGISTERED
        async with stranger(server) as rogue:
            for batch_id in range(200):
                # Fake outputs for guessed batch ids, and fake errors.
                await rogue.send_multipart(p.encode_result_ok(batch_id, ["poisoned"]))
                await rogue.send_multipart(p.encode_result_error(batch_id, "E", "poison"))
            await until(lambda: server.oversized_messages + server.unregistered_messages == 400)
            assert server.oversized_messages == 200  # a stranger's message is one frame
            assert server.unregistered_messages == 200
            # A stranger's heartbeat is answered "register again"; nothing else.
            await rogue.send_multipart([p.make(p.HEARTBEAT)])
            assert await recv_type(rogue) == p.REREGISTER
        assert listener.events == [("joined", "m")]  # no result reached the listener
        # The replica's own results still do.
        await dealer.send_multipart(p.encode_result_ok(7, [1]))
        await until(lambda: ("result", 7) in listener.events)
        assert server.malformed_messages == 0

    run(body, secret=SECRET, heartbeat_interval=3600.0)
    assert len(rpc_warnings(caplog)) <= 2  # throttled: not one line per message


def test_heartbeats_of_strangers_are_answered_within_a_rate(monkeypatch):
    monkeypatch.setattr(server_module, "REREGISTER_BURST", 5.0)
    monkeypatch.setattr(server_module, "REREGISTER_RATE", 1.0)

    async def replies_until_rejected(dealer, heartbeats):
        for _ in range(heartbeats):
            await dealer.send_multipart([p.make(p.HEARTBEAT)])
        await dealer.send_multipart(register())  # answered after the heartbeats
        kinds = []
        while (kind := await recv_type(dealer)) != p.REJECTED:
            kinds.append(kind)
        return kinds

    async def body(server, listener, dealer):
        assert await replies_until_rejected(dealer, 20) == [p.REREGISTER] * 5
        server.timers.advance(2.0)  # two more per second
        assert await replies_until_rejected(dealer, 20) == [p.REREGISTER] * 2

    run(body, secret=SECRET, heartbeat_interval=3600.0)


def test_messages_over_the_frame_and_size_limits_are_dropped():
    async def body(server, listener, dealer):
        monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        # A stranger may send one frame: this registration is not even read.
        await dealer.send_multipart([*register(SECRET), b"extra"])
        await until(lambda: server.oversized_messages == 1)
        await dealer.send_multipart(register(SECRET))
        reply = await recv_header(dealer)  # the first answer: the extra frame got none
        assert reply["type"] == p.REGISTERED and reply["max_message_bytes"] == 4096
        # A replica's result has two frames and 4096 bytes at most; over that,
        # it settles its batch as a model error naming the size.
        await dealer.send_multipart([*p.encode_result_ok(5, [1]), b"third frame"])
        await dealer.send_multipart(p.encode_result_ok(6, ["x" * 4080]))
        await until(lambda: ("result", 6) in listener.events)
        for batch_id in (5, 6):
            result = listener.results[batch_id]  # no outputs: a model error
            assert isinstance(result, p.ModelRaised)
            assert result.error_type == p.RESULT_TOO_LARGE
            assert "4,096 bytes" in result.message
        assert server.oversized_messages == 3
        # A frame over the limit costs the sender its connection, before it is read.
        await dealer.send_multipart(p.encode_result_ok(8, ["x" * 10_000]))
        event = parse_monitor_message(await asyncio.wait_for(monitor.recv_multipart(), 20))
        assert event["event"] == zmq.EVENT_DISCONNECTED
        dealer.disable_monitor()
        monitor.close(0)
        # The endpoint goes on: the socket reconnects (a new peer) and registers.
        await dealer.send_multipart(register(SECRET))
        assert await recv_type(dealer) == p.REGISTERED
        await dealer.send_multipart(p.encode_result_ok(9, [1]))
        await until(lambda: ("result", 9) in listener.events)
        assert ("result", 8) not in listener.events

    run(body, secret=SECRET, max_message_bytes=4096, heartbeat_interval=3600.0)


def test_the_size_limit_must_be_positive():
    with pytest.raises(ValueError, match="max_message_bytes"):
        server_module.RPCServer("tcp://127.0.0.1:0", None, max_message_bytes=0)  # type: ignore[arg-type]


def test_a_replicas_error_text_is_cut_on_the_server():
    async def body(server, listener, dealer):
        await dealer.send_multipart(register())
        assert await recv_type(dealer) == p.REGISTERED
        huge = {"v": 1, "type": "result", "id": 1, "ok": False}
        await dealer.send_multipart(
            [msgpack.packb({**huge, "error_type": "T" * 5000, "error_message": "e" * 100_000})]
        )
        await dealer.send_multipart(
            [msgpack.packb({**huge, "id": 2, "error_message": ["e" * 50] * 1000})]
        )
        await until(lambda: ("result", 2) in listener.events)
        result = listener.results[1]
        assert len(result.error_type) == p.MAX_ERROR_TYPE
        assert len(result.message) == p.MAX_ERROR_MESSAGE
        assert result.message.startswith("eeee") and result.message[-1] == "…"
        result = listener.results[2]
        assert len(result.message) == p.MAX_ERROR_MESSAGE

    run(body, heartbeat_interval=3600.0)


@pytest.mark.parametrize(
    ("pid", "label", "kept"),
    [
        (2**40, "r1", (None, "r1")),
        (-5, "r1", (None, "r1")),
        (True, "r1", (None, "r1")),
        (42, "forged\nline", (42, None)),
        (42, "x" * 1000, (42, None)),
        (42, {"a": 1}, (42, None)),
    ],
)
def test_a_replicas_pid_and_label_are_bounded(pid, label, kept):
    async def body(server, listener, dealer):
        await dealer.send_multipart(register(pid=pid, replica=label))
        assert await recv_type(dealer) == p.REGISTERED
        (identity, replica) = next(iter(server.replicas.items()))
        assert replica.pid == kept[0]
        # A label that is too long or not printable gives way to the identity.
        assert replica.label == (kept[1] or identity.hex())

    run(body, heartbeat_interval=3600.0)
