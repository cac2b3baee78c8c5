"""Deploy two versions of a model, roll back, pin a version per query.

python examples/rollback.py
"""

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


url = f"http://{conn.get_query_addr()}/greet/predict"
conn.register_application("greet", "strings", default_output="", slo_micros=100_000)

deploy_python_closure(
    conn,
    "greeter",
    "1",
    "strings",
    lambda names: [f"Hello, {n}" for n in names],
)
conn.link_model_to_app("greet", "greeter")  # links name the model, not a version
print(httpx.post(url, json={"input": "Ada"}).json()["output"])  # Hello, Ada

# A new version becomes the current one as soon as it is deployed (and, as every
# deploy, the call returns once a replica of it is live).
deploy_python_closure(
    conn,
    "greeter",
    "2",
    "strings",
    lambda names: [f"HELLO {n}!" for n in names],
)
print(
    conn.get_current_model_version("greeter"),
    httpx.post(url, json={"input": "Ada"}).json()["output"],
)

# Roll back: version 1's replicas never stopped, so this takes effect at once.
conn.set_model_version("greeter", "1")
print(
    conn.get_current_model_version("greeter"),
    httpx.post(url, json={"input": "Ada"}).json()["output"],
)

# One query may ask for a version (apps with one linked model only).
print(httpx.post(url, json={"input": "Ada", "version": "2"}).text)

# Stop the replicas of all versions but the current one; forget version 2.
conn.stop_inactive_model_versions(["greeter"])
conn.delete_versioned_model("greeter", "2")
print([m for m in conn.get_all_models() if m.startswith("greeter:")])
