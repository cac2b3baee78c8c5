"""Each framework deployer end to end: a real model, a real server, queries over HTTP."""

import io

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from clipper.deployers.onnx import deploy_onnx_model
from clipper.deployers.pytorch import deploy_pytorch_model
from clipper.deployers.sklearn import deploy_sklearn_model
from tests.helpers import Clipper

pytestmark = pytest.mark.slow

SLO = 5_000_000  # generous: the first batch of an ONNX model loads onnxruntime


@pytest.fixture(scope="module")
def clipper(tmp_path_factory):
    server = Clipper(tmp_path_factory.mktemp("clipper-state")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data, data.target


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))


def forward(net, x):
    with torch.no_grad():
        return net(torch.tensor(np.asarray(x), dtype=torch.float32)).numpy()


def link(clipper, app, model):
    clipper.conn.register_application(app, "doubles", "-1", SLO, input_shape=[64])
    clipper.conn.link_model_to_app(app, model)
    clipper.wait_live(model)


def ask(clipper, app, x):
    r = clipper.predict(app, {"input": [float(v) for v in x]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default"] is False, body
    return body["output"]


def test_sklearn_logistic_regression_on_digits(clipper, digits):
    x, y = digits
    clf = LogisticRegression(max_iter=5000).fit(x[:1000], y[:1000])
    deploy_sklearn_model(clipper.conn, "digits-lr", "1", "doubles", clf)
    link(clipper, "digits-lr", "digits-lr")
    held_out = x[-8:]
    got = [ask(clipper, "digits-lr", row) for row in held_out]
    assert got == clf.predict(held_out).tolist()
    assert len(set(got)) > 3  # really classifying, not one constant


def test_pytorch_sequential(clipper, digits, net):
    x, _ = digits
    deploy_pytorch_model(clipper.conn, "digits-torch", "1", "doubles", None, net)
    link(clipper, "digits-torch", "digits-torch")
    rows = x[:4]
    got = np.array([ask(clipper, "digits-torch", row) for row in rows])
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, forward(net, rows), atol=1e-5, rtol=0)


def test_pytorch_with_a_func_of_the_callers(clipper, digits, net):
    x, _ = digits

    def label(model, inputs):  # defined here, so it travels by value
        return model(torch.from_numpy(np.array(inputs, dtype=np.float32))).argmax(dim=1)

    deploy_pytorch_model(clipper.conn, "digits-torch-label", "1", "doubles", label, net)
    link(clipper, "digits-torch-label", "digits-torch-label")
    rows = x[8:16]
    got = [ask(clipper, "digits-torch-label", row) for row in rows]
    assert got == forward(net, rows).argmax(axis=1).tolist()


@pytest.mark.filterwarnings(
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    r"ignore:The feature will be removed:DeprecationWarning:torch\.onnx\.",
)
def test_onnx_exported_from_torch(clipper, digits, net):
    x, _ = digits
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(1, 64),),
        buf,
        dynamo=False,  # the dynamo exporter needs onnxscript; this one ships with torch
        input_names=["pixels"],
        output_names=["scores"],
        dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}},
    )
    deploy_onnx_model(clipper.conn, "digits-onnx", "1", "doubles", buf.getvalue())
    link(clipper, "digits-onnx", "digits-onnx")
    rows = x[4:8]
    got = np.array([ask(clipper, "digits-onnx", row) for row in rows])
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, forward(net, rows), atol=1e-5, rtol=0)
