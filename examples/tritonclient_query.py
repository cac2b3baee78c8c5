"""Query a Clipper app through the Open Inference Protocol, with tritonclient.

pip install 'tritonclient[http]'
python examples/tritonclient_query.py
"""

import json
import os

import numpy as np
import tritonclient.http as httpclient

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.python import deploy_python_closure

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()

conn.register_application("oip-sums", "doubles", default_output="-1", slo_micros=100_000)
deploy_python_closure(conn, "oip-summer", "1", "doubles", lambda xs: [float(x.sum()) for x in xs])
conn.link_model_to_app("oip-sums", "oip-summer")

# An app is a model to tritonclient. The link waited for a live replica,
# so the app is ready at once.
client = httpclient.InferenceServerClient(url=conn.get_query_addr())
assert client.is_model_ready("oip-sums")

print(json.dumps(client.get_model_metadata("oip-sums")["inputs"]))
x = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])  # two queries, one per row
tensor = httpclient.InferInput("input", list(x.shape), "FP64")
tensor.set_data_from_numpy(x)  # binary tensor data
result = client.infer("oip-sums", [tensor])
print(result.as_numpy("output0").tolist())  # one answer per row
client.close()
