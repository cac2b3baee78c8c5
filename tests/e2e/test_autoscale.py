"""Autoscaling end to end: from zero on the first query, up under load, down when idle."""

import concurrent.futures

import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def test_scale_from_zero_up_and_back_to_zero(clipper):
    conn = clipper.conn
    conn.register_application("bursty", "doubles", "-1", 1_000_000, options={"cache": False})
    deploy_python_closure(
        conn,
        "bursty",
        "1",
        "doubles",
        models.slow_total,
        batch_size=1,
        options={"min_replicas": 0, "max_replicas": 2, "scale_down_after_s": 3},
    )
    conn.link_model_to_app("bursty", "bursty")
    # An app with an SLO no process start can meet, to see the cold answer.
    conn.register_application("bursty-fast", "doubles", "-1", 50_000, options={"cache": False})
    conn.link_model_to_app("bursty-fast", "bursty")
    assert clipper.live_replicas("bursty") == []
    # The first query finds the model cold: the default, saying so; a replica starts.
    body = clipper.predict("bursty-fast", {"input": [1.0]}).json()
    assert body["default"] is True and "cold" in body["default_explanation"]
    clipper.wait_live("bursty")
    assert clipper.predict("bursty", {"input": [2.0]}).json()["output"] == 2.0
    # A burst the one replica cannot keep up with: a second one starts.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: clipper.predict("bursty", {"input": [float(i)]}), range(40)))
    # (The event, not the target: once the burst has been answered the target
    # may already be on its way down.)
    wait_for(
        lambda: any(
            e["model"] == "bursty:1" and e["new"] == 2
            for e in clipper.status()["autoscale"]["events"]
        ),
        what="scaling up to 2",
    )
    # Idle: back to zero.
    wait_for(
        lambda: clipper.status()["autoscale"]["targets"].get("bursty:1") == 0,
        what="scaling down to 0",
    )
    wait_for(lambda: not clipper.live_replicas("bursty"), what="the replicas to stop")
    events = [e for e in clipper.status()["autoscale"]["events"] if e["model"] == "bursty:1"]
    assert [(e["old"], e["new"]) for e in events][:2] == [(0, 1), (1, 2)]
