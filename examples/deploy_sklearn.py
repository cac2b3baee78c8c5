"""Train a scikit-learn pipeline and deploy it, then classify a digit image.

python examples/deploy_sklearn.py
"""

import os

import httpx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.sklearn import deploy_sklearn_model

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()

# 8x8 images of digits, 64 numbers each; the last 100 are held out.
digits = load_digits()
x, y = digits.data, digits.target
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
model.fit(x[:-100], y[:-100])

conn.register_application(
    name="digits-lr",
    input_type="doubles",
    default_output="-1",
    slo_micros=100_000,
    input_shape=[64],  # a query of any other shape gets a 400
)
# method="predict_proba" would answer with the class probabilities instead.
deploy_sklearn_model(conn, "digits-logreg", "1", "doubles", model, method="predict")
conn.link_model_to_app("digits-lr", "digits-logreg")  # returns once the replica is live

print("true label:", y[-1])
image = x[-1].tolist()
print(
    httpx.post(
        f"http://{conn.get_query_addr()}/digits-lr/predict",
        json={"input": image},
    ).text
)
