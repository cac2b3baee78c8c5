"""Idempotent creation (``exist_ok``) and the ``get_readiness`` route, in process.

A script that stopped halfway runs again with ``exist_ok=True``: what exists
and is identical is kept as it is; what exists defined otherwise is an error
naming each field that differs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from clipper.exceptions import ValidationError
from clipper.management import service as service_module
from clipper.management.api import ManagementFrontend
from clipper.management.service import ManagementService
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from tests.management.test_api import TOKEN, call
from tests.management.test_service_checks import FakeManager


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManagementService:
    async def loads(python: str, path: Path) -> None:
        pass

    monkeypatch.setattr(service_module, "check_model_loads", loads)
    store = MemoryStore()
    return ManagementService(store, Catalog(store), FakeManager(), tmp_path / "state")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def add_app(service: ManagementService, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "name": "iris",
        "input_type": "doubles",
        "default_output": "-1",
        "latency_slo_micros": 100_000,
    }
    args.update(kw)
    return run(service.add_app(**args))


def deploy(service: ManagementService, data: bytes = b"v1", **kw: Any) -> Any:
    return run(service.add_model("clf", "1", "doubles", model_data=data, **kw))


def test_an_existing_app_is_an_error_that_mentions_exist_ok(service):
    add_app(service)
    with pytest.raises(ValidationError, match=r"'iris' already exists.*exist_ok=True"):
        add_app(service)


def test_an_identical_app_with_exist_ok_changes_nothing(service):
    first = add_app(service, input_shape=[4])
    again = add_app(service, input_shape=[4], exist_ok=True)
    assert again == first
    assert [a.name for a in service.store.list_apps()] == ["iris"]


def test_a_different_app_with_exist_ok_names_each_difference(service):
    add_app(service)
    with pytest.raises(ValidationError) as info:
        add_app(service, default_output="0", latency_slo_micros=50_000, exist_ok=True)
    message = str(info.value)
    assert "application 'iris' already exists with a different definition" in message
    assert "default_output is '-1', not '0'" in message
    assert "latency_slo_micros is 100000, not 50000" in message
    assert "input_type" not in message  # only what differs
    assert service.store.get_app("iris").default_output == "-1"  # unchanged


def test_an_identical_model_version_with_exist_ok_changes_nothing(service):
    first = deploy(service, num_replicas=2)
    # A second version became current since: a rerun of the first deploy keeps it so.
    run(service.add_model("clf", "2", "doubles", model_data=b"v2"))
    again = deploy(service, num_replicas=2, exist_ok=True)
    assert again == first
    assert service.store.get_current_version("clf") == "2"
    assert Path(first.model_data_path).read_bytes() == b"v1"


def test_a_different_model_version_with_exist_ok_names_the_difference(service):
    deploy(service)
    with pytest.raises(ValidationError, match=r"already has a version '1'.*exist_ok=True"):
        deploy(service)
    with pytest.raises(ValidationError) as info:
        deploy(service, data=b"changed", batch_size=8, exist_ok=True)
    message = str(info.value)
    assert "model 'clf' version '1' already exists with a different definition" in message
    assert "model_data is 'sha256:" in message and "batch_size is -1, not 8" in message
    # The stored artifact is the first one still.
    stored = service.store.get_model("clf", "1")
    assert Path(stored.model_data_path).read_bytes() == b"v1"


def test_an_existing_link_is_an_error_or_with_exist_ok_nothing(service):
    add_app(service)
    deploy(service)
    run(service.add_links("iris", ["clf"]))
    with pytest.raises(ValidationError, match=r"'clf' already linked.*exist_ok=True"):
        run(service.add_links("iris", ["clf"]))
    run(service.add_links("iris", ["clf"], exist_ok=True))
    assert service.store.get_links("iris") == ["clf"]


# -- get_readiness ----------------------------------------------------------------------


def frontend_with(service: ManagementService, replicas: list[dict[str, Any]]) -> Any:
    return ManagementFrontend(service, lambda: {"replicas": replicas}, admin_token=TOKEN)


def readiness(frontend: ManagementFrontend, body: dict[str, Any]) -> Any:
    r = call(frontend, "POST", "/admin/get_readiness", body)
    assert r.status == 200, r.body
    return orjson.loads(r.body)


def replica(live: bool, restarts: int = 0, version: str = "1") -> dict[str, Any]:
    return {
        "model_name": "clf",
        "model_version": version,
        "replica": f"clf-{version}-0",
        "live": live,
        "restarts": restarts,
    }


def test_readiness_of_a_model_version_and_of_an_app(service):
    add_app(service)
    deploy(service)
    run(service.add_links("iris", ["clf"]))
    starting = frontend_with(service, [replica(False, restarts=1)])
    model = readiness(starting, {"model_name": "clf"})
    assert model["ready"] is False and model["problem"] is None
    (entry,) = model["models"]
    assert entry["model_version"] == "1" and entry["target_replicas"] == 1
    assert entry["live_replicas"] == 0
    assert entry["replicas"] == [{"replica": "clf-1-0", "live": False, "restarts": 1}]
    assert readiness(starting, {"app_name": "iris"})["ready"] is False
    live = frontend_with(service, [replica(True)])
    assert readiness(live, {"model_name": "clf", "model_version": "1"})["ready"] is True
    assert readiness(live, {"app_name": "iris"})["ready"] is True


def test_readiness_with_no_replica_to_wait_for(service):
    add_app(service)
    run(service.add_model("clf", "1", "doubles", container_name="external", num_replicas=0))
    run(service.add_links("iris", ["clf"]))
    nothing = frontend_with(service, [])
    # A deploy of 0 replicas has nothing to wait for; an app needs a live one.
    assert readiness(nothing, {"model_name": "clf"})["ready"] is True
    assert readiness(nothing, {"app_name": "iris"})["ready"] is False
    add_app(service, name="empty")
    empty = readiness(nothing, {"app_name": "empty"})
    assert empty["ready"] is False and empty["problem"] == "application 'empty' has no linked model"


def test_readiness_refuses_what_does_not_exist(service):
    frontend = frontend_with(service, [])
    for body, fragment in (
        ({"app_name": "nosuch"}, "application 'nosuch' does not exist"),
        ({"model_name": "nosuch"}, "no model named 'nosuch'"),
        ({}, "give either app_name or model_name"),
        ({"app_name": "a", "model_name": "b"}, "give either app_name or model_name"),
    ):
        r = call(frontend, "POST", "/admin/get_readiness", body)
        assert r.status == 400 and fragment in orjson.loads(r.body)["cause"], body
