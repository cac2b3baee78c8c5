"""MLflow models: a pyfunc directory saved in the test, served end to end over REST."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from clipper.deployers.mlflow import (
    deploy_mlflow_model,
    model_input_type,
    read_requirements,
    signature_input_type,
)
from tests.cli.runner import global_args, run_cli
from tests.fixtures import running_clipper
from tests.helpers import Clipper

mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
pd = pytest.importorskip("pandas")

SLO = 10_000_000  # the first load imports mlflow and pandas


def col(kind: str, name: str = "x") -> dict[str, str]:
    return {"type": kind, "name": name}


def tensor(dtype: str, shape: list[int]) -> dict[str, object]:
    return {"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ([col("double", "a"), col("double", "b")], "doubles"),
        ([col("float")], "floats"),
        ([col("long", "a"), col("integer", "b"), col("boolean", "c")], "integers"),
        ([col("string")], "strings"),
        ([col("binary")], "bytes"),
        ([col("string", "a"), col("string", "b")], "json"),
        ([col("double", "a"), col("string", "b")], "json"),
        ([tensor("float64", [-1, 4])], "doubles"),
        ([tensor("float32", [-1, 4])], "floats"),
        ([tensor("int64", [-1, 4])], "integers"),
        ([tensor("str", [-1])], "strings"),
        ([tensor("float32", [-1, 4]), tensor("float32", [-1, 2])], "json"),
        ([], "doubles"),
    ],
)
def test_the_input_type_follows_the_signature(specs, expected):
    assert signature_input_type(specs) == expected


def test_requirements_keep_pep508_lines_only(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "# made by mlflow\nmlflow==3.1.0\n-r other.txt\n--index-url x\n\n"
        "scikit-learn==1.5.2  # pinned\npandas<3\n"
    )
    assert read_requirements(tmp_path) == ["mlflow==3.1.0", "scikit-learn==1.5.2", "pandas<3"]


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target


@pytest.fixture(scope="module")
def saved(tmp_path_factory, iris):
    """Two models saved with mlflow.sklearn.save_model: a column and a tensor signature."""
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x, y = iris
    folder = tmp_path_factory.mktemp("mlflow-models")
    columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    frame = pd.DataFrame(x, columns=columns)
    clf = LogisticRegression(max_iter=1000).fit(frame, y)
    x32 = x.astype(np.float32)
    clf32 = LogisticRegression(max_iter=1000).fit(x32, y)
    with warnings.catch_warnings():  # MLflow's notes on type hints, not ours to fix
        warnings.simplefilter("ignore")
        mlflow_sklearn.save_model(
            clf, folder / "by-columns", signature=infer_signature(frame, clf.predict(frame))
        )
        mlflow_sklearn.save_model(
            clf32, folder / "by-tensor", signature=infer_signature(x32, clf32.predict(x32))
        )
    return {"columns": (folder / "by-columns", clf), "tensor": (folder / "by-tensor", clf32)}


def test_the_saved_models_types(saved):
    assert model_input_type(saved["columns"][0]) == "doubles"
    assert model_input_type(saved["tensor"][0]) == "floats"


def test_a_directory_without_mlmodel_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no MLmodel"):
        model_input_type(tmp_path)


@pytest.fixture(scope="module")
def clipper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    with running_clipper(tmp_path_factory.mktemp("mlflow-state")) as server:
        yield server


def ask(clipper: Clipper, app: str, row) -> object:  # type: ignore[no-untyped-def]
    r = clipper.predict(app, {"input": [float(v) for v in row]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default"] is False, body
    return body["output"]


def link(clipper: Clipper, app: str, input_type: str) -> None:
    clipper.conn.register_application(app, input_type, "-1", SLO, input_shape=[4])
    clipper.conn.link_model_to_app(app, app)


@pytest.mark.slow
def test_e2e_a_model_with_a_column_signature(clipper, saved, iris):
    path, clf = saved["columns"]
    chosen = deploy_mlflow_model(clipper.conn, "iris-cols", "1", path, install_requirements=False)
    assert chosen == "doubles"
    link(clipper, "iris-cols", chosen)
    x, _ = iris
    rows = x[::30]
    got = [ask(clipper, "iris-cols", row) for row in rows]
    assert got == clf.predict(pd.DataFrame(rows, columns=clf.feature_names_in_)).tolist()
    assert len(set(got)) > 1


@pytest.mark.slow
def test_e2e_a_model_with_a_tensor_signature(clipper, saved, iris):
    path, clf = saved["tensor"]
    chosen = deploy_mlflow_model(clipper.conn, "iris-tensor", "1", path, install_requirements=False)
    assert chosen == "floats"
    link(clipper, "iris-tensor", chosen)
    x, _ = iris
    rows = x[::30].astype(np.float32)
    got = [ask(clipper, "iris-tensor", row) for row in rows]
    assert got == clf.predict(rows).tolist()


@pytest.mark.slow
def test_e2e_the_cli_deploys_an_mlflow_directory(clipper, saved, iris):
    path, clf = saved["columns"]
    result = run_cli(
        *global_args(clipper.cm),
        *("deploy", "iris-cli", "1", "--mlflow", str(path), "--no-requirements"),
    )
    assert result.returncode == 0, result.stderr
    assert "input type doubles" in result.stdout
    link(clipper, "iris-cli", "doubles")
    x, _ = iris
    expected = clf.predict(pd.DataFrame(x[:1], columns=clf.feature_names_in_)).tolist()
    assert [ask(clipper, "iris-cli", x[0])] == expected
    models = json.loads(json.dumps(clipper.conn.get_all_models(verbose=True)))
    assert any(m["model_name"] == "iris-cli" for m in models)


class Echo:
    """Stands in for a loaded pyfunc model: answers with what it was given."""

    def predict(self, data):  # type: ignore[no-untyped-def]
        return data


def predictor(specs, input_type):  # type: ignore[no-untyped-def]
    from clipper.deployers.mlflow import MLflowPredictor

    p = MLflowPredictor("m", specs, input_type)
    p.model = Echo()
    return p


def test_json_queries_become_a_frame_by_column():
    p = predictor([col("double", "age"), col("string", "city")], "json")
    frame = p._frame([{"age": 31, "city": "Oslo"}, [40, "Rome"]])
    assert list(frame.columns) == ["age", "city"]
    assert frame["age"].dtype == np.float64 and frame["city"].tolist() == ["Oslo", "Rome"]
    assert p.predict([{"age": 31, "city": "Oslo"}]) == [{"age": 31.0, "city": "Oslo"}]


def test_strings_become_one_column_and_answers_are_plain():
    p = predictor([col("string", "text")], "strings")
    assert p._frame(["a b", "c"])["text"].tolist() == ["a b", "c"]
    assert p.predict(["a b", "c"]) == ["a b", "c"]


def test_a_tensor_batch_is_cast_and_reshaped():
    p = predictor([tensor("float32", [-1, 2, 2])], "floats")
    arr = p._frame(np.arange(8, dtype=np.float64).reshape(2, 4))
    assert arr.dtype == np.float32 and arr.shape == (2, 2, 2)
    assert p.predict(np.zeros((1, 4))) == [[[0.0, 0.0], [0.0, 0.0]]]
