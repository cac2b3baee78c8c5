"""Deploy a Python function as a model, link it to an app, query it.

Run it against a running Clipper (`make run`, or `clipper start`):

    python examples/deploy_python_closure.py
"""

import os

import httpx
import numpy as np

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.python import deploy_python_closure

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()


def norms(xs):
    """A batch in (2-D numpy array, a row per query), an output per query."""
    return [float(np.linalg.norm(x)) for x in xs]


# Try the function here first, fed exactly as a container would feed it.
print(conn.test_predict_function({"input_batch": [[3, 4], [6, 8]]}, norms, "doubles"))

conn.register_application(
    name="norms",
    input_type="doubles",
    default_output="-1.0",
    slo_micros=100_000,
)
deploy_python_closure(conn, name="l2-norm", version="1", input_type="doubles", func=norms)
# Both calls wait until the model's replica is live (wait=False returns at once),
# so the app answers from the model right away.
conn.link_model_to_app(app_name="norms", model_name="l2-norm")

url = f"http://{conn.get_query_addr()}/norms/predict"
print(httpx.post(url, json={"input_batch": [[3, 4], [6, 8]]}).text)
print(httpx.post(url, json={"input": [1, 2, 3]}).text)
