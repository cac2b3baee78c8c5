"""Rollouts' control plane (issue #27): the spec's checks, the service's rules and
guards, and the management routes ``start_rollout``, ``stop_rollout`` and
``get_rollouts`` (the query path's behaviour is tested with it, elsewhere)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from clipper.dashboard import Dashboard
from clipper.exceptions import ValidationError
from clipper.management.api import ManagementFrontend
from clipper.management.service import ManagementService
from clipper.metrics import Metrics, ServerStatistics
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from clipper.types import AppSpec, InputType, ModelId, ModelOptions, ModelSpec, RolloutSpec
from tests.management.test_api import TOKEN, call
from tests.management.test_service_checks import FakeManager

NOW = 1_800_000_000.0

# -- the spec ------------------------------------------------------------------------


def build(mode: str = "canary", **kw: Any) -> RolloutSpec:
    return RolloutSpec.build("m", "1", "2", mode, **kw)


def test_defaults_per_mode() -> None:
    assert build("canary").fraction == 0.05
    assert build("bandit").fraction == 0.05
    assert build("shadow").fraction == 1.0
    assert build("canary", fraction=1).fraction == 1.0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mode": "blue-green"}, "mode must be one of shadow, canary, bandit"),
        ({"fraction": 0}, r"fraction must be a number in \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction must be a number in \(0, 1\]"),
        ({"fraction": True}, "fraction must be a number"),
        ({"fraction": "0.1"}, "fraction must be a number"),
        ({"fraction": float("nan")}, "fraction must be a number"),
        ({"mode": "bandit", "limits": {"patience": 3}}, "unknown rollout limit.*patience"),
        ({"mode": "bandit", "limits": {"confidence": 0.5}}, r"'confidence'.*\(0.5, 1\]"),
        ({"mode": "bandit", "limits": {"max_error_rate": 2}}, r"'max_error_rate'.*\[0, 1\]"),
        ({"mode": "bandit", "limits": {"min_feedback": 2.5}}, "'min_feedback' must be a whole"),
        ({"mode": "bandit", "limits": [1]}, "limits must be a JSON object"),
        ({"limits": {"confidence": 0.9}}, "limits apply to bandit rollouts only"),
        ({"steps": [[10, 0.1], [10, 0.2]]}, "seconds must increase; step 1"),
        ({"steps": [[-1, 0.1]]}, "step 0's seconds must be a number >= 0"),
        ({"steps": [[10, 2]]}, r"step 0's fraction must be a number in \(0, 1\]"),
        ({"steps": [[10]]}, r"\[seconds after the start, fraction\] pairs; step 0"),
        ({"steps": "10:0.5"}, "steps must be a list"),
        ({"mode": "shadow", "steps": [[10, 0.5]]}, "steps apply to canary rollouts only"),
    ],
)
def test_bad_input_is_refused_naming_the_field(kw: dict[str, Any], message: str) -> None:
    mode = kw.pop("mode", "canary")
    with pytest.raises(ValidationError, match=message):
        build(mode, **kw)


def test_the_schedule_gives_the_fraction_in_force() -> None:
    spec = build(steps=[[60, 0.2], [120, 1.0]], started_at=NOW)
    assert spec.fraction_at(NOW) == 0.05
    assert spec.fraction_at(NOW + 59.9) == 0.05
    assert spec.fraction_at(NOW + 60) == 0.2
    assert spec.fraction_at(NOW + 1e6) == 1.0


def test_record_round_trip() -> None:
    spec = build("bandit", limits={"confidence": 0.99, "min_feedback": 100}, started_at=NOW)
    assert RolloutSpec.from_record(orjson.loads(orjson.dumps(spec.to_record()))) == spec
    with pytest.raises(ValueError, match="unknown rollout mode"):
        RolloutSpec.from_record({**spec.to_record(), "mode": "yolo"})


# -- the service -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path: Path) -> ManagementService:
    store = MemoryStore()
    store.add_app(AppSpec("app", InputType.DOUBLES, "-1", 100_000))
    store.add_model(ModelSpec("m", "1", InputType.DOUBLES))
    store.add_model(ModelSpec("m", "2", InputType.DOUBLES), make_current=False)
    store.add_model(ModelSpec("m", "3", InputType.DOUBLES), make_current=False)
    store.add_links("app", ["m"])
    svc = ManagementService(store, Catalog(store), FakeManager(), tmp_path / "state")
    svc.clock = Clock()
    return svc


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_start_stores_it_and_the_catalog_shows_it(service: ManagementService) -> None:
    answer = run(service.start_rollout("m", "2", "canary", fraction=0.1))
    assert answer == {
        "model": "m",
        "base_version": "1",
        "new_version": "2",
        "mode": "canary",
        "fraction": 0.1,
        "fraction_now": 0.1,
        "limits": {},
        "steps": [],
        "started_at": NOW,
    }
    spec = service.catalog.rollout("m")
    assert spec is not None and spec.new_version == "2" and spec.base_version == "1"
    assert service.store.list_rollouts() == [spec]
    assert service.store.get_current_version("m") == "1"  # nothing promoted


def test_calling_again_changes_it_and_keeps_its_start(service: ManagementService) -> None:
    run(service.start_rollout("m", "2", "canary", fraction=0.1))
    assert isinstance(service.clock, Clock)
    service.clock.now = NOW + 30
    answer = run(service.start_rollout("m", "2", "canary", steps=[[60, 0.5]]))
    assert answer["started_at"] == NOW
    assert answer["fraction"] == 0.05  # what was asked this time (its default)
    assert answer["steps"] == [[60.0, 0.5]]
    service.clock.now = NOW + 61
    assert service.get_rollouts()[0]["fraction_now"] == 0.5
    # A shadow rollout may become a canary (the same version).
    run(service.start_rollout("m", "2", "bandit", limits={"confidence": 0.9}))
    (rollout,) = service.store.list_rollouts()
    assert rollout.mode == "bandit" and rollout.limits == {"confidence": 0.9}


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("nosuch", "2", "no model named 'nosuch'"),
        ("m", "9", "model 'm' has no version '9'"),
        ("m", "1", "version '1' is model 'm''s current version already"),
        ("M", "2", "invalid model name"),
    ],
)
def test_start_refuses(service: ManagementService, model: str, version: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        run(service.start_rollout(model, version, "canary"))
    assert service.store.list_rollouts() == []


def test_start_refuses_a_model_without_a_current_version(service: ManagementService) -> None:
    service.store.add_model(ModelSpec("n", "1", InputType.DOUBLES), make_current=False)
    service.store.add_model(ModelSpec("n", "2", InputType.DOUBLES), make_current=False)
    with pytest.raises(ValidationError, match="model 'n' has no current version"):
        run(service.start_rollout("n", "2", "canary"))


def test_start_refuses_another_version_while_one_runs(service: ManagementService) -> None:
    run(service.start_rollout("m", "2", "shadow"))
    with pytest.raises(ValidationError, match="already has a shadow rollout of version '2'"):
        run(service.start_rollout("m", "3", "canary"))


def test_a_version_without_replicas_is_accepted_with_a_warning(
    service: ManagementService, caplog: pytest.LogCaptureFixture
) -> None:
    service.store.set_num_replicas("m", "2", 0)
    with caplog.at_level(logging.WARNING, "clipper.management"):
        answer = run(service.start_rollout("m", "2", "canary"))
    assert "version '2' has 0 replicas" in answer["warning"]
    assert "0 replicas" in caplog.text
    assert service.store.list_rollouts() != []


def test_an_autoscaled_version_at_zero_gets_no_warning(service: ManagementService) -> None:
    options = ModelOptions(min_replicas=0, max_replicas=2)
    service.store.update_model(ModelSpec("m", "2", InputType.DOUBLES, options=options))
    service.store.set_num_replicas("m", "2", 0)
    assert "warning" not in run(service.start_rollout("m", "2", "canary"))


def test_start_asks_the_manager_for_the_new_versions_replicas(
    service: ManagementService, tmp_path: Path
) -> None:
    # Only versions with an artifact get replicas: give version 2 one.
    artifact = tmp_path / "state" / "models" / "m" / "2" / "model.pkl"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"x")
    service.store.update_model(
        ModelSpec("m", "2", InputType.DOUBLES, model_data_path=str(artifact))
    )
    service.store.set_num_replicas("m", "2", 2)
    manager = service.manager
    assert isinstance(manager, FakeManager)
    run(service.start_rollout("m", "2", "canary"))
    assert manager.desired[ModelId("m", "2")][1] == 2


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.set_model_version("m", "3"),
        lambda s: s.set_model_version("m", "2"),
        lambda s: s.delete_model_version("m", "1"),
        lambda s: s.delete_model_version("m", "2"),
        lambda s: s.remove_links("app", ["m"]),
        lambda s: s.add_model("m", "4", "doubles"),
    ],
    ids=["set-other", "set-new", "delete-base", "delete-new", "unlink", "add-version"],
)
def test_guards_while_a_rollout_runs(service: ManagementService, change: Any) -> None:
    run(service.start_rollout("m", "2", "canary"))
    generation = service.store.generation()
    with pytest.raises(ValidationError, match=r"canary rollout of version '2'.*stop it first"):
        run(change(service))
    assert service.store.generation() == generation
    assert service.store.get_current_version("m") == "1"
    # Once it is stopped, the same change goes through.
    run(service.stop_rollout("m"))
    run(change(service))


def test_a_version_that_does_not_become_current_may_be_added(
    service: ManagementService,
) -> None:
    run(service.start_rollout("m", "2", "canary"))
    run(service.add_model("m", "4", "doubles", make_current=False))
    assert service.store.get_current_version("m") == "1"
    assert [m.version for m in service.store.list_models("m")] == ["1", "2", "3", "4"]


def test_make_current_false_deploys_beside_the_current_version(
    api: ManagementFrontend, service: ManagementService
) -> None:
    body = {"model_name": "m", "model_version": "5", "input_type": "doubles"}
    post(api, "add_model", {**body, "make_current": False})
    assert service.store.get_current_version("m") == "1"
    error = post(api, "add_model", {**body, "model_version": "6", "make_current": "no"}, 400)
    assert "make_current" in error["cause"]


def test_an_uninvolved_version_may_be_deleted(service: ManagementService) -> None:
    run(service.start_rollout("m", "2", "canary"))
    run(service.delete_model_version("m", "3"))
    assert [m.version for m in service.store.list_models("m")] == ["1", "2"]


def test_stop_keeps_the_current_version_and_forgets_everything(
    service: ManagementService, caplog: pytest.LogCaptureFixture
) -> None:
    run(service.start_rollout("m", "2", "shadow"))
    service.store.save_rollout_evidence("m", {"agreement": 0.5})
    with caplog.at_level(logging.INFO, "clipper.management"):
        answer = run(service.stop_rollout("m"))
    assert answer == {
        "model": "m",
        "new_version": "2",
        "promoted": False,
        "current_version": "1",
        "reason": "by hand",
    }
    assert service.store.list_rollouts() == [] and service.catalog.rollout("m") is None
    assert service.store.get_rollout_evidence("m") is None
    lines = [r.getMessage() for r in caplog.records if "rollout of m:2" in r.getMessage()]
    assert lines == ["rollout of m:2 rolled back (by hand); version 1 serves m"]


def test_stop_with_promote_makes_the_new_version_current(
    service: ManagementService, caplog: pytest.LogCaptureFixture
) -> None:
    run(service.start_rollout("m", "2", "bandit"))
    with caplog.at_level(logging.INFO, "clipper.management"):
        answer = run(service.stop_rollout("m", promote=True, reason="P(better) 0.97 >= 0.95"))
    assert answer["promoted"] is True and answer["current_version"] == "2"
    assert service.store.get_current_version("m") == "2"
    assert service.catalog.current_version("m") == "2"
    assert "rollout of m:2 promoted (P(better) 0.97 >= 0.95); version 2 serves m" in caplog.text


def test_stop_without_a_rollout_is_an_error(service: ManagementService) -> None:
    with pytest.raises(ValidationError, match="model 'm' has no rollout running"):
        run(service.stop_rollout("m"))
    with pytest.raises(ValidationError, match="no model named 'ghost'"):
        run(service.stop_rollout("ghost"))


def test_get_rollouts_merges_the_live_figures(service: ManagementService) -> None:
    run(service.start_rollout("m", "2", "canary"))
    assert service.get_rollouts()[0]["figures"] == {}
    service.store.save_rollout_evidence("m", {"from": "store"})
    assert service.get_rollouts()[0]["figures"] == {"from": "store"}
    service.rollout_report = lambda model: {"2": {"queries": 7, "model": model}}
    assert service.get_rollouts()[0]["figures"] == {"2": {"queries": 7, "model": "m"}}

    def broken(model: str) -> dict[str, Any]:
        raise RuntimeError("boom")

    service.rollout_report = broken  # a broken report never breaks the listing
    assert service.get_rollouts()[0]["figures"] == {"from": "store"}


# -- the routes ------------------------------------------------------------------------


@pytest.fixture
def api(service: ManagementService) -> ManagementFrontend:
    metrics = Metrics(
        lambda: ServerStatistics(0.0), catalog=service.catalog, registry=CollectorRegistry()
    )
    return ManagementFrontend(
        service,
        lambda: {"replicas": [], "pid": 1},
        admin_token=TOKEN,
        dashboard=Dashboard(metrics, service.catalog),
    )


def post(api: ManagementFrontend, route: str, body: dict[str, Any], status: int = 200) -> Any:
    r = call(api, "POST", f"/admin/{route}", body)
    assert r.status == status, (route, r.status, r.body)
    return orjson.loads(r.body)


def test_the_routes_start_list_and_stop(api: ManagementFrontend) -> None:
    body = {"model_name": "m", "model_version": "2", "mode": "canary", "steps": [[60, 0.5]]}
    started = post(api, "start_rollout", body)
    assert started["new_version"] == "2" and started["steps"] == [[60.0, 0.5]]
    (listed,) = post(api, "get_rollouts", {})
    assert listed["mode"] == "canary" and listed["figures"] == {}
    status = call(api, "GET", "/admin/status")
    assert orjson.loads(status.body)["rollouts"][0]["new_version"] == "2"
    ended = post(api, "stop_rollout", {"model_name": "m", "promote": True})
    assert ended["promoted"] is True and ended["current_version"] == "2"
    assert post(api, "get_rollouts", {}) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model_name": "m", "model_version": "2"}, "start_rollout: missing field 'mode'"),
        ({"model_name": "m", "model_version": "2", "mode": "x"}, "mode must be one of"),
        (
            {"model_name": "m", "model_version": "2", "mode": "canary", "fraction": "1"},
            "start_rollout: field 'fraction' must be int or float",
        ),
        (
            {"model_name": "m", "model_version": "2", "mode": "canary", "percent": 5},
            "start_rollout: unknown field",
        ),
        (
            {"model_name": "m", "model_version": "2", "mode": "bandit", "limits": {"x": 1}},
            "unknown rollout limit",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_problem(
    api: ManagementFrontend, body: dict[str, Any], message: str
) -> None:
    error = post(api, "start_rollout", body, status=400)
    assert set(error) == {"error", "cause"}
    assert message in error["cause"]


def test_a_guard_is_a_400_naming_the_rollout(api: ManagementFrontend) -> None:
    post(api, "start_rollout", {"model_name": "m", "model_version": "2", "mode": "shadow"})
    error = post(api, "set_model_version", {"model_name": "m", "model_version": "2"}, 400)
    assert "shadow rollout of version '2' (from '1')" in error["cause"]
    error = post(api, "stop_rollout", {"model_name": "m", "promote": "yes"}, 400)
    assert "promote" in error["cause"]


@pytest.mark.parametrize("route", ["start_rollout", "stop_rollout", "get_rollouts"])
def test_the_routes_need_the_admin_token(api: ManagementFrontend, route: str) -> None:
    r = call(api, "POST", f"/admin/{route}", {}, token=None)
    assert r.status == 401
    r = call(api, "POST", f"/admin/{route}", {}, token="wrong-token-wrong-token")
    assert r.status == 401
