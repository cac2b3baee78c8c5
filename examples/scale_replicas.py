"""Run a model on several replicas; let another scale with its traffic.

python examples/scale_replicas.py
"""

import os
import time

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


def live_replicas(model, version="1"):
    return [
        r["replica"]
        for r in conn.get_all_model_replicas()
        if (r["model_name"], r["model_version"]) == (model, version) and r["live"]
    ]


def wait_for_replicas(model, count):
    deadline = time.monotonic() + 60
    while len(live_replicas(model)) != count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{model} did not reach {count} replicas; see `clipper logs`")
        time.sleep(0.1)


def biggest(xs):
    return [float(x.max()) for x in xs]


# A fixed number of replicas: 2 at deploy time, then 3.
conn.register_application("busy", "doubles", default_output="-1", slo_micros=100_000)
deploy_python_closure(conn, "busy-model", "1", "doubles", biggest, num_replicas=2)
conn.link_model_to_app("busy", "busy-model")
wait_for_replicas("busy-model", 2)
conn.set_num_replicas("busy-model", 3)  # the current version; or name one: version="1"
wait_for_replicas("busy-model", 3)
print(conn.get_num_replicas("busy-model"), sorted(live_replicas("busy-model")))

# Autoscaled: no replica while idle, up to 4 under load, down after 30 s idle.
conn.register_application("bursty", "doubles", default_output="-1", slo_micros=100_000)
autoscale = {"min_replicas": 0, "max_replicas": 4, "scale_down_after_s": 30}
deploy_python_closure(conn, "bursty-model", "1", "doubles", biggest, options=autoscale)
conn.link_model_to_app("bursty", "bursty-model")

url = f"http://{conn.get_query_addr()}/bursty/predict"
print(httpx.post(url, json={"input": [1, 5, 2]}).text)  # starts a replica: a cold start
wait_for_replicas("bursty-model", 1)
print(httpx.post(url, json={"input": [1, 5, 2]}).text)
