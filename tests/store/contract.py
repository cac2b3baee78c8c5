"""The behaviour every ConfigStore must have; test modules subclass StoreContract.

A subclass provides the ``make_store`` fixture: a callable that opens a store.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from clipper.exceptions import NotFoundError, StoreError, ValidationError
from clipper.store import ConfigStore
from clipper.types import AppOptions, AppSpec, InputType, ModelOptions, ModelSpec, RolloutSpec


def app(name: str, **kw: Any) -> AppSpec:
    fields: dict[str, Any] = {
        "input_type": InputType.DOUBLES,
        "default_output": "-1",
        "slo_micros": 100_000,
    }
    fields.update(kw)
    return AppSpec(name=name, **fields)


def model(name: str, version: str = "1", **kw: Any) -> ModelSpec:
    fields: dict[str, Any] = {"input_type": InputType.DOUBLES}
    fields.update(kw)
    return ModelSpec(name=name, version=version, **fields)


def rollout(model_name: str, mode: str, **kw: Any) -> RolloutSpec:
    return RolloutSpec.build(model_name, "1", "2", mode, started_at=1_700_000_000.25, **kw)


def increment(state: dict[str, Any] | None) -> dict[str, Any]:
    """A policy-state update: count one more."""
    state = state if state is not None else {"n": 0}
    state["n"] += 1
    return state


def increment_all(states: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """A joint policy-state update: count one more in each."""
    return {uid: increment(state) for uid, state in states.items()}


def recorder(calls: list[object]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A joint policy-state update that records what it was given and stores nothing new."""

    def update(states: dict[str, Any]) -> dict[str, Any]:
        calls.append(states)
        return {}

    return update


def hammer_state(stores: list[ConfigStore], threads: int = 8, per_thread: int = 50) -> None:
    """Increment the state ("a", "u") from ``threads`` threads, spread over ``stores``:
    every other time alone, else together with ("a", "") (half the threads name
    the two the other way round), so "u" ends at threads * per_thread and ""
    at half that."""
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        store = stores[t % len(stores)]
        uids = ["u", ""] if t % 2 else ["", "u"]
        barrier.wait()
        for i in range(per_thread):
            if i % 2:
                store.update_policy_states("a", uids, increment_all)
            else:
                store.update_policy_state("a", "u", increment)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, t) for t in range(threads)]:
            future.result()


def increment_who(state: dict[str, Any] | None) -> dict[str, Any]:
    assert state is not None
    return {"who": state["who"] + "!"}


