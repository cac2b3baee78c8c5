"""GPU options on a machine without a GPU: what the deployers and the server do.

- ``devices`` naming a GPU that this machine does not have is refused at deploy
  time (a 400 naming the problem); nothing is registered.
- A replica placed on a GPU whose framework cannot use it (a CPU build of torch,
  onnxruntime without the CUDA provider) runs on the CPU and says so in the
  status (``runtime.warning``); precision falls back to fp32 on the CPU.
- The default path (a server start, a CPU deploy) imports no GPU library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from clipper.admin.exceptions import ClipperException
from clipper.deployers import onnx as onnx_deployer
from clipper.deployers import pytorch as pt
from clipper.deployers.onnx import deploy_onnx_model
from clipper.deployers.python import deploy_python_closure
from clipper.deployers.pytorch import deploy_pytorch_model
from tests.deployers.shipping import container_batch, shipped
from tests.fixtures import running_clipper
from tests.helpers import Clipper, wait_for

SLO = 5_000_000  # generous: a first batch may load a framework
GPU_LIBRARIES = ("pynvml", "cupy", "tensorflow", "jax", "onnxruntime", "torch", "triton")


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def onnx_doubler() -> bytes:
    """y = 2x, a float [N, 4] -> [N, 4] model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


# -- the closures, in this process --------------------------------------------------------


def prepare(predict: Any) -> dict[str, str]:
    """What the container runs before it registers (the deployer's hook)."""
    return dict(predict.clipper_prepare())


