"""The server picks its container manager from ``--manager`` (local or ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clipper.exceptions import ValidationError
from clipper.managers.local import LocalProcessManager
from clipper.managers.ray import RayContainerManager
from clipper.server import ClipperServer
from clipper.settings import Settings


def _build(tmp_path: Path, **kw: object) -> ClipperServer:
    return ClipperServer(Settings(state_dir=tmp_path, **kw))  # type: ignore[arg-type]


def _close(server: ClipperServer) -> None:
    asyncio.run(server.rpc.stop())
    server.store.close()


def test_unknown_managers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="use 'local' or 'ray'"):
        _build(tmp_path, manager="kubernetes")


def test_local_is_the_default(tmp_path: Path) -> None:
    server = _build(tmp_path)
    try:
        assert isinstance(server.manager, LocalProcessManager)
    finally:
        _close(server)


def test_ray_gets_the_cluster_address_and_connects_only_when_used(tmp_path: Path) -> None:
    server = _build(
        tmp_path, manager="ray", ray_address="10.0.0.1:6379", rpc_host="0.0.0.0", rpc_port=7100
    )
    try:
        manager = server.manager
        assert isinstance(manager, RayContainerManager)
        assert manager.address == "10.0.0.1:6379"
        # The wildcard stays: the manager resolves it to this node's Ray address.
        assert manager.rpc_address == "tcp://0.0.0.0:7100"
        assert manager.replicas() == []
    finally:
        _close(server)


def test_the_ray_address_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_RAY_ADDRESS", "auto")
    assert Settings.from_env().ray_address == "auto"
    assert Settings().ray_address == ""


def test_the_status_reports_an_empty_cache(tmp_path: Path) -> None:
    """An empty cache is falsy (it has a length): it must still be reported."""
    server = _build(tmp_path)
    try:
        cache = server.status()["cache"]
        assert cache is not None and cache["entries"] == 0 and cache["max_bytes"] > 0
    finally:
        _close(server)
