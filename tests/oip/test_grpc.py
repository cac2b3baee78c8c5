"""The Open Inference Protocol over gRPC end to end: a real server with
``--grpc-port``, real model containers, and the real ``tritonclient.grpc``
(plus its generated stubs, for typed tensor contents it never sends itself)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clipper import __version__
from clipper.deployers.python import deploy_python_closure
from tests.fixtures import running_clipper
from tests.helpers import Clipper, free_port, manager_on_free_ports
from tests.oip import models

grpcclient = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
grpc = pytest.importorskip("grpc")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "k" * 16


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[Clipper, int]]:
    grpc_port = free_port()
    state = tmp_path_factory.mktemp("clipper-grpc")
    cm = manager_on_free_ports(state, server_flags=["--grpc-port", str(grpc_port)])
    with running_clipper(state, cm=cm) as clipper:
        conn = clipper.conn
        deployed = [
            # app, input type, shape, model, function, slo, default, options
            ("sum3", "doubles", [3], "sum-model", models.total, 2_000_000, "-1", None),
            ("ints", "integers", [2], "int-model", models.int_total, 2_000_000, "-1", None),
            ("upper", "strings", None, "upper-model", models.upper, 2_000_000, "-1", None),
            ("slow", "doubles", [3], "slow-model", models.slow_total, 5_000_000, "-1", None),
            (
                "keyed",
                "doubles",
                [3],
                "keyed-model",
                models.total,
                2_000_000,
                "-1",
                {"api_keys": [KEY]},
            ),
        ]
        for app, input_type, shape, model, func, slo, default, options in deployed:
            conn.register_application(
                app, input_type, default, slo, input_shape=shape, options=options
            )
            deploy_python_closure(conn, model, "1", input_type, func)
            conn.link_model_to_app(app, model)
        conn.register_application("sleepy", "strings", "no answer", 200_000)  # no model linked
        yield clipper, grpc_port


@pytest.fixture
def client(server):
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{server[1]}") as c:
        yield c


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor(data: np.ndarray, datatype: str, name: str = "input"):
    t = grpcclient.InferInput(name, list(data.shape), datatype)
    t.set_data_from_numpy(data)  # raw_input_contents, as tritonclient always sends
    return t


def error_of(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_live_ready_and_server_metadata(client, server):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "clipper" and meta["version"] == __version__
    assert server[0].status()["grpc_port"] == server[1]


def test_model_ready_and_metadata(client):
    assert client.is_model_ready("sum3") and client.is_model_ready("sum3", "1")
    assert not client.is_model_ready("sleepy")  # no model linked
    meta = client.get_model_metadata("sum3", as_json=True)
    assert meta["name"] == "sum3" and meta["versions"] == ["1"] and meta["platform"] == "clipper"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": ["-1", "3"]}]
    assert meta["outputs"] == [{"name": "output0", "datatype": "INT64", "shape": ["-1"]}]
    assert client.get_model_metadata("ints", as_json=True)["inputs"][0]["datatype"] == "INT32"
    assert client.get_model_metadata("upper", as_json=True)["inputs"][0]["datatype"] == "BYTES"
    err = error_of(lambda: client.get_model_metadata("no-such-app"))
    assert err.status() == "StatusCode.NOT_FOUND" and "no-such-app" in err.message()
    err = error_of(lambda: client.is_model_ready("sum3", "9"))
    assert err.status() == "StatusCode.NOT_FOUND" and "unknown version '9'" in err.message()


@pytest.mark.parametrize(
    ("app", "data", "datatype", "want"),
    [
        ("sum3", np.array([[1, 2, 3], [0.5, 0.5, 0.5]], dtype=np.float32), "FP32", [6.0, 1.5]),
        ("sum3", np.array([[1, 2, 3.5]], dtype=np.float64), "FP64", [6.5]),
        ("ints", np.array([[1, 2], [30, 40]], dtype=np.int64), "INT64", [3, 70]),
    ],
)
def test_infer_raw(client, app, data, datatype, want):
    result = client.infer(app, [tensor(data, datatype)], request_id="r-1")
    assert result.as_numpy("output0").tolist() == want
    response = result.get_response(as_json=True)
    assert response["model_name"] == app and response["model_version"] == "1"
    assert response["id"] == "r-1" and "parameters" not in response
    assert response["outputs"][0]["datatype"] == ("INT64" if app == "ints" else "FP64")


def test_infer_raw_bytes(client):
    data = np.array([b"hello", "wörld".encode()], dtype=np.object_)
    result = client.infer("upper", [tensor(data, "BYTES")])
    assert result.as_numpy("output0").tolist() == [b"HELLO", "WÖRLD".encode()]


def typed_request(app: str, datatype: str, shape: list[int], field: str, values, raw_out=False):
    request = service_pb2.ModelInferRequest(model_name=app, id="t-1")
    t = request.inputs.add(name="input", datatype=datatype, shape=shape)
    getattr(t.contents, field).extend(values)
    request.parameters["binary_data_output"].bool_param = raw_out
    return request


def test_infer_typed_contents_in_and_out(stub):
    reply = stub.ModelInfer(typed_request("sum3", "FP32", [2, 3], "fp32_contents", [1, 2, 3] * 2))
    assert reply.id == "t-1" and not reply.raw_output_contents
    assert reply.outputs[0].datatype == "FP64" and list(reply.outputs[0].shape) == [2]
    assert list(reply.outputs[0].contents.fp64_contents) == [6.0, 6.0]
    reply = stub.ModelInfer(typed_request("ints", "INT64", [1, 2], "int64_contents", [5, 6]))
    assert list(reply.outputs[0].contents.int64_contents) == [11]
    reply = stub.ModelInfer(typed_request("upper", "BYTES", [2], "bytes_contents", [b"a", b"b"]))
    assert reply.outputs[0].datatype == "BYTES"
    assert list(reply.outputs[0].contents.bytes_contents) == [b"A", b"B"]
    # Typed in, raw out when asked for.
    reply = stub.ModelInfer(
        typed_request("ints", "INT32", [1, 2], "int_contents", [1, 1], raw_out=True)
    )
    assert np.frombuffer(reply.raw_output_contents[0], dtype="<i8").tolist() == [2]


def test_unknown_model_is_not_found_and_the_server_carries_on(client):
    x = np.array([[1, 2, 3]], dtype=np.float64)
    err = error_of(lambda: client.infer("no-such-app", [tensor(x, "FP64")]))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'no-such-app'" in err.message()
    assert client.infer("sum3", [tensor(x, "FP64")]).as_numpy("output0").tolist() == [6.0]


def test_bad_tensors_are_invalid_argument(client, stub):
    err = error_of(lambda: client.infer("sum3", [tensor(np.ones((2, 2), np.float32), "FP32")]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected shape [3] or [N, 3]" in err.message()
    err = error_of(lambda: client.infer("ints", [tensor(np.array([[1.5, 2.0]]), "FP64")]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "fraction" in err.message()
    # Typed contents that do not match the shape, or sit in another datatype's field.
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(typed_request("sum3", "FP32", [1, 3], "fp32_contents", [1, 2]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 3 elements" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(typed_request("sum3", "FP32", [1, 3], "fp64_contents", [1, 2, 3]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents.fp32_contents" in info.value.details()


def test_api_keys_are_needed_where_the_app_has_them(client):
    x = np.array([[1, 2, 3]], dtype=np.float64)
    err = error_of(lambda: client.infer("keyed", [tensor(x, "FP64")]))
    assert err.status() == "StatusCode.UNAUTHENTICATED" and "API key" in err.message()
    err = error_of(lambda: client.get_model_metadata("keyed", headers={"x-api-key": "nope"}))
    assert err.status() == "StatusCode.UNAUTHENTICATED"
    result = client.infer("keyed", [tensor(x, "FP64")], headers={"x-api-key": KEY})
    assert result.as_numpy("output0").tolist() == [6.0]
    assert client.is_model_ready("sum3")  # apps without keys stay open


def test_default_outputs_are_marked_as_on_v2(client, server):
    # No model linked: every row gets the default, marked per row as /v2 does.
    data = np.array([b"a", b"b"], dtype=np.object_)
    result = client.infer("sleepy", [tensor(data, "BYTES")])
    assert result.as_numpy("output0").tolist() == [b"no answer", b"no answer"]
    params = result.get_response(as_json=True)["parameters"]
    assert json.loads(params["clipper_default"]["string_param"]) == [True, True]
    why = json.loads(params["clipper_default_explanation"]["string_param"])
    assert len(why) == 2 and all(why)
    # The same request over HTTP /v2 marks the same rows.
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    v2 = server[0].http.post(f"{server[0].query_url}/v2/models/sleepy/infer", json=body).json()
    assert v2["parameters"]["clipper_default"] == [True, True]


def test_timeout_parameter_answers_the_numeric_default(client):
    x = np.array([[1, 2, 3]], dtype=np.float64)
    start = time.monotonic()
    result = client.infer("slow", [tensor(x, "FP64")], timeout=100_000)  # 100 ms < 2.5 s
    assert time.monotonic() - start < 1.5
    assert result.as_numpy("output0").tolist() == [-1]  # the default "-1", as a number
    params = result.get_response(as_json=True)["parameters"]
    assert json.loads(params["clipper_default"]["string_param"]) == [True]


def test_example_script(server):
    clipper, grpc_port = server
    env = {
        "CLIPPER_QUERY_PORT": str(clipper.cm.clipper_query_port),
        "CLIPPER_MANAGEMENT_PORT": str(clipper.cm.clipper_management_port),
        "CLIPPER_GRPC_PORT": str(grpc_port),
        "CLIPPER_HOME": str(clipper.cm.state_path),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "examples/grpc_client.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "[6.0, 1.5]" in done.stdout and "StatusCode.NOT_FOUND" in done.stdout


def test_the_grpc_port_is_off_by_default(tmp_path):
    with running_clipper(tmp_path / "state") as clipper:
        assert clipper.status()["grpc_port"] == 0
        # Nothing answers gRPC anywhere near: the HTTP query port is HTTP/1.1 only.
        with socket.socket() as s:
            s.connect(("127.0.0.1", clipper.cm.clipper_query_port))
        with grpcclient.InferenceServerClient(
            url=f"127.0.0.1:{clipper.cm.clipper_query_port}"
        ) as c:
            assert error_of(lambda: c.is_server_live(client_timeout=5)) is not None
