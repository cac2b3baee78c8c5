"""What a client receives from real replicas: one bad input fails alone (in a
request's batch and in a batch shared with other users' queries), float32
outputs at their own precision, NaN and infinity as model errors on REST and
/v2, and ``test_predict_function`` answering as the server does."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from clipper.admin.exceptions import ClipperException
from clipper.deployers.python import deploy_python_closure
from tests.container import models
from tests.helpers import Clipper

pytestmark = pytest.mark.slow


def deploy(clipper: Clipper, name: str, func: Any, *, batch: int = 8, delay_ms: float = 0) -> None:
    """App ``name`` and model ``name-m``, batched up to ``batch`` queries at a time."""
    clipper.conn.register_application(name, "doubles", "-1", 2_000_000)
    options: dict[str, Any] = {"batching": "fixed"}
    if delay_ms:
        options["max_batch_delay_ms"] = delay_ms
    deploy_python_closure(
        clipper.conn, f"{name}-m", "1", "doubles", func, batch_size=batch, options=options
    )
    clipper.conn.link_model_to_app(name, f"{name}-m")
    clipper.wait_live(f"{name}-m")


def model_stats(clipper: Clipper, model: str) -> dict[str, Any]:
    return next(m for m in clipper.status()["models"] if m["model"] == f"{model}:1")


def test_one_bad_input_of_a_request_fails_alone(clipper: Clipper) -> None:
    deploy(clipper, "iso", models.first_feature_positive)
    r = clipper.predict("iso", {"input_batch": [[-3, 2], [4, 1], [-7, 1], [5, 5]]})
    assert r.status_code == 200
    first, second, third, fourth = r.json()["batch_predictions"]
    assert first["default"] is True and first["output"] == "-1"
    assert first["default_explanation"] == (
        "model iso-m:1 raised ValueError: negative first feature: -3.0"
    )
    assert third["default"] is True
    assert third["default_explanation"].endswith("negative first feature: -7.0")
    assert second == {**second, "output": 5.0, "default": False}
    assert fourth == {**fourth, "output": 10.0, "default": False}
    stats = model_stats(clipper, "iso-m")
    assert stats["batches"] == 1 and stats["model_errors"] == 2  # one batch, split inside


def test_other_users_queries_in_the_same_batch_are_answered(clipper: Clipper) -> None:
    # Single queries from four "users" at once, held for a batch of 4.
    deploy(clipper, "shared", models.first_feature_positive, batch=4, delay_ms=1000)
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        for attempt in range(5):  # until the four met in one batch (they almost always do)
            before = model_stats(clipper, "shared-m")["batches"]
            rows = [[-1.0 - attempt, 0.0], *([float(10 * attempt + i), 1.0] for i in range(3))]
            answers = list(pool.map(lambda row: clipper.predict("shared", {"input": row}), rows))
            if model_stats(clipper, "shared-m")["batches"] == before + 1:
                break
        else:
            pytest.fail("four concurrent queries never shared a batch")
    finally:
        pool.shutdown()
    bad, *good = (a.json() for a in answers)
    assert (
        bad["default"] is True
        and f"negative first feature: {rows[0][0]}" in (bad["default_explanation"])
    )
    for row, answer in zip(rows[1:], good, strict=True):
        assert answer["default"] is False and answer["output"] == row[0] + 1.0


def test_float32_outputs_keep_their_precision_on_rest_and_v2(clipper: Clipper) -> None:
    deploy(clipper, "f32", models.thirds_float32)
    r = clipper.predict("f32", {"input": [1.0, 0.0]})
    assert b'"output":0.33333334,' in r.content
    v2 = clipper.http.post(
        f"{clipper.query_url}/v2/models/f32/infer",
        json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [1, 0, 2, 0]}]},
    )
    assert v2.status_code == 200
    assert b'"data":[0.33333334,0.6666667]' in v2.content


def test_nan_and_infinity_are_model_errors_on_rest_and_v2(clipper: Clipper) -> None:
    deploy(clipper, "nan", models.nan_for_zero)
    r = clipper.predict("nan", {"input_batch": [[0.0], [1.0], [2.0]]})
    nan, inf, fine = r.json()["batch_predictions"]
    assert nan["default"] is True and nan["default_explanation"] == (
        "model nan-m:1 returned an output holding NaN, which JSON cannot carry"
    )
    assert inf["default"] is True and "holding Infinity" in inf["default_explanation"]
    assert fine == {**fine, "output": 2.0, "default": False}
    v2 = clipper.http.post(
        f"{clipper.query_url}/v2/models/nan/infer",
        json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 1], "data": [0, 3]}]},
    )
    body = v2.json()
    assert v2.status_code == 200 and body["outputs"][0]["data"] == [-1, 3.0]
    assert body["parameters"]["clipper_default"] == [True, False]
    explanation = body["parameters"]["clipper_default_explanation"][0]
    assert explanation == "model nan-m:1 returned an output holding NaN, which JSON cannot carry"
    assert model_stats(clipper, "nan-m")["model_errors"] == 3


@pytest.mark.parametrize(
    ("name", "func", "rows"),
    [
        ("dry-f32", models.thirds_float32, [[1.0, 5.0], [2.0, 0.5]]),
        ("dry-scaler", models.Scaler(0.5), [[1.0, 2.0], [3.0, 4.5]]),
        ("dry-sum", models.first_feature_positive, [[1.0, 2.0]]),
    ],
)
def test_the_dry_run_answers_what_the_server_answers(
    clipper: Clipper, name: str, func: Any, rows: list[list[float]]
) -> None:
    deploy(clipper, name, func)
    query = {"input_batch": rows}
    local = clipper.conn.test_predict_function(query, func, "doubles")
    served = clipper.predict(name, query).json()["batch_predictions"]
    assert all(p["default"] is False for p in served)
    assert local == [p["output"] for p in served]


def test_the_dry_run_fails_where_the_server_gives_the_default(clipper: Clipper) -> None:
    deploy(clipper, "dry-bad", models.first_feature_positive)
    query = {"input_batch": [[-3.0, 2.0], [4.0, 1.0]]}
    with pytest.raises(ClipperException) as caught:
        clipper.conn.test_predict_function(query, models.first_feature_positive, "doubles")
    served = clipper.predict("dry-bad", query).json()["batch_predictions"]
    assert served[0]["default"] is True and served[1]["default"] is False
    # The same explanation, for the same input (the model's name aside).
    local = str(caught.value)
    assert "1 of 2 inputs" in local and "input 1: model first_feature_positive:test" in local
    assert served[0]["default_explanation"].split(" raised ")[1] in local
    assert isinstance(caught.value.__cause__, ValueError)  # with the model's traceback