@pytest.fixture
def placed_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the local manager gives a replica placed on GPU 0."""
    monkeypatch.setenv("CLIPPER_DEVICE", "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("CLIPPER_PRECISION", "fp16")


def test_pytorch_runs_on_the_cpu_unless_placed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPPER_DEVICE", raising=False)
    predict = shipped(pt._make_predict(None, net()))
    details = prepare(predict)
    assert details["device"] == "cpu" and details["precision"] == "fp32"
    assert "warning" not in details and details["framework"].startswith("torch ")
    assert len(predict(container_batch(np.ones((3, 4))))) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.usefixtures("placed_on_a_gpu")
def test_pytorch_placed_on_a_gpu_without_cuda_falls_back_to_the_cpu_and_says_so() -> None:
    model = net()
    predict = shipped(pt._make_predict(None, model))
    details = prepare(predict)
    assert details["device"] == "cpu" and details["precision"] == "fp32"
    assert "placed on GPU(s) 0" in details["warning"] and "CPU" in details["warning"]
    x = np.random.default_rng(0).normal(size=(5, 4))
    with torch.no_grad():
        expected = model(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(predict(container_batch(x)), expected, atol=1e-6)


@pytest.mark.usefixtures("placed_on_a_gpu")
def test_onnx_without_the_cuda_provider_falls_back_to_the_cpu_provider() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    predict = shipped(onnx_deployer._make_predict(onnx_doubler()))
    details = prepare(predict)
    assert details["provider"] == "CPUExecutionProvider" and details["device"] == "cpu"
    assert "no CUDAExecutionProvider" in details["warning"]
    assert predict(container_batch([[1, 2, 3, 4]])) == [[2.0, 4.0, 6.0, 8.0]]


# -- end to end: a real server, real replicas ---------------------------------------------


@pytest.fixture(scope="module")
def clipper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    with running_clipper(tmp_path_factory.mktemp("gpu-fallback")) as server:
        yield server


def runtime_of(clipper: Clipper, model: str) -> dict[str, Any]:
    (replica,) = clipper.wait_live(model)
    return replica


def test_a_gpu_this_machine_lacks_is_refused_at_deploy_time(clipper: Clipper) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ClipperException, match="asks for a GPU, but this machine has none"):
        deploy_pytorch_model(
            clipper.conn, "gpu-net", "1", "doubles", None, net(), options={"devices": "cuda"}
        )
    models = clipper.admin("get_all_models").json()
    assert "gpu-net" not in json.dumps(models)
    # The same through the management API: a 400 naming the problem.
    r = clipper.admin(
        "add_model",
        {"model_name": "gpu-x", "model_version": "1", "input_type": "doubles",
         "options": {"devices": "cuda:0"}},
    )  # fmt: skip
    assert r.status_code == 400 and "this machine has none" in r.json()["cause"]
    r = clipper.admin(
        "add_model",
        {"model_name": "gpu-y", "model_version": "1", "input_type": "doubles",
         "options": {"devices": "cuda", "ray_num_gpus": 1}},
    )  # fmt: skip
    assert r.status_code == 400 and "'devices' and 'ray_num_gpus'" in r.json()["cause"]


def test_pytorch_on_the_cpu_reports_its_device_and_precision(clipper: Clipper) -> None:
    model = net()

    def scores(m: Any, xs: Any) -> Any:
        # what the replica runs on, with its answer
        out = m(torch.tensor(np.asarray(xs), dtype=torch.float32))
        return [[*row.tolist(), float(torch.cuda.is_initialized())] for row in out]

    deploy_pytorch_model(
        clipper.conn,
        "cpu-net",
        "1",
        "doubles",
        scores,
        model,
        options={"devices": "cpu", "precision": "fp16"},
    )
    clipper.conn.register_application("cpu-net", "doubles", "-1", SLO, input_shape=[4])
    clipper.conn.link_model_to_app("cpu-net", "cpu-net")
    replica = runtime_of(clipper, "cpu-net")
    assert replica["device"] == "cpu"
    assert replica["runtime"]["device"] == "cpu"
    assert replica["runtime"]["precision"] == "fp32"  # fp16 applies on a GPU only
    r = clipper.predict("cpu-net", {"input": [1.0, 2.0, 3.0, 4.0]})
    body = r.json()
    assert r.status_code == 200 and body["default"] is False, body
    with torch.no_grad():
        expected = model(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).numpy()[0]
    np.testing.assert_allclose(body["output"][:2], expected, atol=1e-5)
    assert body["output"][2] == 0.0  # CUDA never initialised in the replica


def test_onnx_on_the_cpu_reports_its_provider(clipper: Clipper) -> None:
    deploy_onnx_model(clipper.conn, "cpu-onnx", "1", "doubles", onnx_doubler())
    clipper.conn.register_application("cpu-onnx", "doubles", "-1", SLO, input_shape=[4])
    clipper.conn.link_model_to_app("cpu-onnx", "cpu-onnx")
    replica = runtime_of(clipper, "cpu-onnx")
    assert "device" not in replica  # 'devices' unset: the server's environment
    assert replica["runtime"]["provider"] == "CPUExecutionProvider"
    r = clipper.predict("cpu-onnx", {"input": [1.0, 2.0, 3.0, 4.0]})
    assert r.json()["output"] == [2.0, 4.0, 6.0, 8.0]


# -- the default path imports no GPU library ----------------------------------------------


def loaded_libraries(xs: Any) -> list[list[str]]:
    """Each input answered with the GPU libraries this replica has imported."""
    import sys as replica_sys

    libs = ("pynvml", "cupy", "tensorflow", "jax", "onnxruntime", "torch", "triton")
    return [sorted({m.split(".")[0] for m in replica_sys.modules} & set(libs))] * len(xs)


def test_a_server_start_and_a_cpu_deploy_import_no_gpu_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every Python process started below (the server, its replica) writes the
    # modules it imported when it exits, through a sitecustomize on its path.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, json, os, sys\n"
        "out = os.environ.get('CLIPPER_TEST_MODULES_DIR')\n"
        "if out:\n"
        "    atexit.register(lambda: open(os.path.join(out, f'{os.getpid()}.json'), 'w')"
        ".write(json.dumps([sys.argv, sorted(sys.modules)])))\n"
    )
    dumps = tmp_path / "modules"
    dumps.mkdir()
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("CLIPPER_TEST_MODULES_DIR", str(dumps))
    with running_clipper(tmp_path / "state") as server:
        deploy_python_closure(server.conn, "plain", "1", "doubles", loaded_libraries)
        server.conn.register_application("plain", "doubles", "-1", SLO)
        server.conn.link_model_to_app("plain", "plain")
        server.wait_live("plain")
        r = server.predict("plain", {"input": [1.0]})
        assert r.status_code == 200 and r.json()["output"] == [], r.text
        status = server.status()
        assert "gpus" not in status  # no GPU: the gauges are absent, not zero
        metrics = server.http.get(f"{server.query_url}/metrics").text
        assert "clipper_gpu_" not in metrics
    wait_for(lambda: len(list(dumps.glob("*.json"))) >= 2, 30, "the processes' module lists")
    programs = []
    for dump in dumps.glob("*.json"):
        argv, modules = json.loads(dump.read_text())
        gpu = sorted({m.split(".")[0] for m in modules} & set(GPU_LIBRARIES))
        assert gpu == [], f"{argv[0]} imported {gpu}"
        programs.append(Path(argv[0]).parts[-2:])
    # The server (python -m clipper.server) and its replica were both seen.
    assert ("clipper", "server.py") in programs, programs
    assert ("container", "__main__.py") in programs, programs


# -- a GPU the frameworks cannot use: a machine whose nvidia-smi reports one -------------

FAKE_SMI = """#!/bin/sh
# Answers the two queries Clipper makes: the GPU list, and utilisation/memory.
case "$*" in
  *utilization.gpu*) echo "0, Fake GPU, 37, 512, 1000" ;;
  *) echo "0, GPU-00000000-fake, Fake GPU, 1000" ;;
