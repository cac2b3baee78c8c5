"""Deploy predict from mymodel.py (which imports helpers.py), then query it.

python examples/own_module/deploy.py
"""

import os

import httpx
from mymodel import predict

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.python import deploy_python_closure

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()

conn.register_application("reviews", "strings", default_output="unknown", slo_micros=100_000)
# mymodel and helpers travel with predict, by value: the server needs neither file.
deploy_python_closure(conn, "reviews-words", "1", "strings", predict)
conn.link_model_to_app("reviews", "reviews-words")  # returns once the replica is live

print(
    httpx.post(
        f"http://{conn.get_query_addr()}/reviews/predict",
        json={"input": "Great service, fast and good."},
    ).text
)
