from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from clipper.exceptions import NotFoundError, StoreError, ValidationError
from clipper.store import ConfigStore, open_store
from clipper.store.redis import RedisStore, redact_url
from clipper.types import AppOptions, AppSpec, InputType, ModelOptions
from tests.redis_server import free_port, redis_server

from .contract import StoreContract, app, hammer_state, increment, model

WAIT = 15.0  # seconds; generous, since a loaded CI machine is slow to deliver


class TestRedisStore(StoreContract):
    @pytest.fixture
    def make_store(self, clean_redis_url: str) -> Callable[[], ConfigStore]:
        prefix = f"t-{uuid.uuid4().hex[:8]}"
        return lambda: RedisStore(clean_redis_url, prefix=prefix)


@pytest.fixture
def url(clean_redis_url: str) -> str:
    return clean_redis_url


@pytest.fixture
def pair(url: str) -> Iterator[tuple[RedisStore, RedisStore]]:
    """Two stores on the same server and prefix, as two frontends would have."""
    with RedisStore(url) as first, RedisStore(url) as second:
        yield first, second


class Calls:
    """Counts callback calls; lets a test wait until the count reaches a value."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= n, timeout):
                raise AssertionError(f"callback called {self.count} times, expected >= {n}")
            return self.count


def watcher_threads(store: RedisStore) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"clipper-store-watch-{store.prefix}"]


# Sharing and notifications


def test_state_is_visible_across_instances(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    spec = AppSpec(
        name="a",
        input_type=InputType.INTEGERS,
        default_output="0",
        slo_micros=1234,
        input_shape=(2, 2),
        policy="exp3",
        policy_params={"eta": 0.1},
    )
    first.add_app(spec)
    first.add_model(model("m", "1", labels=("l1",)))
    first.add_model(model("m", "2"), make_current=False)
    first.add_links("a", ["m"])
    first.set_num_replicas("m", "2", 5)
    assert second.get_app("a") == spec
    assert second.list_models("m") == [model("m", "1", labels=("l1",)), model("m", "2")]
    assert second.get_current_version("m") == "1"
    assert second.get_links("a") == ["m"]
    assert second.apps_linked_to("m") == ["a"]
    assert second.get_num_replicas("m", "2") == 5
    assert second.generation() == first.generation() == 5
    second.delete_model_version("m", "1")
    second.delete_model_version("m", "2")
    assert first.get_links("a") == []
    assert first.list_models() == []


def test_records_without_options_read_as_empty(url: str) -> None:
    """Records written before options existed have no such key."""
    app_record = (
        '{"default_output": "-1", "input_shape": [2], "input_type": "doubles", "name": "a", '
        '"policy": "single", "policy_params": {}, "slo_micros": 100000}'
    )
    model_record = (
        '{"batch_size": 4, "container_name": "python-closure", "input_type": "doubles", '
        '"labels": ["x"], "model_data_path": "", "name": "m", "version": "1"}'
    )
    client = redis.Redis.from_url(url)
    try:
        client.hset("clipper:apps", "a", app_record)
        client.hset("clipper:specs:m", "1", model_record)
        client.rpush("clipper:versions:m", "1")
        client.sadd("clipper:models", "m")
        client.hset("clipper:current", "m", "1")
        client.hset("clipper:replicas:m", "1", "3")
    finally:
        client.close()
    with RedisStore(url) as store:
        assert store.get_app("a") == app("a", input_shape=(2,))
        assert store.list_apps() == [app("a", input_shape=(2,))]
        expected = model("m", "1", labels=("x",), batch_size=4)
        assert store.get_model("m", "1") == expected
        assert store.list_models() == [expected]
        got = store.get_model("m", "1")
        assert got is not None
        assert got.options == ModelOptions()
        options = ModelOptions(memory_limit_mb=1024)
        store.update_model(model("m", "1", options=options))
        assert store.get_current_version("m") == "1"
        assert store.get_num_replicas("m", "1") == 3
        assert store.list_models("m") == [model("m", "1", options=options)]


def test_records_with_options_of_the_previous_release_load(url: str) -> None:
    """Records whose options the release before typed options wrote: a JSON object
    of the options set, as the management API validated them."""
    digest = "cd" * 32
    app_record = (
        '{"default_output": "-1", "input_shape": null, "input_type": "doubles", "name": "a", '
        '"options": {"api_key_sha256": ["' + digest + '"], "cache": false}, '
        '"policy": "single", "policy_params": {}, "slo_micros": 100000}'
    )
    model_record = (
        '{"batch_size": -1, "container_name": "python-closure", "input_type": "doubles", '
        '"labels": [], "model_data_path": "", "name": "m", '
        '"options": {"max_replicas": 2, "min_replicas": 0, "queue_capacity": 9, '
        '"ray_num_cpus": 0.5, "unknown_to_us": [1]}, "version": "1"}'
    )
    client = redis.Redis.from_url(url)
    try:
        client.hset("clipper:apps", "a", app_record)
        client.hset("clipper:specs:m", "1", model_record)
        client.rpush("clipper:versions:m", "1")
        client.sadd("clipper:models", "m")
        client.hset("clipper:current", "m", "1")
    finally:
        client.close()
    with RedisStore(url) as store:
        got = store.get_app("a")
        assert got is not None
        assert got.options == AppOptions(cache=False, api_key_sha256=(digest,))
        assert got.options.to_json() == {"api_key_sha256": [digest], "cache": False}
        m = store.get_model("m", "1")
        assert m is not None
        assert (m.options.min_replicas, m.options.max_replicas) == (0, 2)
        assert (m.options.queue_capacity, m.options.ray_num_cpus) == (9, 0.5)
        assert m.options.extra == {"unknown_to_us": [1]}
        store.update_app(got)
        store.update_model(m)
    client = redis.Redis.from_url(url)
    try:
        assert client.hget("clipper:apps", "a") == app_record.encode()
        assert client.hget("clipper:specs:m", "1") == model_record.encode()
    finally:
        client.close()


def test_update_model_publishes_a_change(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    second.add_model(model("m", "1"))
    calls = Calls()
    first.watch(calls)
    options = ModelOptions(queue_capacity=3)
    second.update_model(model("m", "1", options=options))
    calls.wait_for(1)
    assert first.get_model("m", "1") == model("m", "1", options=options)
    with pytest.raises(NotFoundError):
        second.update_model(model("m", "2"))
    second.add_app(app("a"))
    # The refused update published nothing: the add is the second call.
    assert calls.wait_for(2) == 2


def test_prefixes_keep_stores_apart(url: str) -> None:
    with RedisStore(url, prefix="one") as one, RedisStore(url, prefix="two") as two:
        one.add_app(app("a"))
        assert two.get_app("a") is None
        assert two.generation() == 0
        two.add_app(app("a", slo_micros=5))
        assert one.get_app("a") == app("a")


def test_watch_fires_when_another_instance_writes(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    calls = Calls()
    first.watch(calls)
    assert calls.count == 0
    second.add_app(app("a"))
    calls.wait_for(1)
    second.add_links("a", ["m"])
    calls.wait_for(2)
    # Refusals and no-ops publish nothing: the next real change is the third call.
    with pytest.raises(ValidationError):
        second.add_app(app("a"))
    second.add_links("a", ["m"])
    second.delete_app("a")
    assert calls.wait_for(3) == 3


def test_watch_survives_a_failing_callback(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    calls = Calls()

    def flaky() -> None:
        calls()
        raise RuntimeError("callback bug")

    first.watch(flaky)
    second.add_app(app("a"))
    calls.wait_for(1)
    second.add_app(app("b"))
    calls.wait_for(2)


def test_changes_publish_each_new_generation(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    listener = redis.Redis.from_url(first.url, decode_responses=True)
    pubsub = listener.pubsub()
    try:
        pubsub.subscribe("clipper:changes")
        # Wait for the confirmation, so that no message can be missed.
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "subscribe":
                break
        start = first.generation()
        for i in range(10):
            (first if i % 2 else second).add_app(app(f"a{i}"))
        got: list[int] = []
        deadline = time.monotonic() + WAIT
        while len(got) < 10 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "message":
                got.append(int(message["data"]))
    finally:
        pubsub.close()
        listener.close()
    assert got == list(range(start + 1, start + 11))


def test_generation_strictly_increases_across_instances(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    first, second = pair
    seen = [first.generation()]
    for i in range(20):
        writer, reader = (first, second) if i % 2 else (second, first)
        writer.add_model(model("m", str(i)))
        seen.append(reader.generation())
    assert all(a < b for a, b in itertools.pairwise(seen)), seen


def test_concurrent_writers_lose_nothing(pair: tuple[RedisStore, RedisStore]) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    first, second = pair
    first.add_app(app("shared"))
    start = first.generation()

    def work(t: int) -> None:
        store = pair[t % 2]
        barrier.wait()
        for i in range(per_thread):
            store.add_app(app(f"app-{t}-{i}"))
            store.add_model(model(f"m-{t}", str(i)))
            store.set_num_replicas(f"m-{t}", str(i), i)
            store.add_links("shared", [f"m-{t}-{i}"])
            store.get_links("shared")

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, t) for t in range(threads)]:
            future.result()

    assert len(second.list_apps()) == 1 + threads * per_thread
    assert len(second.list_models()) == threads * per_thread
    assert len(second.get_links("shared")) == threads * per_thread
    assert second.get_current_version("m-3") == str(per_thread - 1)
    assert second.get_num_replicas("m-5", "7") == 7
    assert second.generation() == start + 4 * threads * per_thread


# Policy states


def test_two_instances_lose_no_state_update(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    first.add_app(app("a"))
    before = first.generation()
    hammer_state([first, second], threads=8, per_thread=50)
    assert first.get_policy_state("a", "u") == second.get_policy_state("a", "u") == {"n": 400}
    assert first.get_policy_state("a", "") == {"n": 200}
    assert second.generation() == before


def _subscribe(url: str, channel: str) -> tuple[redis.Redis, redis.client.PubSub]:
    listener = redis.Redis.from_url(url, decode_responses=True)
    pubsub = listener.pubsub()
    pubsub.subscribe(channel)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "subscribe":
            return listener, pubsub
    raise AssertionError(f"no confirmation of SUBSCRIBE {channel}")


def test_policy_states_publish_nothing(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    first.add_app(app("a"))
    calls = Calls()
    second.watch(calls)
    listener, pubsub = _subscribe(first.url, "clipper:changes")
    try:
        generation = first.generation()
        for uid in ("", "u", "v", "u"):
            first.update_policy_state("a", uid, increment)
        assert first.delete_policy_states("a") == 3
        first.update_policy_state("a", "u", increment)
        first.add_app(app("b"))  # a real change, to know when to stop listening
        got: list[int] = []
        deadline = time.monotonic() + WAIT
        while not got and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "message":
                got.append(int(message["data"]))
        # Anything published by the state calls would have come first.
        assert got == [generation + 1]
        assert pubsub.get_message(timeout=0.2) is None
    finally:
        pubsub.close()
        listener.close()
    assert calls.wait_for(1) == 1
    assert second.generation() == generation + 1


def test_policy_states_live_in_one_hash_per_app(url: str) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        with RedisStore(url, prefix="p") as store:
            store.add_app(app("a"))
            store.update_policy_state("a", "", increment)
            store.update_policy_state("a", "u", lambda _: {"w": [1.5]})
            assert client.hgetall("p:pstate:a") == {"": '{"n": 1}', "u": '{"w": [1.5]}'}
            # Users (not the shared state) are ranked by their last write.
            assert client.zrange("p:pstate-age:a", 0, -1) == ["u"]
            store.delete_app("a")
            assert client.exists("p:pstate:a", "p:pstate-age:a") == 0
            store.add_app(app("a"))
            store.update_policy_state("a", "v", increment)
            assert store.delete_policy_states("a") == 1
            assert client.exists("p:pstate:a", "p:pstate-age:a") == 0
    finally:
        client.close()


def test_states_written_before_the_age_set_count_as_the_oldest(url: str) -> None:
    """States written by a version without the cap have no age: they go first."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        with RedisStore(url, prefix="old") as store:
            store.add_app(app("a"))
            client.hset(
                "old:pstate:a",
                mapping={"": '{"n": 9}', "old1": '{"n": 1}', "old2": '{"n": 2}'},
            )
            store.update_policy_state("a", "old2", increment, max_user_states=2)
            store.update_policy_state("a", "new", increment, max_user_states=2)
            kept = [u for u in ("old1", "old2", "new") if store.get_policy_state("a", u)]
            assert kept == ["old2", "new"]
            assert store.get_policy_state("a", "old2") == {"n": 3}
            assert store.get_policy_state("a", "") == {"n": 9}
            assert client.zrange("old:pstate-age:a", 0, -1) == ["old2", "new"]
    finally:
        client.close()


