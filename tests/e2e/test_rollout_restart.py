"""A rollout is kept in the config store (issue #27): a restarted server still
runs it, still guards it, and can end it; frontends sharing a Redis store all
follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipper.admin import ClipperException
from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.fixtures import running_clipper
from tests.helpers import Clipper
from tests.redis_server import redis_server

pytestmark = pytest.mark.slow


def test_a_rollout_survives_a_restart(tmp_path: Path) -> None:
    with running_clipper(tmp_path) as clipper:
        conn = clipper.conn
        conn.register_application("app", "doubles", "-1", 2_000_000)
        deploy_python_closure(conn, "m", "1", "doubles", models.total)
        conn.link_model_to_app("app", "m")
        # The new version is deployed beside the current one, which keeps serving.
        deploy_python_closure(conn, "m", "2", "doubles", models.describe, make_current=False)
        assert conn.get_current_model_version("m") == "1"
        started = conn.start_rollout("m", "2", "canary", fraction=0.1, steps=[(3600, 0.5)])
        assert started["base_version"] == "1" and started["new_version"] == "2"
        assert "warning" not in started
        clipper.wait_live("m", version="2")  # the new version has its replica
        assert [r["new_version"] for r in conn.get_rollouts()] == ["2"]
        with pytest.raises(ClipperException, match="canary rollout of version '2'"):
            conn.set_model_version("m", "2")
    cm = clipper.cm

    with running_clipper(tmp_path, cm=cm) as again:
        (rollout,) = again.conn.get_rollouts()
        assert {k: rollout[k] for k in ("model", "base_version", "new_version", "mode")} == {
            "model": "m",
            "base_version": "1",
            "new_version": "2",
            "mode": "canary",
        }
        assert rollout["fraction"] == 0.1 and rollout["steps"] == [[3600.0, 0.5]]
        assert rollout["started_at"] == started["started_at"]
        assert again.conn.inspect_instance()["rollouts"][0]["new_version"] == "2"
        # Still guarded after the restart, and it can still be ended.
        with pytest.raises(ClipperException, match="stop it first"):
            again.conn.delete_versioned_model("m", "1")
        ended = again.conn.stop_rollout("m", promote=True)
        assert ended["promoted"] is True and ended["current_version"] == "2"
        assert again.conn.get_current_model_version("m") == "2"
        assert again.conn.get_rollouts() == []
        assert _predicts(again).startswith("ndarray")  # version 2 answers now


def _predicts(server: Clipper) -> str:
    server.wait_live("m", version="2")
    body = server.predict("app", {"input": [1.0, 2.0]}).json()
    assert body["default"] is False, body
    return str(body["output"])


def test_frontends_on_one_redis_store_share_a_rollout(tmp_path: Path) -> None:
    with (
        redis_server() as url,
        running_clipper(tmp_path / "a", redis_url=url) as a,
        running_clipper(tmp_path / "b", redis_url=url) as b,
    ):
        for version in ("1", "2"):
            deploy_python_closure(
                a.conn, "shared-m", version, "doubles", models.total, num_replicas=0
            )
        a.conn.set_model_version("shared-m", "1")
        a.conn.start_rollout("shared-m", "2", "bandit", limits={"confidence": 0.9})
        (seen,) = b.conn.get_rollouts()
        assert seen["mode"] == "bandit" and seen["limits"] == {"confidence": 0.9}
        with pytest.raises(ClipperException, match="bandit rollout of version '2'"):
            b.conn.set_model_version("shared-m", "2")
        assert b.conn.stop_rollout("shared-m", promote=True)["current_version"] == "2"
        assert a.conn.get_rollouts() == []
        assert a.conn.get_current_model_version("shared-m") == "2"