class StoreContract:
    @pytest.fixture
    def make_store(self) -> Callable[[], ConfigStore]:
        raise NotImplementedError("a StoreContract subclass must provide make_store")

    @pytest.fixture
    def store(self, make_store: Callable[[], ConfigStore]) -> Iterator[ConfigStore]:
        s = make_store()
        yield s
        s.close()

    # Applications

    def test_add_and_get_app_round_trips_every_field(self, store: ConfigStore) -> None:
        spec = AppSpec(
            name="img",
            input_type=InputType.FLOATS,
            default_output="none",
            slo_micros=20_000,
            input_shape=(3, 224, 224),
            policy="exp3",
            policy_params={"eta": 0.5, "nested": {"a": [1, 2]}, "flag": True},
            options=AppOptions.parse({"cache": False, "overload": "503", "api_keys": ["k" * 16]}),
        )
        store.add_app(spec)
        assert store.get_app("img") == spec
        got = store.get_app("img")
        assert got is not None
        assert got.input_type is InputType.FLOATS
        assert got.input_shape == (3, 224, 224)

    def test_app_without_shape_keeps_none(self, store: ConfigStore) -> None:
        store.add_app(app("a", input_shape=None, input_type=InputType.JSON))
        got = store.get_app("a")
        assert got is not None
        assert got.input_shape is None
        assert got.input_type is InputType.JSON
        assert got.policy_params == {}
        assert got.options == AppOptions()

    def test_get_unknown_app_is_none(self, store: ConfigStore) -> None:
        assert store.get_app("nope") is None

    def test_duplicate_app_is_rejected(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        with pytest.raises(ValidationError, match="application 'a' already exists"):
            store.add_app(app("a", slo_micros=5))
        assert store.get_app("a") == app("a")

    def test_list_apps_is_sorted_by_name(self, store: ConfigStore) -> None:
        assert store.list_apps() == []
        for name in ("b", "c", "a"):
            store.add_app(app(name))
        assert [a.name for a in store.list_apps()] == ["a", "b", "c"]

    def test_update_app_replaces_the_record(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_links("a", ["m"])
        new = app("a", policy="exp4", policy_params={"k": 1}, slo_micros=7)
        store.update_app(new)
        assert store.get_app("a") == new
        assert store.get_links("a") == ["m"]

    def test_update_unknown_app_is_not_found(self, store: ConfigStore) -> None:
        with pytest.raises(NotFoundError, match="'ghost'"):
            store.update_app(app("ghost"))
        assert store.get_app("ghost") is None

    def test_delete_app_removes_it_and_its_links(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_app(app("b"))
        store.add_model(model("m"))
        store.add_links("a", ["m"])
        store.add_links("b", ["m"])
        assert store.delete_app("a") is True
        assert store.get_app("a") is None
        assert store.get_links("a") == []
        assert store.apps_linked_to("m") == ["b"]
        assert store.delete_app("a") is False

    def test_delete_unknown_app_returns_false(self, store: ConfigStore) -> None:
        assert store.delete_app("nope") is False

    def test_deleted_app_name_can_be_reused_without_old_links(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_links("a", ["m"])
        store.delete_app("a")
        store.add_app(app("a"))
        assert store.get_links("a") == []

    def test_policy_params_must_be_json(self, store: ConfigStore) -> None:
        with pytest.raises(ValidationError, match="policy_params"):
            store.add_app(app("a", policy_params={"f": object()}))
        assert store.get_app("a") is None

    def test_stored_app_is_not_shared_with_callers(self, store: ConfigStore) -> None:
        params: dict[str, Any] = {"weights": [1, 2]}
        store.add_app(app("a", policy_params=params))
        params["weights"].append(3)
        got = store.get_app("a")
        assert got is not None
        got.policy_params["weights"].append(4)
        again = store.get_app("a")
        assert again is not None
        assert again.policy_params == {"weights": [1, 2]}

    def test_update_app_replaces_options(self, store: ConfigStore) -> None:
        store.add_app(app("a", options=AppOptions.parse({"cache": False, "overload": "503"})))
        store.update_app(app("a", options=AppOptions.parse({"cache": True})))
        got = store.get_app("a")
        assert got is not None
        assert got.options == AppOptions.parse({"cache": True})
        assert got.options.to_json() == {"cache": True}
        store.update_app(app("a"))
        assert store.list_apps() == [app("a")]

    def test_app_options_a_release_does_not_read_round_trip(self, store: ConfigStore) -> None:
        # A record written by a newer release (or by hand): kept, as stored.
        stored = {"owner": "vision", "limits": {"rps": 50, "burst": [1, 2.5]}, "x": None}
        options = AppOptions.from_record({**stored, "cache": False, "overload": "drop"})
        store.add_app(app("a", options=options))
        got = store.get_app("a")
        assert got == app("a", options=options)
        assert got.options.cache is False and got.options.overload == "default"
        assert got.options.to_json() == {**stored, "cache": False, "overload": "drop"}

    @pytest.mark.parametrize(
        "options",
        [{"f": object()}, {"nested": {"s": {1, 2}}}, {"nan": float("nan")}],
        ids=["object", "set", "nan"],
    )
    def test_app_options_must_be_json(self, store: ConfigStore, options: Any) -> None:
        bad = AppOptions.from_record(options)
        with pytest.raises(ValidationError, match="options"):
            store.add_app(app("a", options=bad))
        assert store.get_app("a") is None
        ok = AppOptions.from_record({"ok": 1})
        store.add_app(app("a", options=ok))
        with pytest.raises(ValidationError, match="options"):
            store.update_app(app("a", options=bad))
        got = store.get_app("a")
        assert got is not None
        assert got.options == ok

    @pytest.mark.parametrize(
        "options", [["a", 1], "text", None, {1: "int key"}, {"cache": False}, ModelOptions()]
    )
    def test_app_options_must_be_app_options(self, store: ConfigStore, options: Any) -> None:
        with pytest.raises(ValidationError, match="options must be AppOptions"):
            store.add_app(app("a", options=options))
        assert store.get_app("a") is None

    def test_app_options_are_not_shared_with_callers(self, store: ConfigStore) -> None:
        stored: dict[str, Any] = {"tags": ["x"], "limits": {"rps": 5}}
        store.add_app(app("a", options=AppOptions.from_record(copy.deepcopy(stored))))
        got = store.get_app("a")
        assert got is not None
        got.options.extra["tags"].append("z")
        got.options.extra["limits"]["rps"] = 99
        got.options.to_json()["tags"].append("y")
        listed = store.list_apps()[0]
        listed.options.extra["tags"].clear()
        again = store.get_app("a")
        assert again is not None
        assert again.options.to_json() == stored

    # Models

    def test_add_and_get_model_round_trips_every_field(self, store: ConfigStore) -> None:
        spec = ModelSpec(
            name="m",
            version="v1",
            input_type=InputType.STRINGS,
            labels=("x", "y"),
            container_name="sklearn",
            model_data_path="/data/m",
            batch_size=16,
            options=ModelOptions.parse(
                {
                    "batching": "quantile",
                    "max_batch_delay_ms": 2.5,
                    "queue_capacity": 100,
                    "max_replicas": 3,
                    "min_replicas": 0,
                    "ray_resources": {"gpu_box": 1, "a": 0.5},
                    "ray_placement": "pack",
                }
            ),
        )
        store.add_model(spec)
        assert store.get_model("m", "v1") == spec
        got = store.get_model("m", "v1")
        assert got is not None
        assert got.labels == ("x", "y")
        assert got.input_type is InputType.STRINGS

    def test_get_unknown_model_is_none(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        assert store.get_model("m", "2") is None
        assert store.get_model("other", "1") is None

    def test_model_options_default_to_empty(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        got = store.get_model("m", "1")
        assert got is not None
        assert got.options == ModelOptions()

    def test_model_options_a_release_does_not_read_round_trip(self, store: ConfigStore) -> None:
        stored = {"gpu": True, "env": {"OMP_NUM_THREADS": "4"}, "queue_capacity": 0}
        options = ModelOptions.from_record({**stored, "batching": "fixed"})
        store.add_model(model("m", "1", options=options))
        got = store.get_model("m", "1")
        assert got == model("m", "1", options=options)
        assert got.options.batching == "fixed" and got.options.queue_capacity is None
        assert got.options.to_json() == {**stored, "batching": "fixed"}

    def test_update_model_replaces_the_record(self, store: ConfigStore) -> None:
        store.add_model(
            model("m", "1", labels=("a",), options=ModelOptions.parse({"queue_capacity": 5}))
        )
        new = ModelSpec(
            name="m",
            version="1",
            input_type=InputType.BYTES,
            labels=("b", "c"),
            container_name="pytorch",
            model_data_path="/data/m/1",
            batch_size=8,
            options=ModelOptions.parse({"memory_limit_mb": 512}),
        )
        store.update_model(new)
        assert store.get_model("m", "1") == new
        assert store.list_models("m") == [new]
        got = store.get_model("m", "1")
        assert got is not None
        assert got.input_type is InputType.BYTES
        assert got.labels == ("b", "c")
        store.update_model(model("m", "1"))
        assert store.get_model("m", "1") == model("m", "1")

    def test_update_model_keeps_current_version_replicas_and_order(
        self, store: ConfigStore
    ) -> None:
        store.add_app(app("a"))
        store.add_model(model("m", "1"))
        store.add_model(model("m", "2"))
        store.add_model(model("m", "3"), make_current=False)
        store.add_links("a", ["m"])
        store.set_num_replicas("m", "2", 4)
        options = ModelOptions.parse({"batching": "aimd"})
        store.update_model(model("m", "2", batch_size=32, options=options))
        store.update_model(model("m", "3", labels=("l",)))
        assert store.get_current_version("m") == "2"
        assert store.get_num_replicas("m", "2") == 4
        assert store.get_num_replicas("m", "3") == 1
        assert [m.version for m in store.list_models("m")] == ["1", "2", "3"]
        assert store.get_links("a") == ["m"]
        got = store.get_model("m", "2")
        assert got is not None
        assert (got.batch_size, got.options) == (32, options)

    def test_update_unknown_model_version_is_not_found(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        with pytest.raises(NotFoundError, match=r"'m'.*'2'"):
            store.update_model(model("m", "2"))
        with pytest.raises(NotFoundError, match=r"'ghost'.*'1'"):
            store.update_model(model("ghost", "1"))
        assert store.get_model("m", "2") is None
        assert store.get_model("ghost", "1") is None
        assert store.list_models() == [model("m", "1")]

    @pytest.mark.parametrize(
        "options",
        [{"f": object()}, {"nested": [b"bytes"]}, {"inf": float("inf")}],
        ids=["object", "bytes", "inf"],
    )
    def test_model_options_must_be_json(self, store: ConfigStore, options: Any) -> None:
        bad = ModelOptions.from_record(options)
        with pytest.raises(ValidationError, match="options"):
            store.add_model(model("m", "1", options=bad))
        assert store.get_model("m", "1") is None
        assert store.get_current_version("m") is None
        ok = ModelOptions.from_record({"ok": 1})
        store.add_model(model("m", "1", options=ok))
        with pytest.raises(ValidationError, match="options"):
            store.update_model(model("m", "1", options=bad))
        got = store.get_model("m", "1")
        assert got is not None
        assert got.options == ok

    @pytest.mark.parametrize("options", [["a"], 3, None, {("t",): 1}, {}, AppOptions()])
    def test_model_options_must_be_model_options(self, store: ConfigStore, options: Any) -> None:
        with pytest.raises(ValidationError, match="options must be ModelOptions"):
            store.add_model(model("m", "1", options=options))
        assert store.get_model("m", "1") is None

    def test_model_options_are_not_shared_with_callers(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1", options=ModelOptions.from_record({"env": {"A": "1"}})))
        got = store.get_model("m", "1")
        assert got is not None
        got.options.extra["env"]["C"] = "3"
        store.list_models()[0].options.extra["env"].clear()
        resources = {"node_b": 1}
        update = ModelOptions.parse({"ray_resources": resources})
        resources["node_b"] = 9
        store.update_model(model("m", "1", options=update))
        again = store.get_model("m", "1")
        assert again is not None
        assert again.options.to_json() == {"ray_resources": {"node_b": 1}}
        assert again.options.ray_resources == {"node_b": 1}

    def test_duplicate_model_version_is_rejected(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        with pytest.raises(ValidationError, match=r"'m'.*'1'.*already exists"):
            store.add_model(model("m", "1", batch_size=3))
        assert store.get_model("m", "1") == model("m", "1")

    def test_add_model_makes_current_unless_told_not_to(self, store: ConfigStore) -> None:
        assert store.get_current_version("m") is None
        store.add_model(model("m", "1"))
        assert store.get_current_version("m") == "1"
        store.add_model(model("m", "2"), make_current=False)
        assert store.get_current_version("m") == "1"
        store.add_model(model("m", "3"))
        assert store.get_current_version("m") == "3"
        store.add_model(model("n", "1"), make_current=False)
        assert store.get_current_version("n") is None

    def test_list_models_orders_by_name_then_insertion(self, store: ConfigStore) -> None:
        store.add_model(model("b", "10"))
        store.add_model(model("a", "2"))
        store.add_model(model("b", "2"))
        store.add_model(model("a", "1"))
        store.add_model(model("b", "1"))
        got = [(m.name, m.version) for m in store.list_models()]
        assert got == [("a", "2"), ("a", "1"), ("b", "10"), ("b", "2"), ("b", "1")]
        assert [m.version for m in store.list_models("b")] == ["10", "2", "1"]
        assert store.list_models("zzz") == []

    def test_set_current_version(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        store.add_model(model("m", "2"))
        store.set_current_version("m", "1")
        assert store.get_current_version("m") == "1"
        with pytest.raises(NotFoundError, match=r"'m'.*'9'"):
            store.set_current_version("m", "9")
        with pytest.raises(NotFoundError):
            store.set_current_version("ghost", "1")
        assert store.get_current_version("m") == "1"
        assert store.get_current_version("ghost") is None

    def test_delete_current_version_leaves_no_current(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        store.add_model(model("m", "2"))
        assert store.delete_model_version("m", "2") is True
        assert store.get_model("m", "2") is None
        assert store.get_current_version("m") is None
        assert [m.version for m in store.list_models("m")] == ["1"]

    def test_delete_other_version_keeps_current(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        store.add_model(model("m", "2"))
        assert store.delete_model_version("m", "1") is True
        assert store.get_current_version("m") == "2"

    def test_delete_unknown_model_version_returns_false(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        assert store.delete_model_version("m", "2") is False
        assert store.delete_model_version("ghost", "1") is False

    def test_deleting_last_version_unlinks_the_model(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_app(app("b"))
        store.add_model(model("m", "1"))
        store.add_model(model("m", "2"))
        store.add_model(model("n", "1"))
        store.add_links("a", ["m", "n"])
        store.add_links("b", ["m"])
        store.delete_model_version("m", "1")
        assert store.get_links("a") == ["m", "n"]
        store.delete_model_version("m", "2")
        assert store.get_links("a") == ["n"]
        assert store.get_links("b") == []
        assert store.apps_linked_to("m") == []
        assert store.list_models("m") == []
        assert store.get_app("a") is not None

    # Links

    def test_add_links_keeps_order_and_is_idempotent(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_links("a", ["z", "x"])
        store.add_links("a", ["x", "y", "z", "y"])
        assert store.get_links("a") == ["z", "x", "y"]

    def test_add_links_to_unknown_app_is_not_found(self, store: ConfigStore) -> None:
        with pytest.raises(NotFoundError, match="'ghost'"):
            store.add_links("ghost", ["m"])
        assert store.apps_linked_to("m") == []

    def test_remove_links(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_links("a", ["x", "y", "z"])
        store.remove_links("a", ["y", "not-linked"])
        assert store.get_links("a") == ["x", "z"]
        store.add_links("a", ["y"])
        assert store.get_links("a") == ["x", "z", "y"]
        with pytest.raises(NotFoundError):
            store.remove_links("ghost", ["x"])

    def test_get_links_of_unknown_app_is_empty(self, store: ConfigStore) -> None:
        assert store.get_links("ghost") == []

    def test_apps_linked_to_is_sorted(self, store: ConfigStore) -> None:
        for name in ("c", "a", "b"):
            store.add_app(app(name))
        store.add_links("c", ["m"])
        store.add_links("a", ["m"])
        store.add_links("b", ["n"])
        assert store.apps_linked_to("m") == ["a", "c"]
        assert store.apps_linked_to("n") == ["b"]
        assert store.apps_linked_to("none") == []

    # Replicas

    def test_num_replicas_default_and_set(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        store.add_model(model("m", "2"))
        assert store.get_num_replicas("m", "1") == 1
        store.set_num_replicas("m", "1", 4)
        assert store.get_num_replicas("m", "1") == 4
        assert store.get_num_replicas("m", "2") == 1
        store.set_num_replicas("m", "1", 0)
        assert store.get_num_replicas("m", "1") == 0

    def test_num_replicas_errors(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        with pytest.raises(ValidationError, match=">= 0"):
            store.set_num_replicas("m", "1", -1)
        with pytest.raises(NotFoundError, match=r"'m'.*'2'"):
            store.set_num_replicas("m", "2", 1)
        with pytest.raises(NotFoundError):
            store.get_num_replicas("m", "2")
        with pytest.raises(NotFoundError):
            store.get_num_replicas("ghost", "1")
        assert store.get_num_replicas("m", "1") == 1

    def test_replicas_go_with_the_version(self, store: ConfigStore) -> None:
        store.add_model(model("m", "1"))
        store.set_num_replicas("m", "1", 3)
        store.delete_model_version("m", "1")
        with pytest.raises(NotFoundError):
            store.get_num_replicas("m", "1")
        store.add_model(model("m", "1"))
        assert store.get_num_replicas("m", "1") == 1

    # Policy states

    def test_policy_state_is_none_until_written(self, store: ConfigStore) -> None:
        assert store.get_policy_state("a", "u") is None
        store.add_app(app("a"))
        assert store.get_policy_state("a", "u") is None
        assert store.get_policy_state("a", "") is None

    def test_update_policy_state_creates_then_modifies(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        seen: list[dict[str, Any] | None] = []

        def update(state: dict[str, Any] | None) -> dict[str, Any]:
            seen.append(None if state is None else dict(state))
            return increment(state)

        assert store.update_policy_state("a", "u", update) == {"n": 1}
        assert store.get_policy_state("a", "u") == {"n": 1}
        assert store.update_policy_state("a", "u", update) == {"n": 2}
        assert seen == [None, {"n": 1}]
        state = {"weights": [0.5, 0.25], "nested": {"t": (1, 2)}, "x": None, "b": True}
        assert store.update_policy_state("a", "u", lambda _: state) == {
            "weights": [0.5, 0.25],
            "nested": {"t": [1, 2]},  # stored as JSON, so a tuple comes back a list
            "x": None,
            "b": True,
        }
        assert store.get_policy_state("a", "u") == {
            "weights": [0.5, 0.25],
            "nested": {"t": [1, 2]},
            "x": None,
            "b": True,
        }

    def test_policy_states_are_not_shared_with_callers(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        mine: dict[str, Any] = {"w": [1]}
        returned = store.update_policy_state("a", "u", lambda _: mine)
        assert returned == {"w": [1]}
        assert returned is not mine
        mine["w"].append(2)
        returned["w"].append(3)
        got = store.get_policy_state("a", "u")
        assert got == {"w": [1]}
        assert got is not None
        got["w"].append(4)
        got["new"] = True

        def meddle(state: dict[str, Any] | None) -> dict[str, Any]:
            assert state == {"w": [1]}
            state["w"].append(5)
            raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError, match="changed my mind"):
            store.update_policy_state("a", "u", meddle)
        assert store.get_policy_state("a", "u") == {"w": [1]}

    def test_policy_states_are_per_user_with_a_shared_one(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_app(app("b"))
        store.update_policy_state("a", "", lambda _: {"who": "shared"})
        store.update_policy_state("a", "alice", lambda _: {"who": "alice"})
        store.update_policy_state("b", "alice", lambda _: {"who": "b-alice"})
        store.update_policy_state("a", "alice", increment_who)
        assert store.get_policy_state("a", "") == {"who": "shared"}
        assert store.get_policy_state("a", "alice") == {"who": "alice!"}
        assert store.get_policy_state("a", "bob") is None
        assert store.get_policy_state("b", "alice") == {"who": "b-alice"}
        assert store.get_policy_state("b", "") is None

    def test_update_policy_state_of_unknown_app_is_not_found(self, store: ConfigStore) -> None:
        calls: list[object] = []

        def update(state: dict[str, Any] | None) -> dict[str, Any]:
            calls.append(state)
            return {"n": 1}

        with pytest.raises(NotFoundError, match="'ghost'"):
            store.update_policy_state("ghost", "u", update)
        assert calls == []
        assert store.get_policy_state("ghost", "u") is None

    @pytest.mark.parametrize(
        "result",
        [None, [1, 2], "text", 3, {1: "int key"}, {"f": object()}, {"nan": float("nan")}],
        ids=["none", "list", "str", "int", "int-key", "object", "nan"],
    )
    def test_policy_state_must_be_a_json_object(self, store: ConfigStore, result: Any) -> None:
        store.add_app(app("a"))
        store.update_policy_state("a", "u", lambda _: {"ok": 1})
        with pytest.raises(ValidationError, match="policy state"):
            store.update_policy_state("a", "u", lambda _: result)
        with pytest.raises(ValidationError, match="policy state"):
            store.update_policy_state("a", "v", lambda _: result)
        assert store.get_policy_state("a", "u") == {"ok": 1}
        assert store.get_policy_state("a", "v") is None

    def test_errors_from_the_update_reach_the_caller(self, store: ConfigStore) -> None:
        store.add_app(app("a"))

        def lookup(state: dict[str, Any] | None) -> dict[str, Any]:
            empty: dict[str, Any] = {}
            return {"v": empty["missing"]}

        with pytest.raises(KeyError, match="missing"):
            store.update_policy_state("a", "u", lookup)
        assert store.get_policy_state("a", "u") is None

    def test_policy_state_uid_must_be_a_string(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        with pytest.raises(ValidationError, match="uid"):
            store.update_policy_state("a", 7, increment)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="uid"):
            store.get_policy_state("a", None)  # type: ignore[arg-type]

    def test_policy_states_leave_the_generation_alone(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        before = store.generation()
        store.update_policy_state("a", "u", increment)
        store.update_policy_state("a", "u", increment)
        store.update_policy_state("a", "", increment)
        store.get_policy_state("a", "u")
        not_an_object: Any = []
        with pytest.raises(ValidationError):
            store.update_policy_state("a", "u", lambda _: not_an_object)
        assert store.delete_policy_states("a") == 2
        assert store.delete_policy_states("a") == 0
        assert store.generation() == before

    def test_delete_policy_states(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_app(app("b"))
        for uid in ("", "u1", "u2"):
            store.update_policy_state("a", uid, increment)
        store.update_policy_state("b", "u1", increment)
        assert store.delete_policy_states("a") == 3
        for uid in ("", "u1", "u2"):
            assert store.get_policy_state("a", uid) is None
        assert store.get_policy_state("b", "u1") == {"n": 1}
        assert store.delete_policy_states("a") == 0
        assert store.delete_policy_states("ghost") == 0
        assert store.get_app("a") is not None
        assert store.update_policy_state("a", "u1", increment) == {"n": 1}

    def test_delete_app_deletes_its_policy_states(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_app(app("b"))
        store.update_policy_state("a", "u", increment)
        store.update_policy_state("a", "", increment)
        store.update_policy_state("b", "u", increment)
        assert store.delete_app("a") is True
        assert store.get_policy_state("a", "u") is None
        assert store.get_policy_state("a", "") is None
        assert store.delete_policy_states("a") == 0
        assert store.get_policy_state("b", "u") == {"n": 1}
        # A new app of the same name starts afresh.
        store.add_app(app("a"))
        assert store.get_policy_state("a", "u") is None
        assert store.update_policy_state("a", "u", increment) == {"n": 1}

    def test_update_policy_states_updates_several_in_one_step(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.update_policy_state("a", "u", lambda _: {"n": 5})
        seen: list[dict[str, Any]] = []

        def update(states: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
            seen.append(copy.deepcopy(states))
            return increment_all(states)

        assert store.update_policy_states("a", ["u", "", "v"], update) == {
            "u": {"n": 6},
            "": {"n": 1},
            "v": {"n": 1},
        }
        assert seen[-1] == {"u": {"n": 5}, "": None, "v": None}
        assert store.update_policy_states("a", ["", "v"], update) == {"": {"n": 2}, "v": {"n": 2}}
        assert seen[-1] == {"": {"n": 1}, "v": {"n": 1}}
        assert store.get_policy_state("a", "u") == {"n": 6}
        assert store.get_policy_state("a", "") == {"n": 2}

    def test_update_policy_states_stores_all_or_none(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.update_policy_states("a", ["", "u"], increment_all)
        bad: list[Any] = [
            lambda s: {"": {"n": 9}, "u": []},  # one state not an object
            lambda s: {"": {"n": 9}},  # one state missing
            lambda s: {"": {"n": 9}, "u": {"n": 9}, "w": {"n": 9}},  # one too many
            lambda s: [{"n": 9}, {"n": 9}],  # not a mapping
        ]
        for update in bad:
            with pytest.raises(ValidationError, match="policy state"):
                store.update_policy_states("a", ["", "u"], update)

        def fail(states: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
            raise KeyError("missing")

        with pytest.raises(KeyError, match="missing"):
            store.update_policy_states("a", ["", "u"], fail)
        assert store.get_policy_state("a", "") == {"n": 1}
        assert store.get_policy_state("a", "u") == {"n": 1}
        assert store.get_policy_state("a", "w") is None

    @pytest.mark.parametrize(
        "uids",
        [[], ["u", "u"], ["u", 7], "u", None],
        ids=["empty", "duplicate", "not-a-string", "a-string", "none"],
    )
    def test_update_policy_states_checks_the_uids(self, store: ConfigStore, uids: Any) -> None:
        store.add_app(app("a"))
        calls: list[object] = []
        with pytest.raises(ValidationError, match="uid"):
            store.update_policy_states("a", uids, recorder(calls))
        assert calls == []
        assert store.get_policy_state("a", "u") is None

    def test_update_policy_states_of_unknown_app_is_not_found(self, store: ConfigStore) -> None:
        calls: list[object] = []
        with pytest.raises(NotFoundError, match="'ghost'"):
            store.update_policy_states("ghost", ["", "u"], recorder(calls))
        assert calls == []

    def test_policy_states_updated_together_are_not_shared(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        mine = {"w": [1]}
        returned = store.update_policy_states("a", ["u", "v"], lambda _: {"u": mine, "v": mine})
        returned["u"]["w"].append(2)
        mine["w"].append(3)
        assert store.get_policy_state("a", "u") == store.get_policy_state("a", "v") == {"w": [1]}

    def test_concurrent_state_updates_lose_nothing(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        before = store.generation()
        hammer_state([store], threads=8, per_thread=50)
        assert store.get_policy_state("a", "u") == {"n": 400}
        assert store.get_policy_state("a", "") == {"n": 200}
        assert store.generation() == before

    # Policy states: the per-app cap on user states

    @staticmethod
    def users_kept(store: ConfigStore, app_name: str, uids: list[str]) -> list[str]:
        return [u for u in uids if store.get_policy_state(app_name, u) is not None]

    def test_user_state_cap_removes_the_least_recently_written(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        for uid in ("u1", "u2", "u3"):
            store.update_policy_states("a", ["", uid], increment_all, max_user_states=3)
        # u1 is written again: now u2 is the least recently written user.
        store.update_policy_states("a", ["", "u1"], increment_all, max_user_states=3)
        store.update_policy_states("a", ["", "u4"], increment_all, max_user_states=3)
        assert self.users_kept(store, "a", ["u1", "u2", "u3", "u4"]) == ["u1", "u3", "u4"]
        assert store.get_policy_state("a", "u1") == {"n": 2}
        assert store.get_policy_state("a", "") == {"n": 5}
        store.update_policy_state("a", "u5", increment, max_user_states=3)
        assert self.users_kept(store, "a", ["u1", "u2", "u3", "u4", "u5"]) == ["u1", "u4", "u5"]

    def test_the_shared_state_never_counts_and_is_never_removed(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.update_policy_state("a", "", increment, max_user_states=1)
        for i in range(5):
            store.update_policy_states("a", [f"u{i}", ""], increment_all, max_user_states=1)
            store.update_policy_state("a", f"v{i}", increment, max_user_states=1)
        assert store.get_policy_state("a", "") == {"n": 6}
        names = [f"{p}{i}" for i in range(5) for p in "uv"]
        assert self.users_kept(store, "a", names) == ["v4"]

    def test_updates_of_known_users_at_the_cap_remove_nothing(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        uids = [f"u{i}" for i in range(4)]
        for uid in uids:
            store.update_policy_states("a", ["", uid], increment_all, max_user_states=4)
        for _ in range(3):
            for uid in reversed(uids):
                store.update_policy_states("a", ["", uid], increment_all, max_user_states=4)
        assert [store.get_policy_state("a", u) for u in uids] == [{"n": 4}] * 4

    def test_a_removed_user_starts_afresh(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.update_policy_state("a", "old", lambda _: {"n": 41}, max_user_states=1)
        store.update_policy_state("a", "new", increment, max_user_states=1)
        calls: list[object] = []

        def again(states: dict[str, Any]) -> dict[str, Any]:
            calls.append(copy.deepcopy(states))
            return increment_all(states)

        assert store.update_policy_states("a", ["old"], again, max_user_states=1) == {
            "old": {"n": 1}
        }
        assert calls == [{"old": None}]
        assert store.get_policy_state("a", "new") is None

    def test_no_cap_keeps_every_user_and_a_cap_applies_later(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        uids = [f"u{i:02}" for i in range(30)]
        for uid in uids:
            store.update_policy_states("a", ["", uid], increment_all)
        assert self.users_kept(store, "a", uids) == uids
        # A cap set later (a restart with a smaller one) catches up at the next new user.
        store.update_policy_state("a", "late", increment, max_user_states=10)
        assert self.users_kept(store, "a", [*uids, "late"]) == [*uids[-9:], "late"]
        assert store.get_policy_state("a", "") == {"n": 30}

    def test_the_cap_is_per_app(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_app(app("b"))
        for i in range(3):
            store.update_policy_state("a", f"u{i}", increment, max_user_states=2)
            store.update_policy_state("b", f"u{i}", increment, max_user_states=3)
        assert self.users_kept(store, "a", ["u0", "u1", "u2"]) == ["u1", "u2"]
        assert self.users_kept(store, "b", ["u0", "u1", "u2"]) == ["u0", "u1", "u2"]

    def test_deleting_the_states_resets_the_count(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        for uid in ("u1", "u2"):
            store.update_policy_state("a", uid, increment, max_user_states=2)
        assert store.delete_policy_states("a") == 2
        for uid in ("u3", "u4"):
            store.update_policy_state("a", uid, increment, max_user_states=2)
        assert self.users_kept(store, "a", ["u1", "u2", "u3", "u4"]) == ["u3", "u4"]
        store.delete_app("a")
        store.add_app(app("a"))
        for uid in ("u5", "u6"):
            store.update_policy_state("a", uid, increment, max_user_states=2)
        assert self.users_kept(store, "a", ["u3", "u4", "u5", "u6"]) == ["u5", "u6"]

    @pytest.mark.parametrize("cap", [-1, "3", 2.0, True, None])
    def test_the_cap_must_be_a_count(self, store: ConfigStore, cap: Any) -> None:
        store.add_app(app("a"))
        calls: list[object] = []
        with pytest.raises(ValidationError, match="max_user_states"):
            store.update_policy_states("a", ["u"], recorder(calls), max_user_states=cap)
        assert calls == []

    def test_the_cap_holds_under_concurrent_new_users(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        threads, per_thread, cap = 6, 20, 15
        barrier = threading.Barrier(threads)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                store.update_policy_states(
                    "a", ["", f"t{t}-{i}"], increment_all, max_user_states=cap
                )

        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(work, t) for t in range(threads)]:
                future.result()
        uids = [f"t{t}-{i}" for t in range(threads) for i in range(per_thread)]
        assert len(self.users_kept(store, "a", uids)) == cap
        assert store.get_policy_state("a", "") == {"n": threads * per_thread}
        # The newest user of each thread was written after that thread's others.
        kept = set(self.users_kept(store, "a", uids))
        for t in range(threads):
            older = [f"t{t}-{i}" for i in range(per_thread - 1)]
            if any(u in kept for u in older):
                assert f"t{t}-{per_thread - 1}" in kept

    @pytest.mark.parametrize("uid", ["x" * 256, "é" * 128, "\U0001f600" * 64])
    def test_a_uid_of_256_bytes_is_fine(self, store: ConfigStore, uid: str) -> None:
        store.add_app(app("a"))
        assert store.update_policy_state("a", uid, increment) == {"n": 1}
        assert store.get_policy_state("a", uid) == {"n": 1}

    @pytest.mark.parametrize("uid", ["x" * 257, "é" * 128 + "x", "\U0001f600" * 65, "\ud800"])
    def test_a_longer_uid_is_refused(self, store: ConfigStore, uid: str) -> None:
        store.add_app(app("a"))
        calls: list[object] = []
        with pytest.raises(ValidationError, match="uid"):
            store.update_policy_states("a", ["", uid], recorder(calls))
        with pytest.raises(ValidationError, match="uid"):
            store.get_policy_state("a", uid)
        assert calls == []
        assert store.get_policy_state("a", "") is None

    # Rollouts

    def test_no_rollouts_at_first(self, store: ConfigStore) -> None:
        assert store.list_rollouts() == []
        assert store.get_rollout_evidence("m") is None
        assert store.delete_rollout("m") is False

    def test_put_rollout_round_trips_every_field(self, store: ConfigStore) -> None:
        spec = rollout("m", "bandit", limits={"confidence": 0.9, "min_feedback": 50})
        canary = rollout("c", "canary", steps=[[60, 0.1], [120.5, 0.5]])
        store.put_rollout(spec)
        store.put_rollout(canary)
        assert store.list_rollouts() == [canary, spec]  # by model name
        got = store.list_rollouts()[1]
        assert got.limits == {"confidence": 0.9, "min_feedback": 50.0}
        assert got.started_at == spec.started_at and got.mode == "bandit"
        assert store.list_rollouts()[0].steps == ((60.0, 0.1), (120.5, 0.5))

    def test_put_rollout_replaces_the_models_rollout(self, store: ConfigStore) -> None:
        store.put_rollout(rollout("m", "canary"))
        wider = rollout("m", "canary", fraction=0.5)
        store.put_rollout(wider)
        assert store.list_rollouts() == [wider]

    def test_put_rollout_needs_a_rollout_spec(self, store: ConfigStore) -> None:
        with pytest.raises(ValidationError, match="RolloutSpec"):
            store.put_rollout({"model": "m"})  # type: ignore[arg-type]
        assert store.list_rollouts() == []

    def test_delete_rollout_deletes_its_evidence(self, store: ConfigStore) -> None:
        store.put_rollout(rollout("m", "shadow"))
        store.put_rollout(rollout("n", "shadow"))
        store.save_rollout_evidence("m", {"agreement": 0.98, "versions": {"1": {"n": 3}}})
        store.save_rollout_evidence("n", {"agreement": 0.5})
        assert store.get_rollout_evidence("m") == {"agreement": 0.98, "versions": {"1": {"n": 3}}}
        assert store.delete_rollout("m") is True
        assert store.delete_rollout("m") is False
        assert store.get_rollout_evidence("m") is None
        assert [r.model for r in store.list_rollouts()] == ["n"]
        # A new rollout of the same model starts without the old evidence.
        store.put_rollout(rollout("m", "canary"))
        assert store.get_rollout_evidence("m") is None
        assert store.get_rollout_evidence("n") == {"agreement": 0.5}

    def test_evidence_is_replaced_and_not_shared(self, store: ConfigStore) -> None:
        store.put_rollout(rollout("m", "canary"))
        evidence: dict[str, Any] = {"n": [1, 2]}
        store.save_rollout_evidence("m", evidence)
        evidence["n"].append(3)
        got = store.get_rollout_evidence("m")
        assert got == {"n": [1, 2]}
        assert got is not None
        got["n"].append(4)
        assert store.get_rollout_evidence("m") == {"n": [1, 2]}
        store.save_rollout_evidence("m", {"n": [9]})
        assert store.get_rollout_evidence("m") == {"n": [9]}
        # Replacing the rollout (a new fraction) keeps its evidence.
        store.put_rollout(rollout("m", "canary", fraction=0.2))
        assert store.get_rollout_evidence("m") == {"n": [9]}

    def test_evidence_without_a_rollout_is_not_kept(self, store: ConfigStore) -> None:
        store.save_rollout_evidence("ghost", {"n": 1})
        assert store.get_rollout_evidence("ghost") is None

    @pytest.mark.parametrize("evidence", [[1], "text", {"x": float("nan")}, {"x": {1, 2}}])
    def test_evidence_must_be_a_json_object(self, store: ConfigStore, evidence: Any) -> None:
        store.put_rollout(rollout("m", "canary"))
        with pytest.raises(ValidationError, match="evidence"):
            store.save_rollout_evidence("m", evidence)
        assert store.get_rollout_evidence("m") is None

    def test_rollouts_bump_the_generation_but_evidence_does_not(self, store: ConfigStore) -> None:
        g0 = store.generation()
        store.put_rollout(rollout("m", "canary"))
        g1 = store.generation()
        assert g1 > g0
        store.save_rollout_evidence("m", {"n": 1})
        store.list_rollouts()
        store.get_rollout_evidence("m")
        assert store.delete_rollout("ghost") is False
        assert store.generation() == g1
        store.put_rollout(rollout("m", "canary", fraction=0.3))
        g2 = store.generation()
        assert g2 > g1
        assert store.delete_rollout("m") is True
        assert store.generation() > g2

    def test_rollouts_are_seen_by_another_store_on_the_same_data(
        self, make_store: Callable[[], ConfigStore]
    ) -> None:
        # What a server restart relies on (the memory store has nothing to share).
        first = make_store()
        second = make_store()
        try:
            first.put_rollout(rollout("m", "bandit"))
            first.save_rollout_evidence("m", {"n": 1})
            shared = second.list_rollouts() == [rollout("m", "bandit")]
            if not shared:
                pytest.skip("this store keeps nothing between instances")
            assert second.get_rollout_evidence("m") == {"n": 1}
        finally:
            first.close()
            second.close()

    # Generation

    def test_generation_rises_with_every_change(self, store: ConfigStore) -> None:
        changes: list[Callable[[], object]] = [
            lambda: store.add_app(app("a")),
            lambda: store.update_app(app("a", policy="exp3")),
            lambda: store.add_model(model("m", "1")),
            lambda: store.add_model(model("m", "2"), make_current=False),
            lambda: store.set_current_version("m", "2"),
            lambda: store.add_links("a", ["m"]),
            lambda: store.set_num_replicas("m", "2", 2),
            lambda: store.update_model(model("m", "2", options=ModelOptions(queue_capacity=1))),
            lambda: store.update_model(model("m", "2", options=ModelOptions(queue_capacity=1))),
            lambda: store.update_app(app("a", options=AppOptions(cache=False))),
            lambda: store.remove_links("a", ["m"]),
            lambda: store.delete_model_version("m", "1"),
            lambda: store.delete_app("a"),
        ]
        seen = [store.generation()]
        for change in changes:
            change()
            seen.append(store.generation())
        assert seen == sorted(set(seen)), seen

    def test_generation_ignores_reads_failures_and_no_ops(self, store: ConfigStore) -> None:
        store.add_app(app("a"))
        store.add_model(model("m", "1"))
        store.add_links("a", ["m"])
        before = store.generation()
        store.get_app("a")
        store.list_apps()
        store.list_models()
        store.get_links("a")
        store.get_num_replicas("m", "1")
        assert store.delete_app("ghost") is False
        assert store.delete_model_version("m", "9") is False
        store.add_links("a", ["m"])
        store.remove_links("a", ["not-linked"])
        failing: list[Callable[[], object]] = [
            lambda: store.add_app(app("a")),
            lambda: store.update_app(app("ghost")),
            lambda: store.add_model(model("m", "1")),
            lambda: store.set_current_version("m", "9"),
            lambda: store.add_links("ghost", ["m"]),
            lambda: store.set_num_replicas("m", "1", -2),
            lambda: store.set_num_replicas("m", "9", 1),
            lambda: store.update_model(model("m", "9")),
            lambda: store.update_model(model("ghost", "1")),
            lambda: store.update_model(model("m", "1", options={"queue_capacity": 1})),
            lambda: store.add_model(model("m", "2", options=ModelOptions.from_record({"b": {1}}))),
            lambda: store.update_app(app("a", options=AppOptions.from_record({"b": object()}))),
        ]
        for call in failing:
            with pytest.raises((ValidationError, NotFoundError)):
                call()
        assert store.generation() == before

    # Lifecycle

    def test_closed_store_raises_store_error(self, make_store: Callable[[], ConfigStore]) -> None:
        s = make_store()
        s.close()
        s.close()
        with pytest.raises(StoreError, match="closed"):
            s.get_app("a")
        with pytest.raises(StoreError, match="closed"):
            s.add_app(app("a"))

    def test_context_manager_closes(self, make_store: Callable[[], ConfigStore]) -> None:
        with make_store() as s:
            s.add_app(app("a"))
        with pytest.raises(StoreError):
            s.list_apps()
