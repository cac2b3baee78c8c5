"""The ONNX deployer: the closure it ships, and what it refuses."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clipper.deployers import onnx as dx
from tests.deployers.shipping import Recorder, container_batch, shipped

W = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]])
B = np.array([0.25, -3.0])


def affine(elem=TensorProto.FLOAT, dtype=np.float32, *, reduce=False):
    """y = x @ W + b (rows of 2), or its row sums (1-D) with ``reduce``."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y" if not reduce else "yb"]),
    ]
    out_shape: list = ["n", 2]
    if reduce:
        nodes.append(helper.make_node("ReduceSum", ["yb", "axis"], ["y"], keepdims=0))
        out_shape = ["n"]
    inits = [
        numpy_helper.from_array(W.astype(dtype), "W"),
        numpy_helper.from_array(B.astype(dtype), "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", elem, ["n", 3])],
        [helper.make_tensor_value_info("y", elem, out_shape)],
        initializer=inits if reduce else inits[:2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime >= 1.17 reads
    onnx.checker.check_model(model)
    return model


X = [[1.0, 2.0, 3.0], [-1.0, 0.0, 4.5]]


def expected():
    return np.asarray(X) @ W + B


def test_float_model_from_bytes_casts_the_double_batch_and_answers_rows():
    predict = shipped(dx._make_predict(dx._model_bytes(affine().SerializeToString())))
    out = predict(container_batch(X))  # float64 from a doubles app, fed as float32
    assert all(isinstance(r, list) and all(type(v) is float for v in r) for r in out)
    np.testing.assert_allclose(out, expected(), rtol=1e-6)
    ints = [[1, 2, 3], [-1, 0, 4]]  # an integers app's int32 batch
    np.testing.assert_allclose(
        predict(container_batch(ints, np.int32)), np.asarray(ints) @ W + B, rtol=1e-6
    )


def test_double_model_from_a_proto_keeps_double_precision():
    model = affine(TensorProto.DOUBLE, np.float64)
    out = shipped(dx._make_predict(dx._model_bytes(model)))(container_batch(X, np.float32))
    np.testing.assert_allclose(out, expected(), rtol=1e-12)


def test_one_dimensional_output_gives_one_number_per_input(tmp_path):
    path = tmp_path / "sum.onnx"
    onnx.save(affine(reduce=True), path)
    for source in (path, str(path)):
        out = dx._make_predict(dx._model_bytes(source))(container_batch(X))
        assert all(type(v) is float for v in out)
        np.testing.assert_allclose(out, expected().sum(axis=1), rtol=1e-6)


def test_the_session_is_made_on_the_first_batch_not_before():
    predict = dx._make_predict(dx._model_bytes(affine()))
    shipped(predict)  # picklable until its first batch: nothing but bytes inside
    predict(container_batch(X))
    assert predict(container_batch(X[:1]))[0] == pytest.approx(expected()[0].tolist())


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"definitely not onnx \xff\x00", "not a serialised ONNX model|not a valid ONNX model"),
        (b"", "not a valid ONNX model"),
        ("/nonexistent/model.onnx", "does not exist"),
        (12, "must be bytes, a path or an onnx.ModelProto, got int"),
    ],
)
def test_bad_onnx_input_is_refused_before_shipping(monkeypatch, source, match):
    recorder = Recorder()
    monkeypatch.setattr(dx, "deploy_python_closure", recorder)
    with pytest.raises(ValueError, match=match):
        dx.deploy_onnx_model(None, "m", "1", "doubles", source)
    assert recorder.calls == []


def test_a_graph_without_inputs_is_refused():
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(B, "c"))],
        "const",
        [],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="no input"):
        dx._model_bytes(model)


def test_deploy_ships_the_closure_with_every_keyword_passed_through(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(dx, "deploy_python_closure", recorder)
    dx.deploy_onnx_model(
        "conn",
        "affine",
        "1",
        "doubles",
        affine(),
        batch_size=4,
        pkgs_to_install=["onnxruntime"],
    )
    [(args, kwargs)] = recorder.calls
    assert args[:4] == ("conn", "affine", "1", "doubles")
    assert kwargs == {
        "labels": None,
        "batch_size": 4,
        "num_replicas": 1,
        "pkgs_to_install": ["onnxruntime"],
        "options": None,
        "exist_ok": False,
        "wait": True,
        "timeout": 300.0,
    }
    np.testing.assert_allclose(shipped(args[4])(container_batch(X)), expected(), rtol=1e-6)
