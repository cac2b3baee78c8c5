"""The server picks its container manager from ``--manager`` (local or ray) and wires it in."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from clipper.exceptions import ValidationError
from clipper.managers.local import LocalProcessManager
from clipper.managers.ray import RayContainerManager
from clipper.rpc.server import Replica
from clipper.server import ClipperServer
from clipper.settings import Settings
from clipper.types import ModelId


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


def test_a_hung_replica_goes_to_the_manager_after_the_batch_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = _build(tmp_path)
    try:
        ended: list[tuple[str, int]] = []

        def replica_unresponsive(label: str, pid: int) -> bool:
            ended.append((label, pid))
            return label == "m-1-0"  # the manager started this one only

        monkeypatch.setattr(server.manager, "replica_unresponsive", replica_unresponsive)
        # The grace is the model's batch time limit: max(10 x SLO, 5 s).
        assert server.rpc.unresponsive_after(ModelId("m", "1")) == 5.0
        hung = Replica(b"id", ModelId("m", "1"), "doubles", 42, "m-1-0", 0.0, 0.0)
        assert server.rpc.on_unresponsive is not None
        server.rpc.on_unresponsive(hung)
        assert ended == [("m-1-0", 42)]
        with caplog.at_level(logging.WARNING, "clipper.server"):
            server.rpc.on_unresponsive(dataclasses.replace(hung, label="by-hand"))
        assert ended[-1] == ("by-hand", 42)
        assert "did not start that process" in caplog.text and "left running" in caplog.text
    finally:
        _close(server)
