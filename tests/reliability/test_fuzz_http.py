"""Bad input everywhere: Hypothesis throws malformed requests at every HTTP route.

One server for the module, with an app (and a model) for each input type.
For ``/{app}/predict``, ``/{app}/update``, ``/admin/*`` and ``/v2/...`` the
answer must be a JSON 4xx error (or a 200 for a request that happens to be
valid): never a 5xx, never a dropped connection, and a refused management
command must change nothing.

Bodies are built as raw bytes, so they can hold what no JSON encoder
writes: NaN and Infinity literals, numbers beyond any float or integer
type, nesting deeper than parsers allow, broken UTF-8, truncated text.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from clipper.deployers.python import deploy_python_closure
from clipper.management.api import FIELDS
from tests.helpers import AdminAuth, Clipper
from tests.reliability import models

pytestmark = pytest.mark.slow

FUZZ = settings(
    deadline=None,
    max_examples=120,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # examples are cheap to find again; keep no state between runs
)

# One app per input type; each policy appears once, so /update reaches them all.
APPS: dict[str, dict[str, Any]] = {
    "fz-doubles": {"input_type": "doubles", "shape": [3], "policy": "single"},
    "fz-floats": {"input_type": "floats", "shape": None, "policy": "epsilon_greedy"},
    "fz-ints": {"input_type": "integers", "shape": None, "policy": "exp3"},
    "fz-bytes": {"input_type": "bytes", "shape": None, "policy": "ucb1"},
    "fz-strings": {"input_type": "strings", "shape": None, "policy": "thompson"},
    "fz-json": {"input_type": "json", "shape": None, "policy": "exp4"},
}
# Management names a fuzzed command may hit (and change, when it is valid):
# never the apps and models above, so their queries are not disturbed.
ADMIN_APP = "adm-app"
ADMIN_MODEL = "adm-ext"


@pytest.fixture(scope="module")
def clipper(tmp_path_factory) -> Iterator[Clipper]:
    server = Clipper(tmp_path_factory.mktemp("fuzz-http")).start()
    try:
        for app, spec in APPS.items():
            server.conn.register_application(
                app,
                spec["input_type"],
                "fuzz default",
                5_000_000,
                input_shape=spec["shape"],
                selection_policy=spec["policy"],
            )
            deploy_python_closure(server.conn, app, "1", spec["input_type"], models.describe)
            server.conn.link_model_to_app(app, app)
        for app in APPS:
            server.wait_live(app)
        server.conn.register_application(ADMIN_APP, "doubles", "x", 100_000)
        server.conn.register_model(ADMIN_MODEL, "1", "doubles")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(clipper) -> Iterator[httpx.Client]:
    # With the admin token on the management port: the fuzzer probes what an
    # authorised caller can break (the security suite attacks without it).
    with httpx.Client(timeout=30.0, auth=AdminAuth(clipper.admin_url, clipper.token)) as client:
        yield client


# -- building bodies ----------------------------------------------------------------


class Raw(str):
    """A piece of JSON text written as is (a literal no encoder would produce)."""


def render(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + render(v) for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


NUMBER_LITERALS = st.sampled_from(
    [
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "inf",
        "1e400",
        "-1e400",
        "1e-400",
        "4e38",
        "3.5e38",
        "-3.4028235677973366e38",
        "2147483648",
        "-2147483649",
        "9223372036854775808",
        "18446744073709551616",
        "1" + "0" * 400,
        "-0",
        "0e0",
        "1E+2",
        "00",
        "01",
        ".5",
        "+1",
        "1.",
        "0x10",
        "1_000",
        "true",
        "false",
        "null",
        '"1"',
        "[]",
        "{}",
    ]
).map(Raw)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-(10**300), 10**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    NUMBER_LITERALS,
)
TEXT = st.text(max_size=30)
SMALL_NUMBERS = st.integers(-100, 100) | st.floats(-1e3, 1e3)
JSON_LEAF = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=24,
)


@st.composite
def deep(draw: st.DrawFn, min_depth: int = 1, max_depth: int = 1500) -> Raw:
    """Arrays or objects nested ``min_depth`` to ``max_depth`` deep (parsers stop at 1024)."""
    depth = draw(st.integers(min_depth, max_depth))
    if draw(st.booleans()):
        return Raw("[" * depth + render(draw(JSON_LEAF)) + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


@st.composite
def huge_array(draw: st.DrawFn) -> Raw:
    """Up to 200 000 elements (about 1 MB), inside the body limit."""
    n = draw(st.integers(1_000, 200_000))
    item = draw(st.sampled_from(["1", "1.5", "-2147483648", "1e300", '"x"', "null", "[1]"]))
    return Raw("[" + ",".join([item] * n) + "]")


def numeric_arrays(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    flat = st.lists(elements, max_size=8)
    return flat | st.lists(flat, max_size=4) | st.lists(st.lists(flat, max_size=3), max_size=3)


BASE64 = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),  # valid
    st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode().rstrip("=")),
    st.text(alphabet="ABCDabcd0123+/=-_ \n\t!é", max_size=40),
    TEXT,
)


def inputs_for(input_type: str) -> st.SearchStrategy[Any]:
    """Inputs that may or may not suit ``input_type``: mostly near misses."""
    if input_type in ("doubles", "floats", "integers"):
        typed = st.one_of(
            numeric_arrays(NUMBERS),
            numeric_arrays(st.integers(-(2**31), 2**31 - 1)),
            st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),  # fits the shape
            numeric_arrays(JSON_LEAF),
        )
    elif input_type == "bytes":
        typed = BASE64
    elif input_type == "strings":
        typed = st.one_of(TEXT, st.text(min_size=1000, max_size=5000))
    else:
        typed = JSON
    # A json app's inputs stay within 255 levels here: deeper ones are bug 6 of
    # docs/reliability.md, tested on their own (test_json_input_nested_deeper_than_255...).
    nested = deep() if input_type != "json" else deep(1, 255) | deep(1025, 1500)
    return st.one_of(typed, JSON, nested, huge_array())


@st.composite
def predict_body(draw: st.DrawFn, input_type: str) -> Any:
    x = inputs_for(input_type)
    shape = draw(st.sampled_from(["input", "batch", "both", "neither", "not-an-object"]))
    if shape == "not-an-object":
        return draw(JSON)
    body: dict[str, Any] = {}
    if shape in ("input", "both"):
        body["input"] = draw(x)
    if shape in ("batch", "both"):
        body["input_batch"] = draw(st.one_of(st.lists(x, max_size=5), JSON))
    extra = draw(st.sampled_from([None, "version", "uid", "other"]))
    if extra == "version":
        body["version"] = draw(st.one_of(st.just("1"), st.just("9"), JSON))
    elif extra == "uid":
        body["uid"] = draw(JSON)
    elif extra == "other":
        body[draw(TEXT)] = draw(JSON)
    return body


@st.composite
def update_body(draw: st.DrawFn, input_type: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    body = {
        "uid": draw(st.one_of(st.integers(-5, 5), st.text(max_size=5), JSON)),
        "input": draw(inputs_for(input_type)),
        "label": draw(st.one_of(JSON, deep())),
    }
    for key in draw(st.lists(st.sampled_from(["uid", "input", "label"]), max_size=2)):
        body.pop(key, None)
    if draw(st.booleans()):
        body[draw(TEXT)] = draw(JSON)
    return body


CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/msgpack",
        "image/png",
        "*/*",
        ";;;",
        "",
    ]
)


@st.composite
def to_bytes(draw: st.DrawFn, body: st.SearchStrategy[Any]) -> bytes:
    """Render a body, then maybe break it: truncate, corrupt UTF-8, or replace it."""
    how = draw(st.sampled_from(["as is"] * 6 + ["truncated", "bad utf-8", "binary", "ascii"]))
    if how == "binary":
        return draw(st.binary(max_size=300))
    text = render(draw(body))
    if how == "ascii":
        return text.encode("ascii", "backslashreplace")
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8
    if how == "truncated" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "bad utf-8":
        at = draw(st.integers(0, len(data)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        return data[:at] + bad + data[at:]
    return data


# -- checking answers ------------------------------------------------------------------


def parse_json_answer(r: httpx.Response) -> Any:
    """The JSON of an answer (the JSON header of a binary /v2 answer)."""
    if r.headers.get("content-type") == "application/octet-stream":
        n = int(r.headers["inference-header-content-length"])
        return json.loads(r.content[:n])
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    return r.json()


def check_answer(r: httpx.Response, *, clipper_errors: bool = True) -> Any:
    """No 5xx; a JSON body; a 4xx names its problem. Returns the body."""
    if currently_in_test_context():
        event(f"HTTP {r.status_code}")
    assert r.status_code < 500, (r.status_code, r.text[:500])
    body = parse_json_answer(r)
    if r.status_code >= 400:
        assert isinstance(body, dict) and body.get("error"), body
        if clipper_errors:
            assert isinstance(body.get("cause"), str), body
    return body


def check_prediction(p: Any) -> None:
    assert isinstance(p, dict) and isinstance(p["query_id"], int)
    assert "output" in p and isinstance(p["default"], bool)
    if p["default"]:
        assert p["default_explanation"]


def post(http: httpx.Client, url: str, data: bytes, content_type: str | None) -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    return http.post(url, content=data, headers=headers)


# -- the query frontend ----------------------------------------------------------------


@pytest.mark.parametrize("app", list(APPS))
@FUZZ
@given(data=st.data(), content_type=CONTENT_TYPES)
def test_predict_refuses_bad_input_with_a_json_400(clipper, http, app, data, content_type):
    body = data.draw(to_bytes(predict_body(APPS[app]["input_type"])), label="body")
    r = post(http, f"{clipper.query_url}/{app}/predict", body, content_type)
    answer = check_answer(r)
    assert r.status_code in (200, 400), (r.status_code, answer)
    if r.status_code == 200:
        for p in answer.get("batch_predictions", [answer]):
            check_prediction(p)


@pytest.mark.parametrize("app", list(APPS))
@FUZZ
@given(data=st.data(), content_type=CONTENT_TYPES)
def test_update_refuses_bad_feedback_with_a_json_400(clipper, http, app, data, content_type):
    body = data.draw(to_bytes(update_body(APPS[app]["input_type"])), label="body")
    r = post(http, f"{clipper.query_url}/{app}/update", body, content_type)
    answer = check_answer(r)
    assert r.status_code in (200, 400), (r.status_code, answer)
    if r.status_code == 200:
        assert isinstance(answer["accepted"], bool)


PATH_SEGMENTS = st.one_of(
    st.sampled_from(
        [
            *APPS,
            "nope",
            "v2",
            "admin",
            "health",
            "metrics",
            "ready",
            "predict",
            "update",
            "..",
            ".",
            "",
            "%00",
            "%ff",
            "a" * 300,
        ]
    ),
    st.text(max_size=12).map(lambda t: quote(t, safe="")),
)


@FUZZ
@given(
    segments=st.lists(PATH_SEGMENTS, max_size=4),
    last=st.sampled_from(["predict", "update", "", "infer"]),
    method=st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    data=st.binary(max_size=50),
)
def test_any_path_and_method_on_the_query_port_is_a_json_answer(
    clipper, http, segments, last, method, data
):
    path = "/" + "/".join([*segments, last])
    r = http.request(method, f"{clipper.query_url}{path}", content=data)
    event(f"HTTP {r.status_code}")
    # Only /ready (and /v2's ready routes) may answer 503, by design.
    assert r.status_code < 500 or (r.status_code == 503 and "ready" in path), r.text[:300]
    if path.rstrip("/") != "/metrics" and not (r.status_code == 200 and method == "GET"):
        body = parse_json_answer(r)
        if r.status_code >= 400:
            assert isinstance(body, dict) and body.get("error"), body


VALID_INPUTS = {
    "doubles": st.lists(
        st.floats(-1e300, 1e300) | st.integers(-(2**53), 2**53), min_size=3, max_size=3
    ),
    "floats": st.lists(
        st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=10
    ),
    "integers": st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=10),
    "bytes": st.binary(max_size=100).map(lambda b: base64.b64encode(b).decode()),
    "strings": st.text(st.characters(exclude_categories=["Cs"]), max_size=100),
    "json": st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(st.characters(exclude_categories=["Cs"]), max_size=10),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.text(st.characters(exclude_categories=["Cs"]), max_size=5), inner, max_size=4
            )
        ),
        max_leaves=20,
    ),
}


@pytest.mark.parametrize("app", list(APPS))
@settings(FUZZ, max_examples=40)
@given(data=st.data(), batch=st.booleans())
def test_valid_queries_are_answered_by_the_model(clipper, http, app, data, batch):
    inputs = data.draw(st.lists(VALID_INPUTS[APPS[app]["input_type"]], min_size=1, max_size=4))
    body = {"input_batch": inputs} if batch else {"input": inputs[0]}
    r = http.post(f"{clipper.query_url}/{app}/predict", content=render(body).encode())
    answer = check_answer(r)
    assert r.status_code == 200, answer
    predictions = answer["batch_predictions"] if batch else [answer]
    for p in predictions:
        check_prediction(p)
        assert p["default"] is False, p


def test_a_body_over_the_limit_is_a_413_and_the_connection_survives(clipper, http):
    big = b'{"input": [' + b"1," * (9 * 1024 * 1024) + b"1]}"  # 18 MiB > 16 MiB
    for route in ("fz-ints/predict", "fz-ints/update", "v2/models/fz-ints/infer"):
        r = http.post(f"{clipper.query_url}/{route}", content=big)
        assert r.status_code == 413, r.text
        assert r.json()["error"]
    r = http.post(f"{clipper.query_url}/fz-ints/predict", json={"input": [1, 2]})
    assert r.status_code == 200 and r.json()["default"] is False


@pytest.mark.parametrize("route", ["predict", "update"])
@pytest.mark.parametrize("depth", [256, 600, 1000])
def test_json_input_nested_deeper_than_255_is_answered_or_refused(clipper, http, route, depth):
    nested = "[" * depth + "1" + "]" * depth
    body = (
        '{"input": ' + nested + "}"
        if route == "predict"
        else '{"uid": 1, "label": 1, "input": ' + nested + "}"
    )
    r = http.post(f"{clipper.query_url}/fz-json/{route}", content=body.encode())
    check_answer(r)
    assert r.status_code in (200, 400)


# -- the management frontend -------------------------------------------------------------

# Every POST route the server has, with its fields (docs/management-api.md lists
# them; tests/docs checks that the page and the server agree).
ADMIN_ROUTES = FIELDS

NAMES = st.one_of(
    st.sampled_from(
        [
            ADMIN_APP,
            ADMIN_MODEL,
            "1",
            "v2",
            "admin",
            "a" * 63,
            "a" * 64,
            "A",
            "-a",
            "a-",
            "a..b",
            "ä",
            "a/b",
            "../x",
            "",
            " ",
            "a\x00b",
        ]
    ),
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}[a-z0-9]", fullmatch=True),
    TEXT,
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "input_type": st.sampled_from(
        ["doubles", "d", "ints", "bytes", "strings", "json", "tensors", "", "DOUBLES"]
    )
    | JSON,
    "latency_slo_micros": st.integers(-10, 10**12) | NUMBERS | JSON,
    "input_shape": st.lists(st.integers(-2, 2**40), max_size=4) | JSON,
    "selection_policy": st.sampled_from(
        ["single", "exp3", "exp4", "epsilon_greedy", "ucb1", "thompson", "nope"]
    )
    | JSON,
    "policy_params": st.dictionaries(
        st.sampled_from(
            ["eta", "epsilon", "gamma", "loss", "loss_scale", "min_confidence", "c", "prior", "x"]
        ),
        JSON,
        max_size=3,
    )
    | JSON,
    "options": st.dictionaries(
        st.sampled_from(
            [
                "cache",
                "overload",
                "batching",
                "max_batch_delay_ms",
                "queue_capacity",
                "memory_limit_mb",
                "api_keys",
                "x",
            ]
        ),
        JSON,
        max_size=3,
    )
    | JSON,
    "num_replicas": st.integers(-3, 100) | JSON,
    "batch_size": st.integers(-3, 10**6) | JSON,
    "lines": st.integers(-3, 10**6) | JSON,
    "verbose": st.booleans() | JSON,
    "model_names": st.lists(NAMES, max_size=3) | JSON,
    "labels": st.lists(TEXT, max_size=3) | JSON,
    "container_name": st.sampled_from(["python-closure", "external", ""]) | JSON,
    "model_data_path": st.sampled_from(
        ["", "/etc/passwd", "/nonexistent/model.pkl", "../../x", "a\x00b"]
    )
    | JSON,
    # Never a list of requirements next to decodable model data (that would run
    # pip); never decodable data that unpickles (0xff is no pickle opcode).
    "pkgs_to_install": st.sampled_from([[], [""], [1], "numpy", [None]]) | JSON,
    "model_data": st.one_of(
        st.binary(max_size=40).map(lambda b: base64.b64encode(b"\xff" + b).decode()), BASE64, JSON
    ),
    "uid": JSON,
    "replica": st.sampled_from(["../server", "fz-ints-1-0", "..", "a" * 300]) | NAMES,
}
for _field in ("name", "app_name", "model_name", "model_version", "replica_id", "default_output"):
    FIELD_VALUES[_field] = NAMES | JSON


@st.composite
def admin_request(draw: st.DrawFn) -> tuple[str, str, bytes, str | None]:
    route = draw(st.sampled_from([*ADMIN_ROUTES, "nope", "ping", "status", "get_all_apps"]))
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE"]))
    fields = ADMIN_ROUTES.get(route, ("name",))
    if draw(st.integers(0, 7)) == 0:
        body: Any = draw(JSON)
    else:
        chosen = (  # a route without fields (get_rollouts) gets an empty object
            draw(st.lists(st.sampled_from(fields), unique=True, max_size=len(fields)))
            if fields
            else []
        )
        body = {f: draw(FIELD_VALUES.get(f, JSON)) for f in chosen}
        if draw(st.integers(0, 4)) == 0:
            body[draw(TEXT)] = draw(JSON)
        # Keep pip away: requirements only without model data.
        if body.get("pkgs_to_install") and "model_data" in body:
            del body["pkgs_to_install"]
        # The fuzzed server must stay small: no scaling to dozens of processes.
        if isinstance(body.get("num_replicas"), int) and not isinstance(body["num_replicas"], bool):
            body["num_replicas"] = min(body["num_replicas"], 1)
    data = draw(to_bytes(st.just(body)))
    return route, method, data, draw(CONTENT_TYPES)


def admin_state(clipper: Clipper) -> tuple[Any, Any]:
    apps = clipper.admin("get_all_applications", {"verbose": True})
    models_ = clipper.admin("get_all_models", {"verbose": True})
    assert apps.status_code == 200 and models_.status_code == 200
    return apps.json(), models_.json()


@settings(FUZZ, max_examples=300)
@given(request=admin_request())
def test_admin_routes_refuse_bad_commands_and_change_nothing(clipper, http, request):
    route, method, data, content_type = request
    before = admin_state(clipper)
    headers = {"content-type": content_type} if content_type is not None else {}
    r = http.request(method, f"{clipper.admin_url}/admin/{route}", content=data, headers=headers)
    check_answer(r)
    if 400 <= r.status_code < 500:
        assert admin_state(clipper) == before, (route, data[:300], r.text)


def test_the_fuzzed_commands_left_the_query_apps_alone(clipper):
    for app in APPS:
        assert clipper.conn.get_linked_models(app) == [app]
    for app in APPS:
        assert clipper.live_replicas(app)


# -- the Open Inference Protocol (/v2) ---------------------------------------------------

DATATYPES = st.sampled_from(
    [
        "BOOL",
        "UINT8",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
        "BF16",
        "fp32",
        "",
        "STRING",
    ]
)
TENSOR = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x"]) | JSON,
        "datatype": DATATYPES | JSON,
        "shape": st.lists(st.integers(-2, 2**40), max_size=4) | JSON,
        "data": numeric_arrays(NUMBERS) | st.lists(TEXT, max_size=4) | JSON | huge_array(),
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "content_type", "x"]),
            JSON,
            max_size=2,
        )
        | JSON,
    },
)
INFER = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON,
        "inputs": st.lists(TENSOR, max_size=3) | JSON,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": JSON,
                    "parameters": st.dictionaries(
                        st.sampled_from(["binary_data", "x"]), JSON, max_size=2
                    )
                    | JSON,
                },
            ),
            max_size=2,
        )
        | JSON,
        "parameters": st.dictionaries(
            st.sampled_from(["timeout", "uid", "binary_data_output", "x"]), JSON, max_size=3
        )
        | JSON,
    },
)
V2_OTHER_PATHS = st.sampled_from(
    [
        "/v2",
        "/v2/",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/health/x",
        "/v2/models",
        "/v2/models/fz-doubles",
        "/v2/models/fz-ints/ready",
        "/v2/models/nope",
        "/v2/models/fz-ints/versions/1",
        "/v2/models/fz-ints/versions/9/ready",
        "/v2/models/fz-doubles/versions//infer",
        "/v2/models//infer",
        "/v2//models/x",
    ]
)
INFER_PATHS = st.builds(
    lambda app, v: f"/v2/models/{app}{v}/infer",
    st.sampled_from([*APPS, *APPS, "nope"]),
    st.sampled_from([""] * 6 + ["/versions/1", "/versions/2", "/versions/%00"]),
)
NUMPY_TYPES = {
    "INT32": "<i4",
    "INT64": "<i8",
    "FP32": "<f4",
    "FP64": "<f8",
    "UINT8": "u1",
    "BOOL": "?",
    "FP16": "<f2",
    "INT8": "i1",
}


@st.composite
def plausible_infer(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    """An /infer request near a valid one: a tensor whose shape, datatype and data
    mostly agree, in JSON or in the binary extension, maybe compressed."""
    import gzip
    import struct
    import zlib

    path = draw(INFER_PATHS)
    app = path.split("/")[3]
    expected = {"doubles": "FP64", "floats": "FP32", "integers": "INT32"}.get(
        APPS[app]["input_type"] if app in APPS else "", "BYTES"
    )
    n, k = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    if app == "fz-doubles" and draw(st.booleans()):
        k = 3  # the app's input shape
    shape = draw(st.one_of(st.just([n, k]), st.just([n]), st.lists(st.integers(-1, 5), max_size=3)))
    datatype = draw(st.just(expected) | DATATYPES)
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "input", "x"])),
        "datatype": datatype,
        "shape": shape,
    }
    count = draw(st.sampled_from([n * k, n * k, n, n * k + 1]))
    binary = b""
    if draw(st.integers(0, 3)) == 0:  # the binary tensor extension
        if datatype in NUMPY_TYPES and draw(st.booleans()):
            binary = np.ones(count, dtype=NUMPY_TYPES[datatype]).tobytes()
        elif datatype == "BYTES" and draw(st.booleans()):
            items = draw(st.lists(st.binary(max_size=8), min_size=count, max_size=count))
            binary = b"".join(struct.pack("<I", len(b)) + b for b in items)
        else:
            binary = draw(st.binary(max_size=64))
        size = draw(st.sampled_from([len(binary), len(binary), len(binary) + 1, -1, 0]))
        tensor["parameters"] = {"binary_data_size": size}
    elif datatype == "BYTES":
        tensor["data"] = draw(st.lists(TEXT, min_size=count, max_size=count) | JSON)
    else:
        number = draw(st.sampled_from([SMALL_NUMBERS] * 3 + [NUMBERS]))
        tensor["data"] = draw(
            st.lists(number, min_size=count, max_size=count)
            | st.lists(st.lists(number, min_size=k, max_size=k), min_size=n, max_size=n)
        )
    doc: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        doc["outputs"] = [
            {
                "name": draw(st.sampled_from(["output", "y"])),
                "parameters": {"binary_data": draw(st.booleans())},
            }
        ]
    if draw(st.integers(0, 3)) == 0:
        doc["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(["timeout", "uid", "binary_data_output", "x"]),
                st.one_of(st.integers(-5, 10**9), st.booleans(), TEXT, JSON),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc["id"] = draw(TEXT | JSON)
    header = render(doc).encode("utf-8", "surrogatepass")
    headers: dict[str, str] = {}
    body = header + binary
    if binary or draw(st.integers(0, 5)) == 0:
        headers["inference-header-content-length"] = str(
            draw(st.sampled_from([len(header), len(header), len(header) - 1, len(body) + 1]))
        )
    how = draw(st.sampled_from(["plain"] * 6 + ["gzip", "deflate", "bad gzip"]))
    if how == "gzip":
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    elif how == "deflate":
        body = zlib.compress(body)
        headers["content-encoding"] = "deflate"
    elif how == "bad gzip":
        body = gzip.compress(body)[: draw(st.integers(0, 30))] + draw(st.binary(max_size=20))
        headers["content-encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "x"]))
    return path, headers, body


V2_HEADERS = st.fixed_dictionaries(  # the headers of a random /infer request
    {},
    optional={
        "content-type": CONTENT_TYPES.filter(lambda c: c is not None),
        "inference-header-content-length": st.integers(-5, 10**6).map(str)
        | st.sampled_from(["", "x", "1e3", "0x10", "1_2", "99999999999999999999999"]),
        "content-encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip"]),
    },
)


@st.composite
def v2_request(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    kind = draw(st.sampled_from(["plausible"] * 5 + ["random"] * 3 + ["other"]))
    if kind == "plausible":
        path, headers, body = draw(plausible_infer())
        return path, "POST", headers, body
    if kind == "random":
        body = draw(to_bytes(INFER)) + draw(st.binary(max_size=32))
        return draw(INFER_PATHS), "POST", draw(V2_HEADERS), body
    return draw(V2_OTHER_PATHS), draw(st.sampled_from(["GET", "POST", "PUT"])), {}, b""


@settings(FUZZ, max_examples=250)
@given(request=v2_request())
def test_v2_never_answers_5xx_and_always_json(clipper, http, request):
    path, method, headers, body = request
    r = http.request(method, f"{clipper.query_url}{path}", content=body, headers=headers)
    event(f"HTTP {r.status_code}")
    # /ready answers 503 by design while a model has no live replica.
    assert r.status_code < 500 or (r.status_code == 503 and "ready" in path), r.text[:500]
    answer = parse_json_answer(r)
    if r.status_code >= 400:
        assert isinstance(answer, dict) and answer.get("error"), answer


# -- everything still works ---------------------------------------------------------------


def test_the_server_still_serves_every_app_after_the_fuzzing(clipper, http):
    samples = {
        "fz-doubles": [1, 2, 3],
        "fz-floats": [0.5],
        "fz-ints": [1],
        "fz-bytes": base64.b64encode(b"ok").decode(),
        "fz-strings": "ok",
        "fz-json": {"ok": 1},
    }
    for app, value in samples.items():  # every app answers from its model
        r = http.post(f"{clipper.query_url}/{app}/predict", json={"input": value})
        assert r.status_code == 200 and r.json()["default"] is False, r.text
    assert http.get(f"{clipper.query_url}/health").json() == {"status": "ok"}
