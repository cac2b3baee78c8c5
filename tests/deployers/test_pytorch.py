"""The PyTorch deployer: the closure it ships, and what it refuses."""

import numpy as np
import pytest
import torch

from clipper.deployers import pytorch as pt
from tests.deployers.shipping import Recorder, container_batch, shipped


def small_net():
    torch.manual_seed(0)
    # Dropout makes train mode visible: outputs would vary between calls.
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
    )


def reference(net, x):
    net.eval()
    with torch.no_grad():
        return net(torch.tensor(np.asarray(x), dtype=torch.float32)).numpy()


def test_default_func_feeds_float32_and_answers_each_row_as_a_list():
    net = small_net()
    net.train()
    x = np.random.default_rng(0).normal(size=(5, 4))
    predict = shipped(pt._make_predict(None, net))
    out = predict(container_batch(x))  # a read-only float64 batch
    assert len(out) == 5 and all(isinstance(r, list) and len(r) == 3 for r in out)
    assert all(type(v) is float for r in out for v in r)
    np.testing.assert_allclose(out, reference(net, x), atol=1e-6)
    assert predict(container_batch(x)) == out  # eval mode: dropout off, deterministic
    predict(container_batch(x, np.float32))  # read-only float32: no copy warning


def test_the_callers_module_is_left_as_it_was():
    net = small_net()
    net.train()
    pt._make_predict(None, net)
    assert net.training


def test_a_custom_func_gets_the_model_and_the_batch_under_inference_mode():
    net = small_net()
    seen = {}

    def func(model, inputs):
        seen["inference"] = torch.is_inference_mode_enabled()
        seen["training"] = model.training
        scores = model(torch.tensor(inputs, dtype=torch.float32))
        return scores.argmax(dim=1)  # a tensor: becomes plain ints

    x = np.random.default_rng(1).normal(size=(6, 4))
    out = pt._make_predict(func, net)(container_batch(x))
    assert seen == {"inference": True, "training": False}
    assert out == reference(net, x).argmax(axis=1).tolist()
    assert all(type(v) is int for v in out)


def test_a_module_class_defined_in_a_test_travels_by_value():
    class Doubler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return (x * self.scale).sum(dim=1)

    out = shipped(pt._make_predict(None, Doubler()))(container_batch([[1, 2], [3, 4]]))
    assert out == [6.0, 14.0]  # 1-D output: one number per input


def test_func_returning_a_list_of_strings_is_passed_as_is():
    out = pt._make_predict(lambda m, xs: [f"n={len(x)}" for x in xs], small_net())(
        container_batch([[0.0] * 4])
    )
    assert out == ["n=4"]


def test_bad_arguments_are_refused_before_shipping(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(pt, "deploy_python_closure", recorder)
    with pytest.raises(ValueError, match=r"torch\.nn\.Module, got dict"):
        pt.deploy_pytorch_model(None, "m", "1", "doubles", None, {"weights": 1})
    with pytest.raises(ValueError, match="func must be callable"):
        pt.deploy_pytorch_model(None, "m", "1", "doubles", "predict", small_net())
    assert recorder.calls == []


def test_deploy_ships_the_closure_with_every_keyword_passed_through(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(pt, "deploy_python_closure", recorder)
    net = small_net()
    pt.deploy_pytorch_model(
        "conn",
        "net",
        "2",
        "floats",
        None,
        net,
        labels=["t"],
        num_replicas=3,
        pkgs_to_install=["torch==2.13.0"],
        exist_ok=True,
        wait=False,
    )
    [(args, kwargs)] = recorder.calls
    assert args[:4] == ("conn", "net", "2", "floats")
    assert kwargs == {
        "labels": ["t"],
        "batch_size": -1,
        "num_replicas": 3,
        "pkgs_to_install": ["torch==2.13.0"],
        "options": None,
        "exist_ok": True,
        "wait": False,
        "timeout": 300.0,
    }
    x = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_allclose(shipped(args[4])(x), reference(net, x), atol=1e-6)
