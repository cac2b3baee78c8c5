"""Your first model: count the words of each text sent to the app "words".

python examples/getting_started.py
"""

import os

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.deployers.python import deploy_python_closure

# The server `make run` started, unless the CLIPPER_* variables say otherwise.
query_port = int(os.environ.get("CLIPPER_QUERY_PORT", "1337"))
management_port = int(os.environ.get("CLIPPER_MANAGEMENT_PORT", "1338"))
conn = ClipperConnection(
    LocalContainerManager(clipper_query_port=query_port, clipper_management_port=management_port)
)
conn.connect()


def count_words(texts):
    """A batch of strings in, one output per string out."""
    return [len(text.split()) for text in texts]


# exist_ok=True: what already exists, defined the same way, is kept as it is,
# so the script can run again (after a failure halfway, say).
# An app: a REST endpoint, /words/predict, with a latency objective of 50 ms
# and the answer to give when no model answers in time.
conn.register_application("words", "strings", default_output="-1", slo_micros=50_000, exist_ok=True)
# A model: the function, shipped to the server and run in a process of its own.
# The deploy returns once that process is live (wait=True, the default).
deploy_python_closure(conn, "word-counter", "1", "strings", count_words, exist_ok=True)
# A link: the app's queries go to the model.
conn.link_model_to_app("words", "word-counter", exist_ok=True)
print("ready: POST", f"http://{conn.get_query_addr()}/words/predict")