def test_contended_state_update_retries_then_gives_up(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client writes the state between every read and write: the update starts over."""
    monkeypatch.setattr("clipper.store.redis.STATE_UPDATE_ATTEMPTS", 5)
    client = redis.Redis.from_url(url, decode_responses=True)
    seen: list[dict[str, object] | None] = []

    def update(state: dict[str, object] | None) -> dict[str, object]:
        seen.append(state)
        client.hset("clipper:pstate:a", "u", f'{{"n": {len(seen)}}}')
        return {"mine": True}

    try:
        with RedisStore(url) as store:
            store.add_app(app("a"))
            with pytest.raises(StoreError, match="5 attempts"):
                store.update_policy_state("a", "u", update)
            # Each attempt saw what the meddler wrote during the previous one.
            assert seen == [None, {"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
            assert store.get_policy_state("a", "u") == {"n": 5}
            # A meddler that gives up lets the next attempt through.
            calls = iter([True])

            def update_once(state: dict[str, object] | None) -> dict[str, object]:
                if next(calls, False):
                    client.hset("clipper:pstate:a", "u", '{"n": 100}')
                return {"after": state}

            assert store.update_policy_state("a", "u", update_once) == {"after": {"n": 100}}
    finally:
        client.close()


def test_state_update_racing_delete_app_writes_nothing(url: str) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        with RedisStore(url) as store, RedisStore(url) as other:
            store.add_app(app("a"))

            def update(state: dict[str, object] | None) -> dict[str, object]:
                other.delete_app("a")  # between the read and the write
                return {"n": 1}

            with pytest.raises(NotFoundError, match="'a'"):
                store.update_policy_state("a", "u", update)
            assert client.exists("clipper:pstate:a") == 0
    finally:
        client.close()


def test_racing_deletes_leave_links_consistent(pair: tuple[RedisStore, RedisStore]) -> None:
    """delete_app and delete_model_version race add_links; no link may dangle."""
    first, second = pair
    models = [f"m{i}" for i in range(4)]
    rounds = 60
    barrier = threading.Barrier(3)

    def churn_apps() -> None:
        barrier.wait()
        for _ in range(rounds):
            first.add_app(app("a"))
            first.delete_app("a")

    def churn_models() -> None:
        barrier.wait()
        for i in range(rounds):
            second.add_model(model(models[i % 4], "1"))
            second.delete_model_version(models[i % 4], "1")

    def link() -> None:
        barrier.wait()
        for i in range(rounds * 2):
            # NotFoundError: the app was deleted in between, and the call refused as a whole.
            with contextlib.suppress(NotFoundError):
                second.add_links("a", models[i % 4 :] + models[: i % 4])

    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(f) for f in (churn_apps, churn_models, link)]:
            future.result()

    # The app is gone, so nothing may still point at it, in either direction.
    assert first.get_app("a") is None
    assert first.get_links("a") == []
    for m in models:
        assert first.apps_linked_to(m) == []
        assert first.list_models(m) == []
        assert first.get_current_version(m) is None


# Errors and lifecycle


def test_unreachable_url_gives_store_error_naming_the_host() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StoreError, match=rf"127\.0\.0\.1:{port}/0") as info:
        RedisStore(f"redis://user:s3cret@127.0.0.1:{port}/0")
    assert "s3cret" not in str(info.value)
    assert "user:***@" in str(info.value)


def test_failure_during_an_operation_is_wrapped(url: str) -> None:
    with RedisStore(url) as store:
        client = redis.Redis.from_url(url)
        try:
            client.set("clipper:apps", "not a hash")  # what a stray client might do
        finally:
            client.close()
        with pytest.raises(StoreError, match=r"127\.0\.0\.1.*cannot list applications"):
            store.list_apps()
        with pytest.raises(StoreError, match="cannot add an application"):
            store.add_app(app("a"))


def test_redact_url() -> None:
    assert redact_url("redis://:pw@h:1/2?password=pw") == "redis://:***@h:1/2"
    assert redact_url("rediss://u:pw@[::1]:6380/0") == "rediss://u:***@[::1]:6380/0"
    assert redact_url("redis://h") == "redis://h"


def test_invalid_prefix_is_rejected(url: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        RedisStore(url, prefix="")


def test_close_stops_the_watcher(url: str) -> None:
    store = RedisStore(url, prefix="closing")
    store.watch(lambda: None)
    assert len(watcher_threads(store)) == 1
    store.close()
    assert watcher_threads(store) == []
    with pytest.raises(StoreError, match="closed"):
        store.watch(lambda: None)


def test_callback_may_close_the_store(pair: tuple[RedisStore, RedisStore]) -> None:
    first, second = pair
    closed = threading.Event()

    def close_on_change() -> None:
        first.close()
        closed.set()

    first.watch(close_on_change)
    second.add_app(app("a"))
    assert closed.wait(WAIT)
    with pytest.raises(StoreError, match="closed"):
        first.get_app("a")
    deadline = time.monotonic() + WAIT
    while watcher_threads(first) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watcher_threads(first) == []


def test_watch_reconnects_after_a_redis_restart(tmp_path: Path) -> None:
    """A dedicated server, stopped and replaced by a new process on the same port."""
    port = free_port()
    calls = Calls()
    store: RedisStore | None = None
    try:
        with redis_server(port=port, directory=tmp_path) as url:
            store = RedisStore(url)
            store.watch(calls)
            store.add_app(app("a"))
            calls.wait_for(1)
        # The server is gone; a new one (empty: nothing was saved) takes its port.
        with redis_server(port=port, directory=tmp_path):
            resynced = calls.wait_for(2)  # the resync after reconnecting
            with RedisStore(url) as other:
                other.add_app(app("b"))
            calls.wait_for(resynced + 1)  # and changes reach it again
            # The store's own connections recover too.
            assert store.get_app("b") == app("b")
            assert store.get_app("a") is None
    finally:
        if store is not None:
            store.close()
    assert watcher_threads(store) == []


# open_store


def test_open_store_returns_a_redis_store(url: str) -> None:
    with open_store(url) as store:
        assert isinstance(store, RedisStore)
        assert store.prefix == "clipper"
        store.add_app(app("a"))
    with open_store(f"{url}?prefix=other") as store:
        assert isinstance(store, RedisStore)
        assert store.prefix == "other"
        assert store.get_app("a") is None
        assert store.url == url


@pytest.mark.parametrize("query", ["prefix=", "prefix=a&prefix=b"])
def test_open_store_rejects_bad_prefixes(url: str, query: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        open_store(f"{url}?{query}")
