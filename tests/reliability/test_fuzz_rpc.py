"""Bad input on the RPC socket: random frames, malformed headers, unknown
protocol versions, and a registered container that answers with garbage.

A raw ZeroMQ DEALER talks to the frontend's ROUTER. Whatever it sends, the
frontend must drop it (or refuse it with ``rejected``) and keep serving:
its real replica stays registered and answers queries, no ghost replica
appears, and every query still gets a 200.

The fake container of the last tests knows the server's RPC secret (it plays
a container started by hand); the fuzzing DEALER sends it only now and then,
so that refusals past the secret check are fuzzed too.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers import Clipper
from tests.reliability import models
from tests.reliability.support import deploy, timed_predict

pytestmark = pytest.mark.slow

SECRET = "the-rpc-secret-of-the-fuzz-tests"

FUZZ = settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
MESSAGE_TYPES = [
    "register",
    "registered",
    "rejected",
    "reregister",
    "heartbeat",
    "batch",
    "result",
    "goodbye",
]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.fixture(scope="module")
def clipper(tmp_path_factory) -> Iterator[Clipper]:
    server = Clipper(tmp_path_factory.mktemp("fuzz-rpc"))
    server.cm.rpc_secret = SECRET  # explicit: the fake container below presents it
    server.start()
    try:
        deploy(server, "rpc-app", "rpc-m", models.total, options={"cache": False})
        # A model whose only container is the test's fake one.
        server.conn.register_model("rpc-ext", "1", "doubles")
        server.conn.register_application(
            "rpc-ext-app", "doubles", "fake default", 2_000_000, options={"cache": False}
        )
        server.conn.link_model_to_app("rpc-ext-app", "rpc-ext")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dealer(clipper) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{clipper.cm.clipper_rpc_port}")
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def assert_still_serving(clipper: Clipper, before: list[dict[str, Any]]) -> None:
    """The real replica is still the one registered (no ghost joined) and answers."""
    for i in range(3):
        answer = timed_predict(clipper, "rpc-app", {"input": [float(i), 1.0]})
        assert answer.status == 200
        assert answer.body == {**answer.body, "output": i + 1.0, "default": False}
    replicas = clipper.status()["replicas"]
    assert [(r["replica"], r["pid"], r["live"]) for r in replicas] == [
        (r["replica"], r["pid"], r["live"]) for r in before
    ]


# -- random frames and malformed headers --------------------------------------------------


def sync(dealer: zmq.Socket) -> None:
    """Wait until the frontend has handled everything ``dealer`` sent: a
    stranger's heartbeat is answered ``reregister``, after what came before it."""
    dealer.send_multipart([pack({"v": 1, "type": "heartbeat"})])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if dealer.poll(1000) and msgpack.unpackb(dealer.recv_multipart()[0])["type"] == (
            "reregister"
        ):
            return
    raise AssertionError("the frontend did not answer a heartbeat within 30s")


def test_random_frames_are_dropped(clipper, dealer):
    before = clipper.status()["replicas"]

    @settings(FUZZ, max_examples=200)
    @given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=5))
    def send(frames: list[bytes]) -> None:
        dealer.send_multipart(frames)

    send()
    sync(dealer)
    assert_still_serving(clipper, before)


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.integers(-5, 5) | st.binary(max_size=4), inner, max_size=4
        )
    ),
    max_leaves=16,
)
VERSIONS = st.one_of(
    st.just(1),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from(["1", 1.0, 1.5, True, None, b"1"]),
    MSGPACK_VALUES,
)
# Register as a model that exists only with a type it does not take, or as
# one that does not exist: the frontend must answer ``rejected``, never let it join.
REGISTRATIONS = st.one_of(
    st.fixed_dictionaries(
        {
            "model_name": st.just("rpc-m"),
            "model_version": st.just("1"),
            "input_type": st.sampled_from(
                [
                    "integers",
                    "floats",
                    "bytes",
                    "strings",
                    "json",
                    "tensors",
                    "",
                    "doubles?",
                    "bytes ",
                ]
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "model_name": st.text(max_size=10).filter(lambda n: not n.startswith("rpc-")),
            "model_version": st.text(max_size=4) | MSGPACK_VALUES,
            "input_type": st.text(max_size=8) | MSGPACK_VALUES,
        }
    ),
    st.dictionaries(st.sampled_from(["model_name", "model_version", "input_type"]), MSGPACK_VALUES),
)


SECRETS = st.sampled_from([SECRET, "", "wrong"]) | MSGPACK_VALUES


@st.composite
def headers(draw: st.DrawFn) -> dict[Any, Any]:
    header: dict[Any, Any] = {
        "v": draw(VERSIONS),
        "type": draw(st.sampled_from(MESSAGE_TYPES) | MSGPACK_VALUES),
    }
    if header["type"] == "register":
        header.update(draw(REGISTRATIONS))
        if draw(st.booleans()):
            header["secret"] = draw(SECRETS)
        header["pid"] = draw(st.integers(-(2**63), 2**63 - 1) | MSGPACK_VALUES)
        header["replica"] = draw(MSGPACK_VALUES)
    if header["type"] == "result":
        header.update(
            id=draw(st.integers(-(2**63), 2**64 - 1) | MSGPACK_VALUES), ok=draw(MSGPACK_VALUES)
        )
    for key in draw(st.lists(st.sampled_from(["v", "type"]), max_size=2)):
        header.pop(key, None)
    extra = draw(
        st.dictionaries(
            st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1), MSGPACK_VALUES, max_size=3
        )
    )
    return {**extra, **header}


