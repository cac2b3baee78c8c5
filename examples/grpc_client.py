"""Query a Clipper app over gRPC (the Open Inference Protocol), with tritonclient.grpc.

The server needs its gRPC port on: clipper start --grpc-port 8001
python examples/grpc_client.py
"""

import os

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.python import deploy_python_closure

# The server's ports, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
grpc_port = int(os.environ.get("CLIPPER_GRPC_PORT", "8001"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()

conn.register_application("grpc-sums", "doubles", default_output="-1", slo_micros=100_000)
deploy_python_closure(conn, "grpc-summer", "1", "doubles", lambda xs: [float(x.sum()) for x in xs])
conn.link_model_to_app("grpc-sums", "grpc-summer")

# Each app is a model of the same name, as on /v2.
client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
assert client.is_server_live() and client.is_model_ready("grpc-sums")
spec = client.get_model_metadata("grpc-sums").inputs[0]  # a protobuf message
print(spec.name, spec.datatype, list(spec.shape))

x = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])  # two queries, one per row
tensor = grpcclient.InferInput("input", list(x.shape), "FP64")
tensor.set_data_from_numpy(x)  # sent as raw_input_contents
result = client.infer("grpc-sums", [tensor])
print(result.as_numpy("output0").tolist())  # one answer per row

# Errors are gRPC status codes, with the message /v2 would give.
try:
    client.infer("no-such-app", [tensor])
except InferenceServerException as exc:
    print(exc.status(), exc.message())
client.close()
