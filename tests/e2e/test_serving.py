"""The serving core end to end: real server, real containers, real sockets."""

import base64
import concurrent.futures
import os
import signal

import pytest

from clipper.deployers.python import deploy_python_closure
from clipper.statedir import RPC_SECRET_FILE, read_secret
from tests.e2e import models
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

NO_MODELS = "No connected models found for query"


def deploy(
    clipper,
    app,
    model,
    func,
    input_type="doubles",
    slo=2_000_000,
    shape=None,
    replicas=1,
    default="-1",
):
    clipper.conn.register_application(app, input_type, default, slo, input_shape=shape)
    deploy_python_closure(clipper.conn, model, "1", input_type, func, num_replicas=replicas)
    clipper.conn.link_model_to_app(app, model)
    if replicas:
        clipper.wait_live(model, replicas)


@pytest.fixture(scope="module")
def summing(clipper):
    deploy(clipper, "sum", "sum-model", models.total, shape=[3])
    return "sum"


def test_single_query(clipper, summing):
    r = clipper.predict(summing, {"input": [1, 2.5, 3]})
    assert r.status_code == 200
    body = r.json()
    assert body["output"] == 6.5 and body["default"] is False
    assert isinstance(body["query_id"], int) and "default_explanation" not in body
    # A trailing slash names the same route.
    r = clipper.http.post(f"{clipper.query_url}/{summing}/predict/", json={"input": [1, 2, 3]})
    assert r.status_code == 200 and r.json()["output"] == 6


def test_batch_query_answers_each_input_in_order(clipper, summing):
    inputs = [[i, i, i] for i in range(20)]
    r = clipper.predict(summing, {"input_batch": inputs})
    assert r.status_code == 200
    preds = r.json()["batch_predictions"]
    assert [p["output"] for p in preds] == [3.0 * i for i in range(20)]
    assert all(p["default"] is False for p in preds)
    assert len({p["query_id"] for p in preds}) == 20


def test_concurrent_queries_are_batched_and_all_answered(clipper, summing):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: clipper.predict(summing, {"input": [i, 0, 0]}), range(200))
        )
    assert [r.json()["output"] for r in results] == [float(i) for i in range(200)]


@pytest.mark.parametrize(
    ("input_type", "value", "expected"),
    [
        ("integers", [1, 2, 3], "ndarray(1, 3):int32:6.0"),
        ("ints", [1, 2, 3], "ndarray(1, 3):int32:6.0"),
        ("floats", [0.5, 2], "ndarray(1, 2):float32:2.5"),
        ("doubles", [1, 2.25], "ndarray(1, 2):float64:3.25"),
        ("d", [[1, 2], [3, 4]], "ndarray(1, 2, 2):float64:10.0"),
        ("bytes", base64.b64encode(b"\x00\x01\xfe\xff").decode(), "bytes:4:0001feff"),
        ("strings", "hello", "str:HELLO"),
        ("s", "ünï", "str:ÜNÏ"),
        ("json", {"a": [1, None]}, "json:dict:{'a': [1, None]}"),
    ],
)
def test_every_input_type_reaches_the_model(clipper, input_type, value, expected):
    name = "t-" + input_type
    deploy(clipper, name, name, models.describe, input_type=input_type)
    r = clipper.predict(name, {"input": value})
    assert r.status_code == 200, r.text
    assert r.json()["output"] == expected


def test_app_without_a_model_answers_the_default(clipper):
    clipper.conn.register_application("lonely", "doubles", "nothing here", 100_000)
    r = clipper.predict("lonely", {"input": [1.0]})
    assert r.status_code == 200
    assert r.json()["default"] is True and r.json()["output"] == "nothing here"
    assert r.json()["default_explanation"] == NO_MODELS


def test_a_model_past_the_slo_yields_the_default_by_the_deadline(clipper):
    deploy(clipper, "slow", "sleepy", models.sleepy, slo=50_000, default="too slow")
    r = clipper.predict("slow", {"input_batch": [[1.0], [2.0]]})
    assert r.status_code == 200
    for pred in r.json()["batch_predictions"]:
        assert pred["default"] is True and pred["output"] == "too slow"
        assert "latency SLO" in pred["default_explanation"]
    assert r.elapsed.total_seconds() < 0.9  # answered at the SLO, not when the model finished


def test_a_model_error_yields_the_default_naming_it_and_the_container_keeps_serving(clipper):
    deploy(clipper, "picky", "picky", models.picky)
    bad = clipper.predict("picky", {"input": [-1.0]}).json()
    assert bad["default"] is True
    assert "ValueError" in bad["default_explanation"]
    assert "negative input" in bad["default_explanation"]
    good = clipper.predict("picky", {"input": [1.0]}).json()
    assert good == {"query_id": good["query_id"], "output": 1.0, "default": False}


