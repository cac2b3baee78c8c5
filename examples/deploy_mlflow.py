"""Save a scikit-learn model in MLflow's format, deploy the folder, query it.

python examples/deploy_mlflow.py
"""

import os
import tempfile
import warnings

import httpx
import mlflow.sklearn
import pandas as pd
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.mlflow import deploy_mlflow_model

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()

# A model as a training job hands it over: an MLflow model folder, with a
# signature (four double columns) and a requirements.txt.
iris = load_iris(as_frame=True)
x, y = iris.data, iris.target
x.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
model = LogisticRegression(max_iter=1000).fit(x, y)
folder = os.path.join(tempfile.mkdtemp(), "iris-model")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # MLflow's notes on the environment it records
    mlflow.sklearn.save_model(model, folder, signature=infer_signature(x, model.predict(x)))

# install_requirements=False: the server's environment has mlflow and
# scikit-learn. The default installs the folder's requirements.txt in an
# environment of the model's own (slow the first time).
input_type = deploy_mlflow_model(conn, "iris-mlflow", "1", folder, install_requirements=False)
print("input type:", input_type)
conn.register_application("iris", input_type, default_output="-1", slo_micros=2_000_000)
conn.link_model_to_app("iris", "iris-mlflow")  # returns once the replica is live

flower = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=x.columns)
print("mlflow here:", model.predict(flower).tolist())
print(
    httpx.post(
        f"http://{conn.get_query_addr()}/iris/predict",
        json={"input": [5.1, 3.5, 1.4, 0.2]},
    ).text
)
