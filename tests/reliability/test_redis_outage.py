"""Restart Redis under two frontends that share it as their config store.

While Redis is down, the frontends keep serving from their last known
state, and management calls fail at once with a JSON error that names the
store (no hang). Redis comes back on the same port with its data (saved to
its dump file before it stopped), and both frontends resynchronise: a change
made through one reaches the other again by pub/sub.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from clipper.deployers.python import deploy_python_closure
from tests.helpers import Clipper, wait_for
from tests.redis_server import redis_server
from tests.reliability import models
from tests.reliability.support import deploy, replicas_of, timed_predict

pytestmark = pytest.mark.slow


class RedisHandle:
    """A redis-server that can be stopped and started again on its port, with its data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url = ""
        self.port: int | None = None
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> None:
        self._stack = contextlib.ExitStack()
        self.url = self._stack.enter_context(redis_server(self.port, self.directory))
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.save()  # the server keeps no data of its own: write the dump file now
        finally:
            client.close()
        assert self._stack is not None
        self._stack.close()
        self._stack = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Redis is stopped inside the block, and back (same port, same data) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[RedisHandle]:
    handle = RedisHandle(tmp_path_factory.mktemp("redis"))
    handle.start()
    try:
        yield handle
    finally:
        if handle._stack is not None:
            handle._stack.close()


@pytest.fixture(scope="module")
def frontends(store, tmp_path_factory) -> Iterator[tuple[Clipper, Clipper]]:
    a = Clipper(tmp_path_factory.mktemp("front-a"), redis_url=store.url).start()
    b: Clipper | None = None
    try:
        b = Clipper(tmp_path_factory.mktemp("front-b"), redis_url=store.url).start()
        deploy(a, "kept", "kept-m", models.total)
        # A bandit app: its policy state lives in the store.
        a.conn.register_application("band", "doubles", "-1", 2_000_000, selection_policy="exp3")
        for m in ("band-a", "band-b"):
            deploy_python_closure(a.conn, m, "1", "doubles", models.total)
            a.conn.link_model_to_app("band", m)
        for server in (a, b):
            for m in ("kept-m", "band-a", "band-b"):
                server.wait_live(m)
        yield a, b
    finally:
        if b is not None:
            b.stop()
        a.stop()


def management_error(server: Clipper, route: str, body: dict) -> None:
    """A management call while the store is down: a prompt JSON error naming the store."""
    start = time.monotonic()
    r = server.admin(route, body)
    assert time.monotonic() - start < 15.0
    assert 400 <= r.status_code < 600, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()
    assert error["error"] and "Redis" in error["cause"], error


def test_serving_continues_through_a_redis_outage_and_both_frontends_resync(store, frontends):
    a, b = frontends
    with store.down():
        # Queries: answered by the models, from each frontend's last known state.
        for i in range(20):
            for server in (a, b):
                answer = timed_predict(server, "kept", {"input": [float(i), 0.5]})
                assert answer.status == 200 and answer.elapsed < 2.0
                assert answer.body == {**answer.body, "output": i + 0.5, "default": False}
        # Management: reads and writes fail promptly with a clear JSON error.
        management_error(a, "get_all_applications", {"verbose": True})
        management_error(a, "get_linked_models", {"app_name": "kept"})
        management_error(
            a,
            "add_app",
            {
                "name": "during",
                "input_type": "doubles",
                "default_output": "x",
                "latency_slo_micros": 100_000,
            },
        )
        management_error(
            b, "set_num_replicas", {"model_name": "kept-m", "model_version": "1", "num_replicas": 3}
        )
        # The server itself still reports (status comes from memory).
        assert a.status()["pid"]

    # Redis is back with its data: management works again, nothing was lost or half-made.
    wait_for(lambda: a.conn.get_all_apps() == ["band", "kept"], 60, "management on A")
    wait_for(lambda: b.conn.get_all_apps() == ["band", "kept"], 60, "management on B")
    assert a.conn.get_linked_models("kept") == ["kept-m"]
    assert a.conn.get_num_replicas("kept-m", "1") == 1
    # A change through A reaches B by pub/sub: B's subscription came back.
    a.conn.register_application("after", "doubles", "after default", 1_000_000)
    wait_for(
        lambda: timed_predict(b, "after", {"input": [1.0]}).body["output"] == "after default",
        60,
        "B to learn of an app added through A after the outage",
    )
    a.conn.unregister_application("after")
    wait_for(lambda: timed_predict(b, "after", {"input": [1.0]}).status == 404, 60, "B to drop it")
    for server in (a, b):
        body = timed_predict(server, "kept", {"input": [40.0]}).body
        assert body == {**body, "output": 40.0, "default": False}


def test_a_bandit_app_keeps_answering_during_a_redis_outage(store, frontends):
    a, _ = frontends
    assert timed_predict(a, "band", {"input": [1.0]}).status == 200
    with store.down():
        time.sleep(1.5)  # past the policy-state cache's TTL (1 s): the store is asked again
        for i in range(5):
            answer = timed_predict(a, "band", {"input": [float(i), 2.0]})
            assert answer.status == 200, answer.body
            assert answer.body == {**answer.body, "output": i + 2.0, "default": False}


def test_feedback_during_a_redis_outage_is_refused_with_a_503(store, frontends):
    a, _ = frontends
    # A bandit app: its feedback writes policy state (a `single` app's changes nothing)
    url = f"{a.query_url}/band/update"
    assert a.http.post(url, json={"uid": 1, "input": [1.0, 2.0], "label": 3.0}).status_code == 200
    with store.down():
        r = a.http.post(url, json={"uid": 1, "input": [1.0, 2.0], "label": 3.0})
        assert r.status_code == 503, r.text
        assert r.json()["error"] and "Redis" in r.json()["cause"]


def test_a_replica_restarted_during_a_redis_outage_rejoins_from_the_last_known_state(
    store, frontends
):
    a, _ = frontends
    (before,) = a.wait_live("kept-m")
    try:
        with store.down():
            os.kill(before["pid"], signal.SIGKILL)
            wait_for(
                lambda: any(
                    r["pid"] not in (None, before["pid"]) for r in replicas_of(a, "kept-m")
                ),
                30,
                "the manager to restart the replica",
            )
            # The model is known from the last state: the new process may join.
            wait_for(lambda: a.live_replicas("kept-m"), 10, "the restarted replica to register")
            body = timed_predict(a, "kept", {"input": [3.0]}).body
            assert body == {**body, "output": 3.0, "default": False}
    finally:
        a.wait_live("kept-m")  # after Redis returns, at the latest