@settings(FUZZ, max_examples=250)
@given(
    header=headers(), data=st.lists(st.binary(max_size=100) | MSGPACK_VALUES.map(pack), max_size=3)
)
def test_malformed_headers_and_unknown_versions_are_dropped_or_rejected(
    clipper, dealer, header, data
):
    dealer.send_multipart([pack(header), *data])
    event(f"v={header.get('v')!r}"[:12] if header.get("v") in (1, 2) else "v: other")
    if header.get("v") == 1 and header.get("type") == "register" and not data:
        # A registration is answered, and only ever with a refusal (one with
        # data frames is over what a stranger may send, and dropped unanswered).
        while True:
            assert dealer.poll(10_000), "no answer to a registration"
            reply = msgpack.unpackb(dealer.recv_multipart()[0])
            if reply["type"] != "reregister":
                break
        assert reply["type"] == "rejected" and reply["reason"], reply


def test_the_frontend_serves_as_before_after_the_rpc_fuzzing(clipper):
    before = clipper.status()["replicas"]
    assert [r["live"] for r in before] == [True]
    assert_still_serving(clipper, before)


# -- a registered container that answers with garbage -------------------------------------


class FakeContainer:
    """A hand-made container for model rpc-ext: registers, heartbeats, and answers
    each batch with whatever the test says."""

    def __init__(self, port: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.send(
            {
                "v": 1,
                "type": "register",
                "model_name": "rpc-ext",
                "model_version": "1",
                "input_type": "doubles",
                "replica": "fake",
                "secret": SECRET,
            }
        )
        assert self.next_message({"registered"})["type"] == "registered"

    def send(self, header: dict[str, Any], *data: bytes) -> None:
        self.sock.send_multipart([pack(header), *data])

    def next_message(self, kinds: set[str], timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                header = msgpack.unpackb(frames[0])
                if header["type"] in kinds:
                    return {**header, "frames": frames[1:]}
            self.send({"v": 1, "type": "heartbeat"})  # keep it live while waiting
        raise AssertionError(f"no {kinds} message within {timeout}s")

    def close(self) -> None:
        self.send({"v": 1, "type": "goodbye"})
        self.sock.close()
        self.ctx.term()


JSON_OUTPUTS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    # String keys only: other keys are covered by test_faults' JSON-output test.
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


ID_CHOICES = st.sampled_from(["this", "this", "next", -1]) | MSGPACK_VALUES


@st.composite
def bad_result(draw: st.DrawFn) -> tuple[dict[str, Any], Any, str]:
    """A malformed ``result`` message, its batch id left to fill in: the header
    (``id`` says which id to use), the outputs, and how to frame them."""
    header: dict[str, Any] = {"v": draw(st.just(1) | VERSIONS), "type": "result"}
    header["id"] = draw(ID_CHOICES)
    header["ok"] = draw(st.sampled_from([True, False]) | MSGPACK_VALUES)
    if draw(st.booleans()):
        header["error_type"] = draw(MSGPACK_VALUES | st.text(min_size=5000, max_size=6000))
        header["error_message"] = draw(MSGPACK_VALUES)
    outputs = draw(
        st.one_of(
            st.lists(JSON_OUTPUTS, min_size=1, max_size=1),  # one query per batch here
            st.lists(JSON_OUTPUTS, max_size=3),
            JSON_OUTPUTS,
        )
    )
    framing = draw(st.sampled_from(["one frame", "no frame", "two frames", "raw bytes"]))
    return header, outputs, framing


def frames_of(spec: tuple[dict[str, Any], Any, str], batch_id: int) -> list[bytes]:
    header, outputs, framing = spec
    ids = {"this": batch_id, "next": batch_id + 1}
    value = header["id"]
    if isinstance(value, str) and value in ids:
        value = ids[value]
    header = {**header, "id": value}
    data = {
        "one frame": [pack(outputs)],
        "no frame": [],
        "two frames": [pack(outputs), pack(outputs)],
        "raw bytes": [b"\xc1", b"junk"],
    }[framing]
    return [pack(header), *data]


@pytest.fixture(scope="module")
def fake(clipper) -> Iterator[FakeContainer]:
    container = FakeContainer(clipper.cm.clipper_rpc_port)
    try:
        clipper.wait_live("rpc-ext")
        yield container
    finally:
        container.close()


_inputs = itertools.count()


@settings(FUZZ, max_examples=100)
@given(garbage=st.lists(bad_result(), max_size=2))
def test_a_container_answering_garbage_never_breaks_a_query(clipper, fake, garbage):
    x = float(next(_inputs))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        query = pool.submit(timed_predict, clipper, "rpc-ext-app", {"input": [x]})
        batch = fake.next_message({"batch"})
        try:
            for spec in garbage:
                fake.sock.send_multipart(frames_of(spec, batch["id"]))
        finally:
            # Then the right answer, which counts only if the garbage did not
            # settle the batch (it also frees the fake for the next batch).
            fake.send(
                {"v": 1, "type": "result", "id": batch["id"], "ok": True},
                pack([x] * batch["count"]),
            )
        answer = query.result()
    assert answer.status == 200, answer.body
    assert answer.elapsed < 2.0 + 2.0  # by the SLO, with margin
    event("default" if answer.body["default"] else "answered")
    if answer.body["default"]:
        assert answer.body["output"] == "fake default" and answer.body["default_explanation"]


def test_the_fake_container_is_still_registered_and_the_real_one_serves(clipper, fake):
    (replica,) = clipper.live_replicas("rpc-ext")
    assert replica["replica"] == "fake"
    rpc_m = [r for r in clipper.status()["replicas"] if r["model_name"] == "rpc-m"]
    assert [r["live"] for r in rpc_m] == [True]
    answer = timed_predict(clipper, "rpc-app", {"input": [2.0, 2.0]})
    assert answer.body == {**answer.body, "output": 4.0, "default": False}
