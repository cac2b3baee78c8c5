"""A deleted model version leaves what the server reports (issue #23, point 6).

After ``delete_versioned_model("greeter", "2")``, ``inspect_instance()``, the
dashboard's summary and ``/metrics`` showed ``greeter:2`` still (the
dashboard as ``greeter | 2 | 0 live · 0 dead``): the dispatcher kept the
version's state, and everything reported from it. Against a real server.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from clipper.batching.controllers import FixedBatchSize
from clipper.batching.dispatcher import Dispatcher, ModelConfig
from clipper.deployers.python import deploy_python_closure
from clipper.rpc.server import Replica
from clipper.timers import FakeTimers
from clipper.types import ModelId
from tests.fixtures import running_clipper, ship_by_value
from tests.helpers import Clipper, wait_for


def greet(names: list[str]) -> list[str]:
    return [f"hello {n}" for n in names]


ship_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def clipper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    with running_clipper(tmp_path_factory.mktemp("deleted-versions")) as server:
        yield server


def dashboard_models(clipper: Clipper) -> list[dict[str, Any]]:
    r = clipper.http.get(f"{clipper.admin_url}/dashboard/api/summary")
    r.raise_for_status()
    return list(r.json()["models"])


def versions_reported(clipper: Clipper, name: str) -> dict[str, set[str]]:
    """Which versions of model ``name`` each report names."""
    status = clipper.conn.inspect_instance()
    metrics = clipper.http.get(f"{clipper.query_url}/metrics").text
    return {
        "status models": {
            m["model"].split(":")[1] for m in status["models"] if m["model"].split(":")[0] == name
        },
        "status replicas": {
            r["model_version"] for r in status["replicas"] if r["model_name"] == name
        },
        "status batch sizes": {
            k.split(":")[1] for k in status["metrics"]["batch_sizes"] if k.split(":")[0] == name
        },
        "dashboard": {m["version"] for m in dashboard_models(clipper) if m["model"] == name},
        "metrics": {v for v in ("1", "2") if f'model="{name}",version="{v}"' in metrics},
    }


class NoTransport:
    def send_batch(self, *args: Any, **kwargs: Any) -> bool:
        return True


def test_the_dispatcher_forgets_a_deleted_version_once_drained() -> None:
    async def main() -> None:
        config = ModelConfig(FixedBatchSize(4), 0.0, 100)
        d = Dispatcher(configure=lambda _m: config, timers=FakeTimers(100.0))
        d.set_transport(NoTransport())
        v1, v2 = ModelId("greeter", "1"), ModelId("greeter", "2")
        r2 = Replica(b"r2", v2, "strings", None, "greeter-2-0", 0.0, 0.0)
        d.replica_joined(Replica(b"r1", v1, "strings", None, "greeter-1-0", 0.0, 0.0))
        d.replica_joined(r2)
        # Deleted, but its replica is still connected: kept (it may finish a batch).
        assert d.forget({v1}) == []
        d.replica_left(r2, "stopped")
        assert d.forget({v1}) == [v2]
        assert [s.model for s in d.statistics()] == [v1]
        assert d.forget({v1}) == []

    asyncio.run(main())


@pytest.mark.slow
def test_a_deleted_version_leaves_status_dashboard_and_metrics(clipper: Clipper) -> None:
    conn = clipper.conn
    conn.register_application("greet", "strings", "nobody", 2_000_000)
    deploy_python_closure(conn, "greeter", "1", "strings", greet)
    deploy_python_closure(conn, "greeter", "2", "strings", greet)
    conn.link_model_to_app("greet", "greeter")
    # Version 2 serves: it computes batches, so every report knows it.
    answered = wait_for(
        lambda: (r := clipper.predict("greet", {"input": "ada"}).json()) and not r["default"] and r,
        what="an answer from greeter:2",
    )
    assert answered["output"] == "hello ada"
    every = ("status models", "status batch sizes", "dashboard", "metrics")
    wait_for(
        lambda: all("2" in versions_reported(clipper, "greeter")[k] for k in every),
        what="greeter:2 in every report (the dashboard samples once a second)",
    )

    conn.set_model_version("greeter", "1")
    conn.delete_versioned_model("greeter", "2")

    def only_version_1() -> dict[str, set[str]] | None:
        reported = versions_reported(clipper, "greeter")
        return reported if all("2" not in v for v in reported.values()) else None

    # Its replica stops, then nothing names version 2 any more; version 1 stays.
    try:
        reported = wait_for(only_version_1, what="greeter:2 gone from every report")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; reported: {versions_reported(clipper, 'greeter')}") from exc
    assert reported["dashboard"] == {"1"}
    assert "1" in reported["status replicas"]
    # And the summary's rows are whole versions: no "0 live, 0 dead" ghost.
    rows = [m for m in dashboard_models(clipper) if m["model"] == "greeter"]
    assert [(m["version"], m["current"]) for m in rows] == [("1", True)]
