"""The Open Inference Protocol end to end, with the real tritonclient[http] from
PyPI against a real server and real model containers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipper import __version__
from clipper.deployers.python import deploy_python_closure
from tests.oip import models

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NO_CACHE = {"cache": False}


@pytest.fixture(scope="module")
def apps(clipper):
    conn = clipper.conn
    deployed = [
        # app, input type, shape, model, function, slo, default, options
        ("sum3", "doubles", [3], "sum-model", models.total, 2_000_000, "-1", None),
        ("ints", "integers", [2], "int-model", models.int_total, 2_000_000, "-1", None),
        ("upper", "strings", None, "upper-model", models.upper, 2_000_000, "-1", None),
        ("sizes", "bytes", None, "size-model", models.sizes, 2_000_000, "-1", None),
        ("minmax", "floats", None, "minmax-model", models.pairs, 2_000_000, "-1", None),
        ("slow", "doubles", [3], "slow-model", models.slow_total, 5_000_000, "-1", NO_CACHE),
        ("sleepy", "strings", None, "sleepy-model", models.sleepy, 200_000, "no answer", NO_CACHE),
    ]
    for app, input_type, shape, model, func, slo, default, options in deployed:
        conn.register_application(app, input_type, default, slo, input_shape=shape, options=options)
        deploy_python_closure(conn, model, "1", input_type, func)
        conn.link_model_to_app(app, model)
    conn.register_application(
        "ens", "doubles", "-1", 2_000_000, input_shape=[3], selection_policy="exp4"
    )
    deploy_python_closure(conn, "double-model", "1", "doubles", models.double_total)
    conn.link_model_to_app("ens", "sum-model")
    conn.link_model_to_app("ens", "double-model")
    for *_, model, _f, _s, _d, _o in deployed:
        clipper.wait_live(model)
    clipper.wait_live("double-model")
    return clipper


@pytest.fixture
def client(apps):
    port = apps.cm.clipper_query_port
    with httpclient.InferenceServerClient(url=f"127.0.0.1:{port}") as c:
        yield c


def tensor(data: np.ndarray, datatype: str, binary: bool = True, name: str = "input"):
    t = httpclient.InferInput(name, list(data.shape), datatype)
    t.set_data_from_numpy(data, binary_data=binary)
    return t


def output(binary: bool, name: str = "output0"):
    return httpclient.InferRequestedOutput(name, binary_data=binary)


def texts(arr: np.ndarray) -> list[str]:
    return [a.decode() if isinstance(a, bytes) else a for a in arr.ravel().tolist()]


def test_server_liveness_readiness_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta == {"name": "clipper", "version": __version__, "extensions": ["binary_tensor_data"]}


def test_model_readiness_and_metadata(client):
    assert client.is_model_ready("sum3")
    assert client.is_model_ready("sum3", "1")
    assert not client.is_model_ready("no-such-app")
    meta = client.get_model_metadata("sum3")
    assert meta["name"] == "sum3" and meta["versions"] == ["1"] and meta["platform"] == "clipper"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 3]}]
    assert client.get_model_metadata("sum3", "1")["name"] == "sum3"
    assert client.get_model_metadata("upper")["inputs"][0]["datatype"] == "BYTES"
    assert client.get_model_metadata("ints")["inputs"][0]["datatype"] == "INT32"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_fp32(client, binary):
    x = np.array([[1.0, 2.5, 3.0], [0.5, 0.25, 0.125]], dtype=np.float32)
    result = client.infer(
        "sum3", [tensor(x, "FP32", binary)], outputs=[output(binary)], request_id="r-1"
    )
    answer = result.as_numpy("output0")
    assert answer.dtype == np.float64 and answer.tolist() == [6.5, 0.875]
    response = result.get_response()
    assert response["model_name"] == "sum3" and response["model_version"] == "1"
    assert response["id"] == "r-1" and "parameters" not in response


def test_infer_binary_by_default(client):
    # No requested outputs: tritonclient asks for binary_data_output.
    x = np.array([[1, 2, 3]], dtype=np.float64)
    result = client.infer("sum3", [tensor(x, "FP64")])
    assert result.as_numpy("output0").tolist() == [6.0]
    assert result.get_output("output0")["parameters"]["binary_data_size"] == 8
    for algorithm in ("gzip", "deflate"):
        result = client.infer("sum3", [tensor(x, "FP64")], request_compression_algorithm=algorithm)
        assert result.as_numpy("output0").tolist() == [6.0]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_int64(client, binary):
    x = np.array([[1, 2], [30, 40], [-5, 5]], dtype=np.int64)
    result = client.infer("ints", [tensor(x, "INT64", binary)], outputs=[output(binary)])
    answer = result.as_numpy("output0")
    assert answer.dtype == np.int64 and answer.tolist() == [3, 70, 0]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_bytes_for_strings(client, binary):
    x = np.array(["héllo".encode(), b"world"], dtype=np.object_)
    result = client.infer("upper", [tensor(x, "BYTES", binary)], outputs=[output(binary)])
    assert texts(result.as_numpy("output0")) == ["HÉLLO", "WORLD"]
    assert result.get_output("output0")["datatype"] == "BYTES"


def test_infer_raw_bytes_and_json_outputs(client):
    x = np.array([b"\x00\xff\x10", b""], dtype=np.object_)
    result = client.infer("sizes", [tensor(x, "BYTES")])
    assert texts(result.as_numpy("output0")) == [
        '{"size":3,"head":"00ff"}',
        '{"size":0,"head":""}',
    ]


def test_batch_dimension_rows_answered_in_order(client):
    x = np.arange(150, dtype=np.float32).reshape(50, 3)
    result = client.infer("sum3", [tensor(x, "FP32")])
    assert result.as_numpy("output0").tolist() == [float(r.sum()) for r in x]
    # Outputs that are arrays come back as [N, k].
    y = np.array([[3, 1, 2], [9, 7, 8]], dtype=np.float32)
    result = client.infer("minmax", [tensor(y, "FP32")])
    assert result.as_numpy("output0").tolist() == [[1.0, 3.0], [7.0, 9.0]]


def test_unknown_model_is_an_error_and_the_server_carries_on(client):
    x = np.array([[1, 2, 3]], dtype=np.float64)
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-app", [tensor(x, "FP64")])
    assert info.value.status() == "404" and "unknown model 'no-such-app'" in info.value.message()
    assert client.is_server_live()
    assert client.infer("sum3", [tensor(x, "FP64")]).as_numpy("output0").tolist() == [6.0]


def test_bad_tensors_are_400s(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("sum3", [tensor(np.ones((2, 2), dtype=np.float32), "FP32")])
    assert info.value.status() == "400" and "expected shape [3] or [N, 3]" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("ints", [tensor(np.array([[1.5, 2.0]], dtype=np.float32), "FP32")])
    assert info.value.status() == "400" and "fraction" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("sum3", [tensor(np.array([b"1"], dtype=np.object_), "BYTES")])
    assert info.value.status() == "400" and "not BYTES" in info.value.message()


def test_deadline_miss_answers_the_default_marked(client):
    x = np.array([b"a", b"b"], dtype=np.object_)
    start = time.monotonic()
    result = client.infer("sleepy", [tensor(x, "BYTES")])
    # Answered at the 200 ms SLO, not when the model finishes (5 s): generous
    # margin for a loaded machine.
    assert time.monotonic() - start < 3.0
    assert texts(result.as_numpy("output0")) == ["no answer", "no answer"]
    params = result.get_response()["parameters"]
    assert params["clipper_default"] == [True, True]
    assert all("SLO" in why for why in params["clipper_default_explanation"])


def test_timeout_parameter_tightens_the_deadline(client):
    x = np.array([[1, 2, 3]], dtype=np.float64)
    start = time.monotonic()
    result = client.infer("slow", [tensor(x, "FP64")], timeout=100_000)  # 100 ms < 2.5 s
    assert time.monotonic() - start < 1.5
    assert result.as_numpy("output0").tolist() == [-1]  # the default "-1", as a number
    assert result.get_response()["parameters"]["clipper_default"] == [True]
    # Without it, the app's 5 s SLO leaves the model time to answer.
    result = client.infer("slow", [tensor(x, "FP64")])
    assert result.as_numpy("output0").tolist() == [6.0]
    assert "parameters" not in result.get_response()


def test_version_pins(client):
    x = np.array([[1, 2, 3]], dtype=np.float64)
    result = client.infer("sum3", [tensor(x, "FP64")], model_version="1")
    assert result.get_response()["model_version"] == "1"
    assert result.as_numpy("output0").tolist() == [6.0]
    with pytest.raises(InferenceServerException) as info:
        client.infer("sum3", [tensor(x, "FP64")], model_version="9")
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as info:
        client.infer("ens", [tensor(x, "FP64")], model_version="1")
    assert info.value.status() == "400" and "exactly one linked model" in info.value.message()


def test_ensemble_app(client):
    x = np.array([[1, 2, 3]], dtype=np.float64)
    result = client.infer("ens", [tensor(x, "FP64")])
    response = result.get_response()
    assert response["model_version"] == "exp4"
    assert 6.0 <= result.as_numpy("output0")[0] <= 12.0  # a weighted mean of 6 and 12
    assert 0.0 <= response["parameters"]["clipper_confidence"][0] <= 1.0


def run_example(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "oip_client.py"), url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_example_script(apps):
    url = f"127.0.0.1:{apps.cm.clipper_query_port}"
    done = run_example(url, "sum3", "1", "2", "3.5")
    assert done.returncode == 0, done.stderr
    assert "model sum3 version 1" in done.stdout and "output0 (FP64): [6.5]" in done.stdout
    done = run_example(url, "upper", "hello", "world", "--json")
    assert done.returncode == 0, done.stderr
    assert "output0 (BYTES): ['HELLO', 'WORLD']" in done.stdout
    done = run_example(url, "sleepy", "zzz")
    assert done.returncode == 0, done.stderr
    assert "row 0: the app's default output" in done.stdout
    done = run_example(url, "no-such-app", "1")
    assert done.returncode == 1 and "unknown model" in done.stderr
