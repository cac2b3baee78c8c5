"""An ensemble of three models that learns from feedback which to trust.

python examples/selection_policy.py
"""

import json
import os

import httpx

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.python import deploy_python_closure

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()

# Exp4 queries every linked model and answers with the advice it trusts most:
# one model's, their plain vote or their vote weighted by accuracy.
conn.register_application(
    "parity",
    "integers",
    default_output="-1",
    slo_micros=100_000,
    selection_policy="exp4",
)
models = {
    "parity-right": lambda xs: [int(x.sum()) % 2 for x in xs],
    "parity-wrong": lambda xs: [1 - int(x.sum()) % 2 for x in xs],
    "parity-zero": lambda xs: [0 for _ in xs],
}
for name, func in models.items():
    deploy_python_closure(conn, name, "1", "integers", func)  # returns once it is live
    conn.link_model_to_app("parity", name)

query = f"http://{conn.get_query_addr()}"
# Before any feedback, the two models that answer 0 outvote the right one.
print(httpx.post(f"{query}/parity/predict", json={"input": [1, 2]}).text)

# Feedback: the true label of an input. Every linked model's answer to it
# is scored, and the app's weights move towards the advice that was right.
for i in range(20):
    x = [i, i + 1, i % 3]
    httpx.post(
        f"{query}/parity/update",
        json={"uid": "alice", "input": x, "label": sum(x) % 2},
    )

# The experts' learned log-weights (0 for the most trusted); the whole state
# also holds each model's accuracy and the confidence calibration.
# get_policy_state("parity", "alice") is Alice's own.
weights = conn.get_policy_state("parity")["log_weights"]
print(json.dumps({expert: round(w, 2) for expert, w in weights.items()}))
print(httpx.post(f"{query}/parity/predict", json={"input": [1, 2]}).text)
