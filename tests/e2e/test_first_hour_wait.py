"""A new user's first hour: the app answers right after the deploy, and a script
that stopped halfway runs again (issue #23, points 1 and 2)."""

from __future__ import annotations

import time

import pytest

from clipper.admin import ClipperException, NotReadyException
from clipper.deployers.python import deploy_python_closure
from tests.e2e import models

pytestmark = pytest.mark.slow


def test_a_query_right_after_deploy_and_link_gets_the_models_answer(clipper):
    conn = clipper.conn
    conn.register_application("fh-now", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "fh-now-m", "1", "doubles", models.total)
    conn.link_model_to_app("fh-now", "fh-now-m")
    # No waiting of our own: the deploy and the link waited for a live replica.
    body = clipper.predict("fh-now", {"input": [1.0, 2.0]}).json()
    assert body == {"query_id": body["query_id"], "output": 3.0, "default": False}
    assert conn.wait_until_ready("fh-now", timeout=5) is True


def test_a_new_version_and_more_replicas_are_live_when_the_call_returns(clipper):
    conn = clipper.conn
    conn.register_application("fh-ver", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "fh-ver-m", "1", "doubles", models.total)
    conn.link_model_to_app("fh-ver", "fh-ver-m")
    deploy_python_closure(conn, "fh-ver-m", "2", "doubles", models.describe, num_replicas=0)
    conn.set_model_version("fh-ver-m", "2", num_replicas=1)
    body = clipper.predict("fh-ver", {"input": [1.0, 2.0]}).json()
    assert body["default"] is False and body["output"] == "ndarray(1, 2):float64:3.0"
    conn.set_num_replicas("fh-ver-m", 2)
    assert len(clipper.live_replicas("fh-ver-m", "2")) >= 1


def test_a_script_that_stopped_halfway_runs_again_with_exist_ok(clipper):
    conn = clipper.conn

    def script(link: bool) -> None:
        conn.register_application("fh-rerun", "doubles", "-1", 2_000_000, exist_ok=True)
        deploy_python_closure(conn, "fh-rerun-m", "1", "doubles", models.total, exist_ok=True)
        if link:
            conn.link_model_to_app("fh-rerun", "fh-rerun-m", exist_ok=True)

    script(link=False)  # the first run "failed" before linking
    script(link=True)  # the rerun completes
    script(link=True)  # and a third run changes nothing
    assert conn.get_linked_models("fh-rerun") == ["fh-rerun-m"]
    assert [m for m in conn.get_all_models() if m.startswith("fh-rerun-m:")] == ["fh-rerun-m:1"]
    assert clipper.predict("fh-rerun", {"input": [2.0, 2.0]}).json()["output"] == 4.0
    # Without exist_ok the old errors stand, and say how to get past them.
    with pytest.raises(ClipperException, match=r"already exists.*exist_ok=True"):
        conn.register_application("fh-rerun", "doubles", "-1", 2_000_000)


def test_exist_ok_with_a_different_definition_fails_naming_the_difference(clipper):
    conn = clipper.conn
    conn.register_application("fh-diff", "doubles", "-1", 2_000_000)
    with pytest.raises(ClipperException) as info:
        conn.register_application("fh-diff", "doubles", "none", 2_000_000, exist_ok=True)
    assert "default_output is '-1', not 'none'" in str(info.value)
    deploy_python_closure(conn, "fh-diff-m", "1", "doubles", models.total)
    with pytest.raises(ClipperException) as info:
        deploy_python_closure(conn, "fh-diff-m", "1", "doubles", models.describe, exist_ok=True)
    assert "model 'fh-diff-m' version '1' already exists with a different definition" in str(
        info.value
    )
    assert "model_data is 'sha256:" in str(info.value)


def test_a_wait_that_times_out_names_what_is_not_live_and_its_log(clipper):
    conn = clipper.conn
    conn.register_application("fh-slow", "doubles", "-1", 2_000_000)
    started = time.monotonic()
    with pytest.raises(NotReadyException) as info:
        deploy_python_closure(conn, "fh-slow-m", "1", "doubles", models.total, timeout=0.0)
    message = str(info.value)
    assert message.startswith("timed out after 0s waiting for a live replica of model")
    assert "'fh-slow-m' version '1' has 0 of 1 replica(s) live" in message
    assert "`clipper logs --replica fh-slow-m-1-0`" in message
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 30
    # A model whose replicas run elsewhere: linking it has nothing to wait for,
    # but the app is not ready until one connects.
    conn.register_model("fh-ext", "1", "doubles")
    conn.register_application("fh-ext-app", "doubles", "-1", 2_000_000)
    conn.link_model_to_app("fh-ext-app", "fh-ext", timeout=5)
    with pytest.raises(NotReadyException, match="'fh-ext' version '1' has no replica to run"):
        conn.wait_until_ready("fh-ext-app", timeout=0.5)