esac
"""


def test_placed_on_a_gpu_the_frameworks_cannot_use_both_deployers_fall_back_to_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with running_clipper(tmp_path / "state") as server:
        options = {"devices": "cuda", "precision": "fp16"}
        deploy_pytorch_model(server.conn, "fb-net", "1", "doubles", None, net(), options=options)
        deploy_onnx_model(
            server.conn, "fb-onnx", "1", "doubles", onnx_doubler(), options={"devices": "cuda:0"}
        )
        with pytest.raises(ClipperException, match="names GPU 1, but this machine has GPU"):
            deploy_pytorch_model(
                server.conn, "fb-two", "1", "doubles", None, net(), options={"devices": "cuda:1"}
            )
        torch_replica = runtime_of(server, "fb-net")
        onnx_replica = runtime_of(server, "fb-onnx")
        assert torch_replica["device"] == onnx_replica["device"] == "cuda:0"  # placed
        assert torch_replica["runtime"]["device"] == "cpu"  # ran: the CPU, and says why
        assert torch_replica["runtime"]["precision"] == "fp32"
        assert "no CUDA device" in torch_replica["runtime"]["warning"]
        assert onnx_replica["runtime"]["provider"] == "CPUExecutionProvider"
        assert "onnxruntime-gpu" in onnx_replica["runtime"]["warning"]
        server.conn.register_application("fb-onnx", "doubles", "-1", SLO, input_shape=[4])
        server.conn.link_model_to_app("fb-onnx", "fb-onnx")
        r = server.predict("fb-onnx", {"input": [1.0, 2.0, 3.0, 4.0]})
        assert r.json()["output"] == [2.0, 4.0, 6.0, 8.0]
        # The GPU gauges, from the (fake) nvidia-smi: in the status and /metrics.
        gpus = wait_for(lambda: server.status().get("gpus"), 30, "GPU samples in the status")
        assert gpus[0]["utilization"] == 0.37 and gpus[0]["name"] == "Fake GPU"
        metrics = server.http.get(f"{server.query_url}/metrics").text
        assert 'clipper_gpu_utilization_ratio{gpu="0",name="Fake GPU"} 0.37' in metrics
