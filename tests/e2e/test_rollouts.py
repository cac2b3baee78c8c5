"""Safe rollouts end to end: shadow, canary and bandit through the REST API, with
real replicas; the bandit's evidence survives a restart.

The models are ``models.make_classifier``: input [i] has label i % 10, and a
classifier answers it right a set share of the time, deterministically per
input, so each version's accuracy is what the test chose.
"""

import httpx
import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper, wait_for

pytestmark = pytest.mark.slow


def deploy_versions(clipper, app, model, base, new, policy="single"):
    """App ``app`` with ``model`` linked: version 1 (``base``) current, version 2
    (``new``) deployed beside it; ``base`` and ``new`` are make_classifier args."""
    conn = clipper.conn
    conn.register_application(app, "doubles", "-1", 2_000_000, selection_policy=policy)
    deploy_python_closure(conn, model, "1", "doubles", models.make_classifier(*base))
    conn.link_model_to_app(app, model)
    deploy_python_closure(conn, model, "2", "doubles", models.make_classifier(*new))
    conn.set_model_version(model, "1")
    clipper.wait_live(model, version="1")
    clipper.wait_live(model, version="2")


def start(clipper, model, mode, **fields):
    r = clipper.admin(
        "start_rollout", {"model_name": model, "model_version": "2", "mode": mode, **fields}
    )
    assert r.status_code == 200, r.text
    return r.json()


def rollout_of(clipper, model):
    r = clipper.admin("get_rollouts")
    assert r.status_code == 200, r.text
    return next((x for x in r.json() if x["model"] == model), None)


def figures(clipper, model):
    entry = rollout_of(clipper, model)
    assert entry is not None, f"no rollout of {model}"
    return entry["figures"]


def label(i):
    return i % 10


def update(clipper, app, i, uid):
    r = clipper.http.post(
        f"{clipper.query_url}/{app}/update",
        json={"uid": uid, "input": [float(i)], "label": label(i)},
    )
    assert r.status_code == 200 and r.json()["accepted"] is True, r.text


def test_shadow_never_changes_an_answer_and_compares_the_versions(clipper):
    # Version 1 is always right, version 2 always wrong: any leak would show.
    deploy_versions(clipper, "sh", "shm", (1.0, 0), (0.0, 0))
    start(clipper, "shm", "shadow")
    for i in range(150):
        body = clipper.predict("sh", {"input": [float(i)]}).json()
        assert body["default"] is False and body["output"] == label(i), body
    got = wait_for(
        lambda: (f := figures(clipper, "shm"))["shadow"]["compared"] >= 140 and f,
        what="the shadow copies to be compared",
    )
    assert got["mode"] == "shadow" and got["new_share"] == 0.0
    assert got["shadow"]["agreement"] == 0.0
    assert got["base"]["queries"] >= 150 and got["base"]["errors"] == 0
    assert got["new"]["queries"] + got["shadow"]["dropped"] >= 140
    assert got["new"]["latency_p99_ms"] is not None
    # Labels score both versions on the same inputs (the copies' outputs are cached).
    for i in range(40):
        update(clipper, "sh", i, "u")
    got = figures(clipper, "shm")["shadow"]
    assert got["paired_feedback"] == 40
    assert got["paired_loss_base"] == 0.0 and got["paired_loss_new"] == 1.0
    # Per-version Prometheus series.
    text = httpx.get(f"{clipper.query_url}/metrics").text
    assert 'clipper_rollout_queries_total{mode="shadow",model="shm",role="new",version="2"}' in (
        text
    )
    assert 'clipper_rollout_shadow_agreement{model="shm"} 0.0' in text
    stopped = clipper.admin("stop_rollout", {"model_name": "shm"}).json()
    assert stopped["promoted"] is False and stopped["current_version"] == "1"


def test_a_canary_sends_its_share_by_uid_and_each_user_sees_one_version(clipper):
    deploy_versions(clipper, "cn", "cnm", (1.0, 0), (0.0, 0))
    start(clipper, "cnm", "canary", fraction=0.3)
    n = 800
    new = 0
    for i in range(n):
        body = clipper.predict("cn", {"input": [float(i)], "uid": f"user-{i}"}).json()
        assert body["default"] is False
        new += body["output"] != label(i)  # version 2 answers wrong: that is how it shows
    sigma = (0.3 * 0.7 / n) ** 0.5
    assert abs(new / n - 0.3) < 4 * sigma, new / n
    # The same user, whatever the input, always gets the same version.
    for uid in ("alice", "bob", "carol", "dave"):
        seen = {
            clipper.predict("cn", {"input": [float(i)], "uid": uid}).json()["output"] == label(i)
            for i in range(1000, 1020)
        }
        assert len(seen) == 1, uid
    got = figures(clipper, "cnm")
    assert got["base"]["queries"] + got["new"]["queries"] >= n
    assert abs(got["new"]["queries"] / (got["base"]["queries"] + got["new"]["queries"]) - 0.3) < 0.1
    clipper.admin("stop_rollout", {"model_name": "cnm"})


