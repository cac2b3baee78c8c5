"""``test_predict_function``: the container's own code path, on the caller's machine,
returning what a client would receive (no server needed)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.admin.exceptions import ClipperException
from clipper.container.runtime import dry_run
from clipper.rpc import protocol as p


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> ClipperConnection:
    return ClipperConnection(LocalContainerManager(state_dir=tmp_path_factory.mktemp("dry")))


class Scaler:
    def predict(self, xs: Any) -> Any:
        return np.asarray(xs).sum(axis=1) * 2


def test_objects_with_predict_run_as_the_container_runs_them(conn):
    got = conn.test_predict_function({"input_batch": [[1, 2], [3, 4]]}, Scaler(), "doubles")
    assert got == [6.0, 14.0] and all(type(x) is float for x in got)


def test_outputs_come_back_json_ready(conn):
    got = conn.test_predict_function(
        {"input_batch": [[1.0], [2.0]]},
        lambda xs: [{"v": np.int64(1), "arr": np.arange(2)}, b"bytes"],
        "doubles",
    )
    assert got == [{"v": 1, "arr": [0, 1]}, "bytes"]
    third = conn.test_predict_function(
        {"input": [1.0]}, lambda xs: np.asarray(xs, dtype=np.float32)[:, 0] / 3, "doubles"
    )
    assert third == [0.33333334]


def test_one_output_for_two_inputs_fails_as_on_the_server(conn):
    with pytest.raises(ClipperException, match="predict returned 1 outputs for 2 inputs"):
        conn.test_predict_function({"input_batch": [[1.0], [2.0]]}, lambda xs: [1.0], "doubles")


def test_an_output_that_cannot_be_encoded_fails_as_on_the_server(conn):
    with pytest.raises(ClipperException) as caught:
        conn.test_predict_function(
            {"input_batch": [[1.0], [2.0]]}, lambda xs: [1.0, object()], "doubles"
        )
    assert "1 of 2 inputs" in str(caught.value)
    assert "input 2: model <lambda>:test returned an output that cannot be sent" in str(
        caught.value
    )


def test_nan_fails_as_on_the_server(conn):
    with pytest.raises(ClipperException, match="holding NaN, which JSON cannot carry"):
        conn.test_predict_function({"input": [1.0]}, lambda xs: [math.nan], "doubles")


def test_a_failing_input_is_named_with_its_own_error_and_traceback(conn):
    def picky(xs):
        for x in xs:
            if x[0] < 0:
                raise ValueError(f"negative first feature: {x[0]}")
        return [str(x[0]) for x in xs]

    query = {"input_batch": [[4.0, 1.0], [-3.0, 2.0]]}
    with pytest.raises(ClipperException) as caught:
        conn.test_predict_function(query, picky, "doubles")
    assert str(caught.value) == (
        "the server would answer 1 of 2 inputs with the app's default output: "
        "input 2: model picky:test raised ValueError: negative first feature: -3.0"
    )
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_bad_query_is_refused(conn):
    with pytest.raises(ClipperException):
        conn.test_predict_function({"input": "text"}, lambda xs: xs, "doubles")


def test_dry_run_is_the_replicas_path():
    result, raised = dry_run(Scaler(), "doubles", [np.array([1.0, 2.0])])
    assert result == [6.0] and raised == []
    result, raised = dry_run(lambda xs: 1 / 0, "doubles", [np.array([1.0])])
    assert isinstance(result, p.ModelRaised) and result.error_type == "ZeroDivisionError"
    assert isinstance(raised[0], ZeroDivisionError)
