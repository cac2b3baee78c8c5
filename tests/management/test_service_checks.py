"""The management service's input checks (clipper.management.service): what pip
is given to install, and where a model's artifact may be read from."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clipper.exceptions import ValidationError
from clipper.management import service as service_module
from clipper.management.service import (
    ManagementService,
    validate_model_data_path,
    validate_requirements,
)
from clipper.managers import envs
from clipper.managers.base import ContainerManager
from clipper.store.catalog import Catalog, UnknownVersion
from clipper.store.memory import MemoryStore
from clipper.types import ModelId, ModelSpec


class FakeManager:
    def __init__(self) -> None:
        self.desired: dict[ModelId, tuple[ModelSpec, int]] = {}

    async def reconcile(self, desired: dict[ModelId, tuple[ModelSpec, int]]) -> None:
        self.desired = desired

    def replicas(self) -> list[dict[str, Any]]:
        return []

    def replica_unresponsive(self, label: str, pid: int) -> bool:
        return False

    async def stop_all(self) -> None:
        pass


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManagementService:
    store = MemoryStore()
    svc = ManagementService(store, Catalog(store), FakeManager(), tmp_path / "state")

    async def no_pip(pkgs: list[str]) -> str:
        raise AssertionError(f"pip ran for {pkgs}")

    monkeypatch.setattr(svc.envs, "ensure", no_pip)
    return svc


def add_model(service: ManagementService, **kw: Any) -> ModelSpec:
    return asyncio.run(service.add_model("m", "1", "doubles", **kw))


# -- pkgs_to_install -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pkgs",
    [
        [],
        ["numpy"],
        ["numpy==2.1.0", "scikit-learn>=1.4,<2", "pkg[extra]~=1.0"],
        ['tomli; python_version < "3.11"', "  requests >= 2 "],
    ],
)
def test_requirements_by_name_are_accepted(pkgs):
    assert validate_requirements(pkgs) == pkgs


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("--index-url=https://evil.example/simple", "is a pip option"),
        ("--extra-index-url https://evil.example", "is a pip option"),
        ("-e .", "is a pip option"),
        ("-r /etc/requirements.txt", "is a pip option"),
        (" --pre", "is a pip option"),
        ("pkg @ https://evil.example/pkg-1.0-py3-none-any.whl", "names a URL"),
        ("pkg @ file:///tmp/pkg", "names a URL"),
        ("https://evil.example/pkg.whl", "is not a PEP 508 requirement"),
        ("./local/dir", "is not a PEP 508 requirement"),
        ("numpy\n--index-url https://evil.example", "is not a PEP 508 requirement"),
        ("numpy --index-url https://evil.example", "is not a PEP 508 requirement"),
    ],
)
def test_options_urls_and_non_requirements_are_refused(service, entry, reason):
    with pytest.raises(ValidationError) as info:
        validate_requirements(["numpy", entry])
    assert f"pkgs_to_install: {entry!r} {reason}" in str(info.value)
    with pytest.raises(ValidationError, match=reason):
        add_model(service, model_data=b"not used", pkgs_to_install=[entry])
    assert service.store.get_model("m", "1") is None
    assert not (service.models_dir / "m").exists()


@pytest.mark.parametrize("pkgs", ["numpy", [""], [1], [None], {"numpy": 1}])
def test_requirements_must_be_a_list_of_strings(pkgs):
    with pytest.raises(ValidationError, match="must be a list of pip requirement strings"):
        validate_requirements(pkgs)


def test_pip_reads_the_list_as_requirements_only(tmp_path, monkeypatch):
    commands: list[tuple[str, ...]] = []

    async def run(*cmd: str, timeout: float) -> tuple[int, str]:
        commands.append(cmd)
        return (1, "stop here") if "pip" in cmd else (0, "")

    monkeypatch.setattr(envs, "_run", run)
    builder = envs.EnvironmentBuilder(tmp_path)
    with pytest.raises(ValidationError, match="failed"):
        asyncio.run(builder.ensure(["numpy==2.1.0", "-e ."]))
    (pip,) = [c for c in commands if "pip" in c]
    assert pip[pip.index("--") :] == ("--", "numpy==2.1.0", "-e .")
    assert pip.index("install") < pip.index("--")


# -- model_data_path -------------------------------------------------------------------


def test_a_model_data_path_inside_the_state_folder_is_accepted(service):
    artifact = service.state_dir / "uploads" / "model.pkl"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"x")
    relative_form = service.state_dir / "uploads" / ".." / "uploads" / "model.pkl"
    spec = add_model(service, model_data_path=str(relative_form))
    assert spec.model_data_path == str(artifact.resolve())
    assert service.store.get_model("m", "1") is not None


def test_no_model_data_path_is_accepted(service):
    assert add_model(service).model_data_path == ""


def test_model_data_path_outside_the_state_folder_is_refused(service, tmp_path):
    service.state_dir.mkdir(parents=True)
    outside = tmp_path / "evil.pkl"
    outside.write_bytes(b"x")
    link = service.state_dir / "link.pkl"
    os.symlink(outside, link)
    escaping_dir = service.state_dir / "dir"
    os.symlink(tmp_path, escaping_dir)
    for path in (
        "/etc/passwd",
        str(outside),
        str(service.state_dir / ".." / "evil.pkl"),
        str(link),  # a symbolic link is followed
        str(escaping_dir / "evil.pkl"),
        str(service.state_dir),  # the folder itself is no artifact
        "../../x",
        "relative.pkl",
    ):
        with pytest.raises(ValidationError, match="inside the server's state folder") as info:
            add_model(service, model_data_path=path)
        assert repr(path) in str(info.value)
    assert service.store.get_model("m", "1") is None


def test_model_data_path_that_does_not_resolve(tmp_path):
    with pytest.raises(ValidationError, match="does not resolve"):
        validate_model_data_path("a\x00b", tmp_path)
    with pytest.raises(ValidationError, match="must be a string"):
        validate_model_data_path(3, tmp_path)


def test_model_data_path_is_ignored_with_model_data(service, monkeypatch):
    # The artifact sent with the deploy is stored under the state folder, and
    # that path is the one recorded; the given one is not checked nor used.
    async def loads(python: str, path: Path) -> None:
        pass

    monkeypatch.setattr(service_module, "check_model_loads", loads)
    spec = add_model(service, model_data=b"pickle", model_data_path="/etc/passwd")
    assert Path(spec.model_data_path).is_relative_to(service.state_dir)


# -- log names (the management API's get_logs) -------------------------------------------


def test_log_names_are_matched_whole():
    from clipper.management.api import LOG_NAME

    assert LOG_NAME.match("m-1-0")
    for bad in ("server\n", "m-1-0\n", "../server", "a" * 202):
        assert not LOG_NAME.match(bad), bad


# -- the one interface and the one version check -------------------------------------------


def test_the_service_takes_the_managers_interface():
    assert service_module.ContainerManager is ContainerManager
    assert isinstance(FakeManager(), ContainerManager)
    code = "import sys, clipper.management.service; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_version_pin_is_checked_by_the_catalog_once(service):
    async def setup() -> None:
        await service.add_app("one", "doubles", "-1", 100_000)
        await service.add_app("two", "doubles", "-1", 100_000, selection_policy="exp3")
        for name in ("a", "b"):
            await service.add_model(name, "1", "doubles")
        await service.add_links("one", ["a"])
        await service.add_links("two", ["a", "b"])

    asyncio.run(setup())
    catalog = service.catalog
    one, two = catalog.app("one"), catalog.app("two")
    assert one is not None and two is not None
    assert catalog.pinned(one, "1") == ModelId("a", "1")
    with pytest.raises(UnknownVersion, match="model 'a' has no version '2'") as info:
        catalog.pinned(one, "2")
    assert info.value.model == ModelId("a", "2") and isinstance(info.value, ValidationError)
    with pytest.raises(ValidationError, match="exactly one linked model; 'two' has 2"):
        catalog.pinned(two, "1")
    # The management commands name a missing version the same way.
    with pytest.raises(UnknownVersion, match="model 'a' has no version '2'"):
        asyncio.run(service.set_model_version("a", "2"))
    with pytest.raises(UnknownVersion, match="model 'b' has no version '9'"):
        asyncio.run(service.set_num_replicas("b", "9", 1))
