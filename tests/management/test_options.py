"""App and model options through the management service: typed in the store,
the same JSON out of ``get_app``/``get_model`` as before they were typed."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from clipper.exceptions import ValidationError
from clipper.management.options import validate_app_options, validate_model_options
from clipper.management.service import ManagementService
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from clipper.types import AppOptions, ModelOptions

from .test_service_checks import FakeManager

KEY = "a-key-of-16-chars-or-more"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()


@pytest.fixture
def service(tmp_path: Path) -> ManagementService:
    store = MemoryStore()
    return ManagementService(store, Catalog(store), FakeManager(), tmp_path / "state")


def app_options(service: ManagementService) -> dict[str, object]:
    return service.get_app("a")["options"]


def model_options(service: ManagementService) -> dict[str, object]:
    return service.get_model("m", "1")["options"]


def test_app_options_are_typed_in_the_store_and_rendered_as_set(service):
    asyncio.run(service.add_app("a", "doubles", "-1", 100_000, options={"cache": False}))
    app = service.store.get_app("a")
    assert app is not None and app.options == AppOptions(cache=False)
    assert service.catalog.app("a").spec.options.cache is False  # what queries read
    assert app_options(service) == {"cache": False}  # no defaults added
    asyncio.run(service.set_app_options("a", {"api_keys": [KEY], "overload": "503"}))
    assert app_options(service) == {"api_key_sha256": [DIGEST], "cache": False, "overload": "503"}
    # null removes an option (its default applies again); an empty key list stays.
    asyncio.run(service.set_app_options("a", {"cache": None, "api_keys": []}))
    assert app_options(service) == {"api_key_sha256": [], "overload": "503"}
    options = service.catalog.app("a").spec.options
    assert (options.cache, options.overload, options.api_key_sha256) == (True, "503", ())
    asyncio.run(service.add_app("plain", "doubles", "-1", 100_000))
    assert service.get_app("plain")["options"] == {}


def test_a_refused_app_option_changes_nothing(service):
    asyncio.run(service.add_app("a", "doubles", "-1", 100_000, options={"overload": "503"}))
    with pytest.raises(ValidationError, match="option 'overload' must be one of default, 503"):
        asyncio.run(service.set_app_options("a", {"overload": "drop"}))
    with pytest.raises(ValidationError, match="unknown app option"):
        asyncio.run(service.set_app_options("a", {"colour": "red"}))
    with pytest.raises(ValidationError, match="app options must be a JSON object"):
        asyncio.run(service.set_app_options("a", ["cache"]))  # type: ignore[arg-type]
    assert app_options(service) == {"overload": "503"}


def test_model_options_merge_and_are_checked_as_a_whole(service):
    asyncio.run(service.add_model("m", "1", "doubles", options={"queue_capacity": 4}))
    assert model_options(service) == {"queue_capacity": 4}
    model = service.store.get_model("m", "1")
    assert model is not None and model.options == ModelOptions(queue_capacity=4)
    with pytest.raises(ValidationError, match="autoscaling options need 'max_replicas'"):
        asyncio.run(service.set_model_options("m", "1", {"min_replicas": 0}))
    asyncio.run(service.set_model_options("m", "1", {"min_replicas": 0, "max_replicas": 2}))
    assert model_options(service) == {"max_replicas": 2, "min_replicas": 0, "queue_capacity": 4}
    with pytest.raises(ValidationError, match="option 'min_replicas' must not exceed"):
        asyncio.run(service.set_model_options("m", "1", {"min_replicas": 3}))
    asyncio.run(service.set_model_options("m", "1", {"queue_capacity": None, "batching": "fixed"}))
    assert model_options(service) == {"batching": "fixed", "max_replicas": 2, "min_replicas": 0}
    assert service.catalog.model(model.id).options.autoscaled


def test_the_json_validators_keep_their_form():
    assert validate_app_options({"api_keys": [KEY]}) == {"api_key_sha256": [DIGEST]}
    assert validate_model_options({"max_replicas": 1}) == {"max_replicas": 1}
    with pytest.raises(ValidationError, match="unknown model option"):
        validate_model_options({"gpu": 1})
