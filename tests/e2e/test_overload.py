"""Bounded queues shed load at once (default output or 503, per app); cache per app."""

import concurrent.futures

import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models

pytestmark = pytest.mark.slow


def overloaded_app(clipper, app, overload):
    conn = clipper.conn
    conn.register_application(
        app, "doubles", "busy", 5_000_000, options={"overload": overload, "cache": False}
    )
    deploy_python_closure(conn, app, "1", "doubles", models.slow_total, batch_size=1)
    conn.set_model_options(app, "1", queue_capacity=2)
    conn.link_model_to_app(app, app)
    clipper.wait_live(app)


def burst(clipper, app, n=12):
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: clipper.predict(app, {"input": [float(i)]}), range(n)))


def test_a_full_queue_answers_the_default_at_once(clipper):
    overloaded_app(clipper, "shed-default", "default")
    responses = burst(clipper, "shed-default")
    assert all(r.status_code == 200 for r in responses)
    shed = [r.json() for r in responses if r.json()["default"]]
    assert shed and all("queue is full" in b["default_explanation"] for b in shed)
    assert any(not r.json()["default"] for r in responses)
    stats = next(m for m in clipper.status()["models"] if m["model"] == "shed-default:1")
    assert stats["queue"]["rejected"] == len(shed)


def test_a_full_queue_is_a_503_when_the_app_says_so(clipper):
    overloaded_app(clipper, "shed-503", "503")
    responses = burst(clipper, "shed-503")
    refused = [r for r in responses if r.status_code == 503]
    assert refused and all(r.json()["error"] == "overloaded" for r in refused)
    assert all(r.status_code in (200, 503) for r in responses)
    assert any(r.status_code == 200 for r in responses)


def test_the_cache_can_be_turned_off_per_app(clipper):
    conn = clipper.conn
    conn.register_application("fresh", "doubles", "-1", 5_000_000, options={"cache": False})
    deploy_python_closure(conn, "fresh", "1", "doubles", models.make_counting())
    conn.link_model_to_app("fresh", "fresh")
    clipper.wait_live("fresh")
    outs = [clipper.predict("fresh", {"input": [1.0]}).json()["output"] for _ in range(3)]
    assert outs == [1, 2, 3]  # computed each time
    conn.set_app_options("fresh", cache=True)
    outs = [clipper.predict("fresh", {"input": [1.0]}).json()["output"] for _ in range(2)]
    assert outs == [4, 4]


def test_bad_options_are_refused(clipper):
    from clipper.admin import ClipperException

    with pytest.raises(ClipperException, match="overload"):
        clipper.conn.register_application(
            "x", "doubles", "-1", 100_000, options={"overload": "drop"}
        )
    with pytest.raises(ClipperException, match="colour"):
        clipper.conn.register_application("x", "doubles", "-1", 100_000, options={"colour": 1})
