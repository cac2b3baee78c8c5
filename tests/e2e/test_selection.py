"""The selection layer end to end: bandits learn from feedback over real containers."""

import pytest

from clipper.admin import ClipperException
from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper

pytestmark = pytest.mark.slow


def deploy_pair(clipper, app, policy, params=None, slo=2_000_000):
    conn = clipper.conn
    conn.register_application(
        app, "doubles", "-1", slo, selection_policy=policy, policy_params=params or {}
    )
    for name, accuracy, salt in ((f"{app}-good", 0.9, 1), (f"{app}-bad", 0.5, 2)):
        deploy_python_closure(conn, name, "1", "doubles", models.make_classifier(accuracy, salt))
        conn.link_model_to_app(app, name)
        clipper.wait_live(name)


def enqueued(clipper, model):
    stats = [m for m in clipper.status()["models"] if m["model"] == f"{model}:1"]
    return stats[0]["queue"]["enqueued"] if stats else 0


def feed(clipper, app, rounds, uid="u", label_of=lambda i: i % 10, start=0):
    for i in range(start, start + rounds):
        r = clipper.http.post(
            f"{clipper.query_url}/{app}/update",
            json={"uid": uid, "input": [float(i)], "label": label_of(i)},
        )
        assert r.status_code == 200 and r.json() == {"accepted": True}, r.text


def test_exp3_routes_most_traffic_to_the_better_model(clipper):
    deploy_pair(clipper, "e3", "exp3", {"eta": 0.2})
    feed(clipper, "e3", 300)
    state = clipper.conn.get_policy_state("e3")
    assert state, "feedback left no state"
    good0, bad0 = enqueued(clipper, "e3-good"), enqueued(clipper, "e3-bad")
    for i in range(10_000, 10_200):  # fresh inputs: no cache hits
        body = clipper.predict("e3", {"input": [float(i)]}).json()
        assert body["default"] is False and "confidence" not in body
    good = enqueued(clipper, "e3-good") - good0
    bad = enqueued(clipper, "e3-bad") - bad0
    assert good + bad == 200 and good > 0.8 * 200, (good, bad)


def test_exp4_weights_the_better_model_and_reports_confidence(clipper):
    deploy_pair(clipper, "e4", "exp4", {"eta": 0.5})
    body = clipper.predict("e4", {"input": [5.0]}).json()
    assert 0 <= body["confidence"] <= 1
    feed(clipper, "e4", 200)
    # Inputs where the two models disagree: the answer follows the good one.
    agree_with_good = 0
    for i in range(20_000, 20_100):
        body = clipper.predict("e4", {"input": [float(i)]}).json()
        assert body["default"] is False and "missing_models" not in body
        good = models.make_classifier(0.9, 1)([[i]])[0]
        agree_with_good += body["output"] == good
    assert agree_with_good >= 95


def test_exp4_combines_complementary_models_and_its_confidence_means_something(clipper):
    """Three models, each right 70 % of the time on different inputs: their vote errs
    ~6 % (offline), so the ensemble must beat each model by far once it has
    learned; its confidence is calibrated: about as high as the share it gets right,
    and higher on the answers that are right than on the wrong ones."""
    conn = clipper.conn
    conn.register_application("trio", "doubles", "-1", 2_000_000, selection_policy="exp4")
    classifiers = {f"trio-{salt}": models.make_classifier(0.7, salt) for salt in (1, 2, 3)}
    for name, classify in classifiers.items():
        deploy_python_closure(conn, name, "1", "doubles", classify)
        conn.link_model_to_app("trio", name)
        clipper.wait_live(name)
    feed(clipper, "trio", 400)
    state = conn.get_policy_state("trio")
    assert set(state["accuracy"]) == set(classifiers)
    right, confidence = [], []
    for i in range(60_000, 60_300):
        body = clipper.predict("trio", {"input": [float(i)]}).json()
        assert body["default"] is False
        right.append(body["output"] == i % 10)
        confidence.append(body["confidence"])
    error = 1 - sum(right) / len(right)
    best_single = min(
        sum(c([[i]])[0] != i % 10 for i in range(60_000, 60_300)) / 300
        for c in classifiers.values()
    )
    assert error < 0.6 * best_single, (error, best_single)
    mean = sum(confidence) / len(confidence)
    assert abs(mean - (1 - error)) < 0.1, (mean, error)
    on_right = [c for c, r in zip(confidence, right, strict=True) if r]
    on_wrong = [c for c, r in zip(confidence, right, strict=True) if not r]
    assert on_wrong and sum(on_right) / len(on_right) > sum(on_wrong) / len(on_wrong)


