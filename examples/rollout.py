"""Roll a new version out: deploy it beside the current one, send it a canary
share of the queries, then promote it.

python examples/rollout.py
"""

import os

import httpx

from clipper.admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper.deployers.python import deploy_python_closure

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()


url = f"http://{conn.get_query_addr()}/welcome/predict"
conn.register_application("welcome", "strings", default_output="", slo_micros=100_000)
deploy_python_closure(
    conn,
    "welcomer",
    "1",
    "strings",
    lambda names: [f"Hello, {n}" for n in names],
)
conn.link_model_to_app("welcome", "welcomer")

# Version 2 is deployed beside version 1, which stays current: nothing changes yet.
deploy_python_closure(
    conn,
    "welcomer",
    "2",
    "strings",
    lambda names: [f"Welcome, {n}!" for n in names],
    make_current=False,
)
print(conn.get_current_model_version("welcomer"))

# A canary: version 2 answers 10 % of the queries (a user, by uid, always gets
# the same version), and half of them once it has run for ten minutes.
rollout = conn.start_rollout("welcomer", "2", "canary", fraction=0.1, steps=[(600, 0.5)])
print(rollout["mode"], rollout["base_version"], "->", rollout["new_version"])
print([(r["model"], r["fraction_now"]) for r in conn.get_rollouts()])

# While it runs, what it compares holds still: no other version becomes current.
try:
    conn.set_model_version("welcomer", "2")
except ClipperException as exc:
    print(exc)

# Satisfied: promote version 2 (or stop_rollout("welcomer") to keep version 1).
ended = conn.stop_rollout("welcomer", promote=True)
print(ended["promoted"], ended["current_version"])
print(httpx.post(url, json={"input": "Ada"}).json()["output"])