def drive_bandit(clipper, app, model, max_pairs):
    """Queries and labels, one user each, until the rollout ends; its pair count."""
    for i in range(max_pairs):
        uid = f"b{i}"
        body = clipper.predict(app, {"input": [float(i)], "uid": uid}).json()
        assert body["default"] is False
        update(clipper, app, i, uid)
        if i % 25 == 24 and rollout_of(clipper, model) is None:
            return i + 1
    wait_for(lambda: rollout_of(clipper, model) is None, 10, "the judge to decide")
    return max_pairs


# The judge's limits for these tests: decisions after 30 labels per version at least.
LIMITS = {"min_feedback": 30, "confidence": 0.95}
MAX_PAIRS = 600  # docs/howto/rollout.md: ~100-300 pairs for a 45-point difference


def test_the_bandit_promotes_a_better_version(clipper):
    deploy_versions(clipper, "bp", "bpm", (0.5, 2), (0.95, 1))
    start(clipper, "bpm", "bandit", fraction=0.2, limits=LIMITS)
    pairs = drive_bandit(clipper, "bp", "bpm", MAX_PAIRS)
    assert pairs < MAX_PAIRS, "no decision"
    assert clipper.conn.get_current_model_version("bpm") == "2"
    body = clipper.predict("bp", {"input": [float(5_000)]}).json()
    assert body["output"] == models.make_classifier(0.95, 1)([[5_000]])[0]


def test_the_bandit_rolls_a_worse_version_back(clipper):
    deploy_versions(clipper, "br", "brm", (0.9, 1), (0.3, 2))
    start(clipper, "brm", "bandit", fraction=0.2, limits=LIMITS)
    pairs = drive_bandit(clipper, "br", "brm", MAX_PAIRS)
    assert pairs < MAX_PAIRS, "no decision"
    assert clipper.conn.get_current_model_version("brm") == "1"


def test_the_bandit_rolls_back_a_version_that_fails(clipper):
    conn = clipper.conn
    conn.register_application("bf", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "bfm", "1", "doubles", models.make_classifier(1.0, 0))
    conn.link_model_to_app("bf", "bfm")
    deploy_python_closure(conn, "bfm", "2", "doubles", models.wrong_count)
    conn.set_model_version("bfm", "1")
    clipper.wait_live("bfm", version="2")
    start(clipper, "bfm", "bandit", fraction=0.5)
    for i in range(400):
        clipper.predict("bf", {"input": [float(i)], "uid": f"f{i}"})
        if i % 25 == 24 and rollout_of(clipper, "bfm") is None:
            break
    wait_for(lambda: rollout_of(clipper, "bfm") is None, 10, "the error guard to act")
    assert clipper.conn.get_current_model_version("bfm") == "1"


def test_the_judges_evidence_survives_a_restart(tmp_path):
    clipper = Clipper(tmp_path).start()
    try:
        deploy_versions(clipper, "rs", "rsm", (0.8, 1), (0.8, 2))
        # A bar the judge cannot reach here: the rollout keeps running.
        start(clipper, "rsm", "bandit", fraction=0.5, limits={"min_feedback": 100_000})
        for i in range(120):
            clipper.predict("rs", {"input": [float(i)], "uid": f"r{i}"})
            update(clipper, "rs", i, f"r{i}")
        before = figures(clipper, "rsm")
        labels = before["base"]["feedback"] + before["new"]["feedback"]
        assert labels == 120, before
    finally:
        clipper.stop()  # a stop saves the evidence

    again = Clipper(tmp_path, cm=clipper.cm).start()
    try:
        got = wait_for(
            lambda: (f := figures(again, "rsm")).get("evidence_loaded") and f,
            what="the stored evidence to load",
        )
        assert got["base"]["feedback"] + got["new"]["feedback"] == labels
        assert got["base"]["queries"] == before["base"]["queries"]
        again.wait_live("rsm", version="1")
        again.wait_live("rsm", version="2")
        clipper_again_pairs = 10
        for i in range(1000, 1000 + clipper_again_pairs):
            again.predict("rs", {"input": [float(i)], "uid": f"r{i}"})
            update(again, "rs", i, f"r{i}")
        got = figures(again, "rsm")
        assert got["base"]["feedback"] + got["new"]["feedback"] == labels + clipper_again_pairs
    finally:
        again.stop()
