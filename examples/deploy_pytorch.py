"""Deploy a PyTorch module (on the CPU) and query it.

python examples/deploy_pytorch.py
"""

import os

import httpx
import torch

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.pytorch import deploy_pytorch_model

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()


class Scorer(torch.nn.Module):
    """Three features in, two scores out."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        with torch.no_grad():  # fixed weights, so the answer below is known
            self.linear.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0]]))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x)


def top_class(model, inputs):
    """Called with the module and one batch: the best score's index."""
    scores = model(torch.tensor(inputs, dtype=torch.float32))
    return scores.argmax(dim=1)


conn.register_application("torch-scores", "floats", default_output="-1", slo_micros=100_000)
# func=None: each input's answer is its output row, as a list of numbers.
deploy_pytorch_model(conn, "scorer", "1", "floats", None, Scorer())
conn.register_application("torch-top", "floats", default_output="-1", slo_micros=100_000)
deploy_pytorch_model(conn, "scorer-top", "1", "floats", top_class, Scorer())
conn.link_model_to_app("torch-scores", "scorer")
conn.link_model_to_app("torch-top", "scorer-top")
# Deploys and links return once a replica is live: both apps answer now.

query = f"http://{conn.get_query_addr()}"
print(httpx.post(f"{query}/torch-top/predict", json={"input": [1, 2, 3]}).text)
print(httpx.post(f"{query}/torch-scores/predict", json={"input": [1, 2, 3]}).text)
