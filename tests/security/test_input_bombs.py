"""Small or cheap requests that claimed a lot (security issue #20): against a
real server, each is refused with a 400 at little cost in time and memory, and
the server keeps answering.

- ``/v2`` (OIP): 81 bytes whose shape ``[300000, 0]`` made 300,000 queries and
  a 13.8 MB answer; ``[100000000, 0]`` would have taken about 6 GB; rows beyond
  ``max_batch_inputs``.
- ``/{app}/predict``: a 16 MiB ``input_batch`` of ``[0],[0],...`` (4 million
  inputs) blocked the event loop for seconds and took about 800 MB before
  the 400 "limit is N".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cloudpickle
import numpy as np
import orjson
import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper, manager_on_free_ports

pytestmark = pytest.mark.slow

# The containers cannot import the tests package: ship these models by value.
cloudpickle.register_pickle_by_value(models)

MiB = 1024 * 1024
MAX_BATCH_INPUTS = 10_000  # the server's default
# How much the server's resident memory may grow while it refuses a bomb: a
# few bytes of JSON cost next to nothing...
SMALL_BOMB_PEAK_MB = 50
# ...and the 16 MiB batch is counted on simdjson's tape, about 13 times the
# body for this densest of bodies (a value every two bytes), and freed at once;
# it took about 800 MB before.
BIG_BOMB_PEAK_MB = 400
RETAINED_MB = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    state = tmp_path_factory.mktemp("bombs")
    cm = manager_on_free_ports(
        state,
        # Room for a 16 MiB batch: the limit under test is the batch length.
        server_flags=["--max-body-bytes", str(32 * MiB)],
    )
    clipper = Clipper(Path(state), cm=cm).start()
    conn = clipper.conn
    conn.register_application("bomb-d", "doubles", "-1", 2_000_000)
    conn.register_application("bomb-j", "json", "-1", 2_000_000)
    deploy_python_closure(conn, "bomb-total", "1", "doubles", models.total)
    deploy_python_closure(conn, "bomb-describe", "1", "json", models.describe)
    conn.link_model_to_app("bomb-d", "bomb-total")
    conn.link_model_to_app("bomb-j", "bomb-describe")
    clipper.wait_live("bomb-total")
    clipper.wait_live("bomb-describe")
    yield clipper
    clipper.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextmanager
def memory_watch(pid: int) -> Iterator[dict[str, float]]:
    """The server's resident memory before, at its highest (sampled every few
    milliseconds) and after the block; ``growth``: the highest minus before."""
    got = {"before": rss_mb(pid)}
    peak = [got["before"]]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield got
    finally:
        done.set()
        sampler.join(10)
        got["after"] = rss_mb(pid)
        got["peak"] = max(peak[0], got["after"])
        got["growth"] = got["peak"] - got["before"]


def still_answers(server: Clipper) -> None:
    r = server.predict("bomb-d", {"input": [1.0, 2.0, 3.5]})
    assert r.status_code == 200 and r.json()["output"] == 6.5 and not r.json()["default"]
    doc = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 1], "data": [4, 5]}]}
    r = server.http.post(f"{server.query_url}/v2/models/bomb-j/infer", content=orjson.dumps(doc))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == ["json:list:[4]", "json:list:[5]"]


def infer(server: Clipper, app: str, body: bytes, **headers: str) -> tuple[int, dict, float]:
    start = time.monotonic()
    r = server.http.post(f"{server.query_url}/v2/models/{app}/infer", content=body, headers=headers)
    return r.status_code, r.json(), time.monotonic() - start


def test_the_server_answers_before_the_bombs(server):
    still_answers(server)


@pytest.mark.parametrize("app", ["bomb-j", "bomb-d"])
@pytest.mark.parametrize(
    "shape",
    [
        "[300000,0]",  # the 81-byte body: 300,000 empty rows
        "[100000000,0]",  # about 6 GB of empty rows
        "[1000000000000000000,1000000000000000000,0]",  # beyond what numpy can shape
        "[0,100000000]",
    ],
)
def test_zero_size_dimensions_claim_no_rows(server, app, shape):
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":%s,"data":[]}]}' % shape.encode()
    assert len(body) < 110
    pid = server.status()["pid"]
    with memory_watch(pid) as memory:
        status, answer, elapsed = infer(server, app, body)
    assert status == 400, answer
    assert list(answer) == ["error"] and "zero-size dimension" in answer["error"]
    assert elapsed < 2.0
    assert memory["growth"] < SMALL_BOMB_PEAK_MB, memory
    still_answers(server)


def test_oip_rows_beyond_max_batch_inputs(server):
    rows = MAX_BATCH_INPUTS + 1
    raw = np.zeros(rows, dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [rows, 1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    status, answer, _ = infer(
        server, "bomb-j", header + raw, **{"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400
    assert answer == {
        "error": f"input 'x' has {rows} queries (rows of shape [{rows}, 1]); "
        f"the limit is {MAX_BATCH_INPUTS}"
    }
    # At the limit it is served.
    doc = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [MAX_BATCH_INPUTS, 1]}]}
    doc["inputs"][0]["data"] = [1] * MAX_BATCH_INPUTS
    status, answer, _ = infer(server, "bomb-d", orjson.dumps(doc))
    assert status == 200 and answer["outputs"][0]["shape"] == [MAX_BATCH_INPUTS]
    still_answers(server)


def test_a_16_mib_input_batch_is_refused_fast_and_small(server):
    n = 16 * MiB // 4
    body = b'{"input_batch":[' + b",".join([b"[0]"] * n) + b"]}"
    assert len(body) > 16 * MiB
    pid = server.status()["pid"]
    with memory_watch(pid) as memory:
        start = time.monotonic()
        r = server.http.post(f"{server.query_url}/bomb-d/predict", content=body)
        elapsed = time.monotonic() - start
    assert r.status_code == 400, r.text
    assert r.json()["cause"] == f"input_batch has {n} inputs; the limit is {MAX_BATCH_INPUTS}"
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert memory["growth"] < BIG_BOMB_PEAK_MB, memory
    assert memory["after"] - memory["before"] < RETAINED_MB, memory
    still_answers(server)


def test_a_long_uid_is_refused(server):
    r = server.predict("bomb-d", {"input": [1.0], "uid": "u" * 257})
    assert r.status_code == 400 and "limit of 256 bytes" in r.json()["cause"]
    r = server.predict("bomb-d", {"input": [1.0], "uid": "u" * 256})
    assert r.status_code == 200
