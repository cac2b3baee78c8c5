"""The scikit-learn deployer: the closure it ships, and what it refuses."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC

from clipper.deployers import sklearn as sk
from tests.deployers.shipping import Recorder, container_batch, shipped


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    return clf, x[::30]


def test_predict_gives_plain_ints_equal_to_the_estimator(iris):
    clf, x = iris
    out = shipped(sk._make_predict(clf))(container_batch(x))
    assert out == clf.predict(x).tolist()
    assert all(type(v) is int for v in out)
    assert len(set(out)) > 1
    json.dumps(out)


def test_predict_proba_gives_one_list_of_floats_per_input(iris):
    clf, x = iris
    out = shipped(sk._make_predict(clf, "predict_proba"))(container_batch(x))
    assert len(out) == len(x)
    for row, expected in zip(out, clf.predict_proba(x), strict=True):
        assert isinstance(row, list) and all(type(p) is float for p in row)
        assert row == pytest.approx(expected.tolist())
        assert sum(row) == pytest.approx(1.0)


def test_decision_function_multiclass_and_binary(iris):
    clf, x = iris
    out = shipped(sk._make_predict(clf, "decision_function"))(container_batch(x))
    assert [len(row) for row in out] == [3] * len(x)
    x2, y2 = load_digits(n_class=2, return_X_y=True)
    binary = LinearSVC().fit(x2, y2)
    scores = shipped(sk._make_predict(binary, "decision_function"))(container_batch(x2[:4]))
    assert all(type(s) is float for s in scores)
    assert scores == pytest.approx(binary.decision_function(x2[:4]).tolist())


def test_string_labels_and_regression_outputs_are_plain():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    clf = LogisticRegression().fit(x, np.array(["low", "low", "high", "high"]))
    assert shipped(sk._make_predict(clf))(container_batch([[0.0], [3.0]])) == ["low", "high"]
    reg = SVR().fit(x, [0.0, 1.0, 2.0, 3.0])
    out = shipped(sk._make_predict(reg))(container_batch([[1.5]]))
    assert type(out[0]) is float


def test_a_text_pipeline_takes_the_list_of_strings_a_strings_app_sends():
    clf = make_pipeline(CountVectorizer(), MultinomialNB()).fit(
        ["good great fine", "bad awful poor", "great good", "poor bad"], [1, 0, 1, 0]
    )
    assert shipped(sk._make_predict(clf))(["great stuff", "awful stuff"]) == [1, 0]


def test_an_unfitted_estimator_is_refused_before_shipping(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(sk, "deploy_python_closure", recorder)
    with pytest.raises(ValueError, match="LogisticRegression is not fitted"):
        sk.deploy_sklearn_model(None, "m", "1", "doubles", LogisticRegression())
    with pytest.raises(ValueError, match="Pipeline is not fitted"):
        sk.deploy_sklearn_model(
            None, "m", "1", "doubles", make_pipeline(StandardScaler(), LogisticRegression())
        )
    assert recorder.calls == []


def test_a_missing_or_unknown_method_is_refused_before_shipping(monkeypatch, iris):
    recorder = Recorder()
    monkeypatch.setattr(sk, "deploy_python_closure", recorder)
    x, y = load_iris(return_X_y=True)
    svc = SVC().fit(x, y)  # probability=False: no predict_proba
    with pytest.raises(ValueError, match=r"SVC has no predict_proba\(\) method"):
        sk.deploy_sklearn_model(None, "m", "1", "doubles", svc, method="predict_proba")
    with pytest.raises(ValueError, match="method must be one of"):
        sk.deploy_sklearn_model(None, "m", "1", "doubles", iris[0], method="transform")
    with pytest.raises(ValueError, match="not a scikit-learn estimator"):
        sk.deploy_sklearn_model(None, "m", "1", "doubles", object())
    assert recorder.calls == []


def test_deploy_ships_the_closure_with_every_keyword_passed_through(monkeypatch, iris):
    recorder = Recorder()
    monkeypatch.setattr(sk, "deploy_python_closure", recorder)
    clf, x = iris
    sk.deploy_sklearn_model(
        "conn",
        "iris",
        "3",
        "doubles",
        clf,
        method="predict_proba",
        labels=["a"],
        batch_size=8,
        num_replicas=2,
        pkgs_to_install=["scikit-learn"],
        options={"queue_capacity": 10},
        exist_ok=True,
        wait=False,
        timeout=5.0,
    )
    [(args, kwargs)] = recorder.calls
    assert args[:4] == ("conn", "iris", "3", "doubles")
    assert kwargs == {
        "labels": ["a"],
        "batch_size": 8,
        "num_replicas": 2,
        "pkgs_to_install": ["scikit-learn"],
        "options": {"queue_capacity": 10},
        "exist_ok": True,
        "wait": False,
        "timeout": 5.0,
    }
    assert shipped(args[4])(container_batch(x[:1]))[0] == pytest.approx(
        clf.predict_proba(x[:1])[0].tolist()
    )


class Float32Thirds:
    """An estimator whose predictions are float32 (as many regressors' are)."""

    def predict(self, x):
        return np.full(len(x), 1 / 3, dtype=np.float32)


def test_float32_predictions_keep_their_own_precision():
    out = shipped(sk._make_predict(Float32Thirds()))(container_batch([[1.0], [2.0]]))
    assert out == [0.33333334, 0.33333334]
    assert json.dumps(out) == "[0.33333334, 0.33333334]"
