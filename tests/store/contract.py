"""The behaviour every ConfigStore must have; test modules subclass StoreContract.

A subclass provides the ``make_store`` fixture: a callable that opens a store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clipper.exceptions import NotFoundError, StoreError, ValidationError
from clipper.store import ConfigStore
from clipper.types import AppSpec, InputType, ModelSpec


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