def test_a_straggler_is_left_out_and_reported(clipper):
    conn = clipper.conn
    conn.register_application("strag", "doubles", "-1", 300_000, selection_policy="exp4")
    deploy_python_closure(conn, "quick", "1", "doubles", models.make_classifier(1.0, 0))
    deploy_python_closure(conn, "laggard", "1", "doubles", models.make_straggler(7))
    for m in ("quick", "laggard"):
        conn.link_model_to_app("strag", m)
        clipper.wait_live(m)
    r = clipper.predict("strag", {"input": [3.0]})
    body = r.json()
    assert body["default"] is False and body["output"] == 3
    assert body["missing_models"] == ["laggard"]
    assert body["confidence"] == 1.0  # every answering model agrees
    assert r.elapsed.total_seconds() < 1.5


def test_per_user_state_learns_each_users_labels(clipper):
    deploy_pair(clipper, "pers", "exp4", {"eta": 1.0})
    # Alice's labels match the "bad" model, Bob's the good one.
    bad = models.make_classifier(0.5, 2)
    feed(clipper, "pers", 60, uid="alice", label_of=lambda i: bad([[i]])[0])
    feed(clipper, "pers", 60, uid="bob", start=1000)
    alice = clipper.conn.get_policy_state("pers", "alice")
    bob = clipper.conn.get_policy_state("pers", "bob")
    assert alice and bob and alice != bob
    disagree = [
        i
        for i in range(30_000, 30_200)
        if bad([[i]])[0] != models.make_classifier(0.9, 1)([[i]])[0]
    ][:20]
    for i in disagree:
        a = clipper.predict("pers", {"input": [float(i)], "uid": "alice"}).json()["output"]
        b = clipper.predict("pers", {"input": [float(i)], "uid": "bob"}).json()["output"]
        assert a == bad([[i]])[0] and b == models.make_classifier(0.9, 1)([[i]])[0]


def test_policy_errors_name_the_problem(clipper):
    conn = clipper.conn
    with pytest.raises(ClipperException, match="bandit"):
        conn.register_application("nope", "doubles", "-1", 100_000, selection_policy="bandit")
    with pytest.raises(ClipperException, match="eta"):
        conn.register_application(
            "nope", "doubles", "-1", 100_000, selection_policy="exp3", policy_params={"eta": -1}
        )
    r = clipper.http.post(f"{clipper.query_url}/e4/update", json={"uid": "x", "input": [1.0]})
    assert r.status_code == 400 and "label" in r.json()["cause"]
    with pytest.raises(ClipperException, match="single"):
        conn.set_selection_policy("e4", "single")


def test_state_survives_a_restart(tmp_path):
    first = Clipper(tmp_path).start()
    try:
        deploy_pair(first, "keep", "exp4", {"eta": 0.5})
        feed(first, "keep", 50)
        state = first.conn.get_policy_state("keep")
    finally:
        first.stop()
    again = Clipper(tmp_path, cm=first.cm).start()
    try:
        assert again.conn.get_policy_state("keep") == state
        assert again.conn.get_app_info("keep")["selection_policy"] == "exp4"
    finally:
        again.stop()


def test_low_agreement_turns_into_the_default_when_the_app_asks(clipper):
    conn = clipper.conn
    conn.register_application(
        "robust",
        "doubles",
        "unsure",
        2_000_000,
        selection_policy="exp4",
        policy_params={"min_confidence": 0.9},
    )
    for name, salt in (("robust-a", 1), ("robust-b", 2)):
        deploy_python_closure(conn, name, "1", "doubles", models.make_classifier(0.5, salt))
        conn.link_model_to_app("robust", name)
        clipper.wait_live(name)
    a, b = models.make_classifier(0.5, 1), models.make_classifier(0.5, 2)
    i = next(i for i in range(40_000, 40_500) if a([[i]])[0] != b([[i]])[0])
    body = clipper.predict("robust", {"input": [float(i)]}).json()
    assert body["default"] is True and body["output"] == "unsure"
    assert "min_confidence" in body["default_explanation"] and body["confidence"] < 0.9
    j = next(j for j in range(40_000, 40_500) if a([[j]])[0] == b([[j]])[0])
    agreed = clipper.predict("robust", {"input": [float(j)]}).json()
    assert agreed["default"] is False and agreed["confidence"] == 1.0
