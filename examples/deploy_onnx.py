"""Build a small ONNX model, deploy it (served by ONNX Runtime), query it.

python examples/deploy_onnx.py
"""

import os
import time

import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.onnx import deploy_onnx_model

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()

# y = x @ W + b: 3 inputs, 2 outputs; the batch dimension is dynamic ("n").
# Any exported model works the same: torch.onnx.export, skl2onnx, tf2onnx, ...
weights = numpy_helper.from_array(np.array([[1, 0], [0, 1], [1, 1]], np.float32), "W")
bias = numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "b")
graph = helper.make_graph(
    [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ],
    "linear",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
    initializer=[weights, bias],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

conn.register_application("onnx-linear", "floats", default_output="[]", slo_micros=100_000)
# The model: an onnx.ModelProto, its bytes, or the path of a .onnx file.
deploy_onnx_model(conn, "linear", "1", "floats", model)
conn.link_model_to_app("onnx-linear", "linear")  # returns once the replica is live

url = f"http://{conn.get_query_addr()}/onnx-linear/predict"
# The replica creates its ONNX Runtime session on its first batch, which may
# take longer than the SLO (until then queries get the default output): warm
# it up before timing matters. Each warm-up input is new, so the answer that
# ends the loop was computed now, not taken from the prediction cache (the
# slow first batch still fills the cache when it ends).
deadline = time.monotonic() + 60
warmup = 0
while httpx.post(url, json={"input": [-1, -1, warmup]}).json().get("default"):
    if time.monotonic() > deadline:
        raise SystemExit("the model kept answering with the default; see `clipper logs`")
    warmup += 1
    time.sleep(0.1)
print(httpx.post(url, json={"input_batch": [[1, 2, 3], [0, 0, 0]]}).text)
