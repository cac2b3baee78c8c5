"""A command naming a model that does not exist says so (issue #23, point 7).

``clipper scale nosuch 2`` said "model 'nosuch' has no current version", and
with ``--version 1`` "model 'nosuch' has no version '1'"; unlinking a model
that is not linked answered 200 and changed nothing. The management API
answers these with its usual 400 and JSON error, naming the problem.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from clipper.dashboard import Dashboard
from clipper.management.api import ManagementFrontend
from clipper.management.service import ManagementService
from clipper.metrics import Metrics, ServerStatistics
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from clipper.types import AppSpec, InputType, ModelSpec
from tests.management.test_api import TOKEN, call
from tests.management.test_service_checks import FakeManager


@pytest.fixture
def api(tmp_path: Path) -> ManagementFrontend:
    store = MemoryStore()
    store.add_app(AppSpec("shout", InputType.STRINGS, "none", 100_000))
    store.add_model(ModelSpec("known", "1", InputType.STRINGS))
    store.add_model(ModelSpec("linked", "1", InputType.STRINGS))
    store.add_links("shout", ["linked"])
    catalog = Catalog(store)
    service = ManagementService(store, catalog, FakeManager(), tmp_path / "state")
    metrics = Metrics(lambda: ServerStatistics(0.0), catalog=catalog, registry=CollectorRegistry())
    return ManagementFrontend(
        service,
        lambda: {"replicas": [], "pid": 1},
        admin_token=TOKEN,
        dashboard=Dashboard(metrics, catalog),
    )


def error_of(api: ManagementFrontend, route: str, body: dict[str, object]) -> str:
    """The cause of a 400 answer, checked to have the API's JSON error shape."""
    r = call(api, "POST", f"/admin/{route}", body)
    assert r.status == 400, (route, r.status, r.body)
    payload = orjson.loads(r.body)
    assert set(payload) == {"error", "cause"}, payload
    return str(payload["cause"])


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("set_num_replicas", {"model_name": "nosuch", "model_version": "1", "num_replicas": 2}),
        ("set_model_version", {"model_name": "nosuch", "model_version": "1"}),
        ("delete_versioned_model", {"model_name": "nosuch", "model_version": "1"}),
        ("delete_model_links", {"app_name": "shout", "model_names": ["nosuch"]}),
    ],
)
def test_an_unknown_model_is_named_as_unknown(
    api: ManagementFrontend, route: str, body: dict[str, object]
) -> None:
    assert error_of(api, route, body) == "no model named 'nosuch'"


def test_an_unknown_version_of_a_known_model_is_still_named_as_such(
    api: ManagementFrontend,
) -> None:
    body = {"model_name": "known", "model_version": "9", "num_replicas": 2}
    assert error_of(api, "set_num_replicas", body) == "model 'known' has no version '9'"


def test_unlinking_a_model_that_is_not_linked_is_an_error(api: ManagementFrontend) -> None:
    body = {"app_name": "shout", "model_names": ["known"]}
    assert error_of(api, "delete_model_links", body) == (
        "model 'known' is not linked to application 'shout'"
    )
    linked = {"app_name": "shout", "model_names": ["linked"]}
    assert call(api, "POST", "/admin/delete_model_links", linked).status == 200