def test_a_model_returning_the_wrong_number_of_outputs_is_an_error(clipper):
    deploy(clipper, "wrong", "wrong", models.wrong_count)
    body = clipper.predict("wrong", {"input": [1.0]}).json()
    assert body["default"] is True and "2 outputs for 1 inputs" in body["default_explanation"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"input": [1, 2, 3], "inptu": 1}', "inptu"),
        (b'{"input": ["a", "b", "c"]}', "string"),
        (b'{"input": [1, 2]}', "shape"),
        (b'{"input": [1, 2, NaN]}', "JSON"),
        (b'{"input_batch": []}', "input_batch"),
        (b'{"input_batch": [[1, 2, 3], [1, true, 3]]}', "input_batch[1]"),
        (b"[1, 2, 3]", "object"),
        (b"\xff\xfe", "JSON"),
    ],
)
def test_bad_queries_get_a_json_400_naming_the_problem(clipper, summing, body, fragment):
    r = clipper.http.post(f"{clipper.query_url}/{summing}/predict", content=body)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["cause"]
    assert r.json()["error"]


def test_unknown_app_and_route_are_json_404s(clipper):
    r = clipper.predict("nope", {"input": [1.0]})
    assert r.status_code == 404 and "nope" in r.json()["cause"]
    r = clipper.http.get(f"{clipper.query_url}/what/ever")
    assert r.status_code == 404 and r.json()["error"]


def test_oversize_body_is_a_413(clipper, summing):
    big = b'{"input": [' + b"1," * (9 * 1024 * 1024) + b"1]}"
    r = clipper.http.post(f"{clipper.query_url}/{summing}/predict", content=big)
    assert r.status_code == 413 and "limit" in r.json()["cause"]
    # The connection and the server are fine afterwards.
    assert clipper.predict(summing, {"input": [1, 1, 1]}).json()["output"] == 3.0


def test_health_and_ready(clipper):
    assert clipper.http.get(f"{clipper.query_url}/health").json() == {"status": "ok"}
    assert clipper.http.get(f"{clipper.query_url}/ready").status_code == 200


def test_a_killed_container_is_restarted_and_no_query_is_lost(clipper):
    deploy(clipper, "crashy", "crashy", models.slow_total)
    before = clipper.wait_live("crashy")[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(clipper.predict, "crashy", {"input": [float(i)]}) for i in range(40)]
        wait_for(lambda: sum(f.done() for f in futures) >= 2, what="some answers")
        os.kill(before["pid"], signal.SIGKILL)
        responses = [f.result() for f in futures]
    # Every query got a 200: the model's answer, or the default with a reason.
    assert all(r.status_code == 200 for r in responses)
    for r in responses:
        body = r.json()
        assert body["default"] is False or body["default_explanation"]
    after = wait_for(
        lambda: [r for r in clipper.live_replicas("crashy") if r["pid"] != before["pid"]],
        what="a restarted replica",
    )[0]
    assert after["restarts"] >= 1
    assert clipper.predict("crashy", {"input": [2.0]}).json()["output"] == 2.0


def test_a_lost_replicas_batch_is_retried_on_another(clipper):
    deploy(clipper, "twins", "twins", models.slow_total, replicas=2)
    replicas = clipper.wait_live("twins", 2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(clipper.predict, "twins", {"input": [float(i)]}) for i in (1, 2)]
        # Both replicas are busy with one query each; kill one of them.
        wait_for(lambda: _in_flight(clipper, "twins:1") == 2, what="two batches in flight")
        os.kill(replicas[0]["pid"], signal.SIGKILL)
        outputs = sorted(f.result().json()["output"] for f in futures)
    assert outputs == [1.0, 2.0]


def _in_flight(clipper, model):
    stats = [m for m in clipper.status()["models"] if m["model"] == model]
    return stats[0]["in_flight_batches"] if stats else 0


def test_malformed_rpc_messages_do_not_harm_the_frontend(clipper, summing):
    import msgpack
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{clipper.cm.clipper_rpc_port}")
    try:
        for frames in (
            [b"\xc1\xc1"],
            [msgpack.packb({"v": 42, "type": "register"})],
            [msgpack.packb({"v": 1, "type": "result", "id": 1, "ok": True}), b"junk"],
            [
                msgpack.packb(
                    {
                        "v": 1,
                        "type": "register",
                        "model_name": "ghost",
                        "model_version": "1",
                        "input_type": "doubles",
                        # The right secret: the unknown model is what is refused.
                        "secret": read_secret(clipper.cm.state_path, RPC_SECRET_FILE),
                    }
                )
            ],
        ):
            sock.send_multipart(frames)
        # The unknown model is refused with a reason.
        assert sock.poll(10_000)
        reply = msgpack.unpackb(sock.recv_multipart()[0])
        assert reply["type"] == "rejected" and "ghost" in reply["reason"]
    finally:
        sock.close()
        ctx.term()
    assert clipper.predict(summing, {"input": [1, 2, 3]}).json()["output"] == 6.0


def test_admin_errors_are_json_400s(clipper):
    r = clipper.admin(
        "add_app",
        {
            "name": "Bad Name",
            "input_type": "doubles",
            "default_output": "x",
            "latency_slo_micros": 1000,
        },
    )
    assert r.status_code == 400 and "Bad Name" in r.json()["cause"]
    r = clipper.admin(
        "add_app",
        {"name": "ok", "input_type": "tensors", "default_output": "x", "latency_slo_micros": 1000},
    )
    assert r.status_code == 400 and "tensors" in r.json()["cause"]
    r = clipper.admin("add_model_links", {"app_name": "sum", "model_names": ["picky"]})
    assert r.status_code == 400 and "single" in r.json()["cause"]
