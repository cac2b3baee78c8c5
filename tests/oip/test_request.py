"""OIP v2 /infer bodies without a server: parsing (including bodies built by
tritonclient itself), tensors to an app's queries, and answers that tritonclient
reads back (clipper.frontend.oip_request)."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import orjson
import pytest

from clipper.exceptions import InputError, PayloadTooLarge
from clipper.frontend.oip_request import (
    InferRequest,
    app_queries,
    decompress,
    default_value,
    encode_response,
    parse_infer_request,
)
from clipper.frontend.oip_tensors import Tensor, decode_json
from clipper.types import AppSpec, InputType


def app(input_type: str, shape: list[int] | None = None) -> AppSpec:
    return AppSpec("app", InputType(input_type), "-1", 100_000, tuple(shape) if shape else None)


def body(doc: dict, binary: bytes = b"") -> tuple[bytes, str | None]:
    header = orjson.dumps(doc)
    return header + binary, (str(len(header)) if binary else None)


def tensor(datatype: str, shape: list[int], data: list) -> dict:
    return {"name": "input", "datatype": datatype, "shape": shape, "data": data}


def parse(doc: dict, binary: bytes = b"") -> InferRequest:
    raw, length = body(doc, binary)
    return parse_infer_request(raw, length)


def error(doc: dict, binary: bytes = b"", header_length: str | None = None) -> str:
    raw, length = body(doc, binary)
    with pytest.raises(InputError) as info:
        parse_infer_request(raw, header_length if header_length is not None else length)
    return str(info.value)


# -- parsing -----------------------------------------------------------------------------


def test_json_request():
    req = parse(
        {
            "id": "r1",
            "inputs": [tensor("FP32", [2, 2], [1, 2, 3, 4])],
            "outputs": [{"name": "scores"}],
            "parameters": {"timeout": 2500, "clipper_uid": 7},
        }
    )
    assert req.id == "r1" and req.output_name == "scores" and req.binary_output is False
    assert req.timeout_s == pytest.approx(0.0025) and req.uid == "7"
    assert req.tensor.data.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_binary_request_and_output_flags():
    raw = np.arange(6, dtype="<i8").tobytes()
    doc = {
        "inputs": [
            {
                "name": "x",
                "datatype": "INT64",
                "shape": [2, 3],
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    req = parse(doc, raw)
    assert req.tensor.data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert req.binary_output is True and req.output_name == "output0" and req.timeout_s is None
    doc["outputs"] = [{"name": "y", "parameters": {"binary_data": False}}]
    assert parse(doc, raw).binary_output is False  # the output's flag wins


def test_timeout_zero_means_none():
    assert (
        parse({"inputs": [tensor("FP32", [1], [1])], "parameters": {"timeout": 0}}).timeout_s
        is None
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "'inputs' must be a non-empty array"),
        ({}, "'inputs' must be a non-empty array"),
        (
            {"inputs": [tensor("FP32", [1], [1])] * 2},
            "exactly one input tensor (its rows are the queries), found 2",
        ),
        ({"inputs": [tensor("FP32", [1], [1])], "id": 5}, "'id' must be a string"),
        (
            {"inputs": [tensor("FP32", [1], [1])], "parameters": {"timeout": -1}},
            "parameters.timeout must be a non-negative integer",
        ),
        (
            {"inputs": [tensor("FP32", [1], [1])], "parameters": {"timeout": 1.5}},
            "parameters.timeout must be a non-negative integer",
        ),
        (
            {"inputs": [tensor("FP32", [1], [1])], "parameters": {"sequence_id": 3}},
            "sequence batching",
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "neither 'data' nor"),
        (
            {"inputs": [tensor("FP32", [1], [1])], "outputs": [{"name": "a"}, {"name": "b"}]},
            "at most one tensor",
        ),
        (
            {
                "inputs": [tensor("FP32", [1], [1])],
                "outputs": [{"name": "a", "parameters": {"classification": 3}}],
            },
            "classification extension is not supported",
        ),
        (
            {
                "inputs": [
                    {**tensor("FP32", [1], [1]), "parameters": {"shared_memory_region": "r"}}
                ],
            },
            "shared memory is not supported",
        ),
        ({"inputs": [tensor("FP32", [3], [1, 2])]}, "needs 3 elements, 'data' holds 2"),
    ],
)
def test_bad_requests_name_the_problem(doc, message):
    assert message in error(doc)


def test_not_json():
    with pytest.raises(InputError, match="request JSON is not valid"):
        parse_infer_request(b"{nope", None)
    with pytest.raises(InputError, match="must be an object"):
        parse_infer_request(b"[1]", None)


def test_binary_size_mismatch():
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
        ]
    }
    assert "binary_data_size is 8 but 4 bytes" in error(doc, b"\0" * 4)
    assert "needs 8 bytes, binary_data_size is 4" in error(
        {"inputs": [{**doc["inputs"][0], "parameters": {"binary_data_size": 4}}]}, b"\0" * 4
    )


def test_binary_without_declaration():
    doc = {"inputs": [tensor("FP32", [1], [1])]}
    assert "no input declares parameters.binary_data_size" in error(doc, b"\0" * 4)


def test_bad_header_length():
    doc = {"inputs": [tensor("FP32", [1], [1])]}
    assert "Inference-Header-Content-Length" in error(doc, header_length="9999")
    assert "Inference-Header-Content-Length" in error(doc, header_length="x")


# -- bounds: checked on the shape, before the data is decoded ------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if a tensor's data is decoded."""

    def refuse(*args):
        raise AssertionError("the tensor's data was decoded")

    monkeypatch.setattr("clipper.frontend.oip_request.decode_json", refuse)
    monkeypatch.setattr("clipper.frontend.oip_request.decode_binary", refuse)


def limited(doc: dict, spec: AppSpec | None, limit: int, binary: bytes = b"") -> InferRequest:
    raw, length = body(doc, binary)
    return parse_infer_request(raw, length, spec, limit)


def test_the_81_byte_body_that_claimed_300000_rows():
    raw = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[300000,0],"data":[]}]}'
    assert len(raw) <= 81
    with pytest.raises(InputError, match=r"zero-size dimension \(each query is empty\)"):
        parse_infer_request(raw, None, app("json"), 10_000)


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize("input_type", ["json", "doubles", "strings"])
def test_rows_beyond_the_limit_are_refused_before_decoding(input_type):
    doc = {"inputs": [tensor("FP32", [11, 1], list(range(11)))]}
    message = r"has 11 queries \(rows of shape \[11, 1\]\); the limit is 10"
    with pytest.raises(InputError, match=message):
        limited(doc, app(input_type), 10)
    binary = {"name": "input", "datatype": "BYTES", "shape": [11]}
    binary["parameters"] = {"binary_data_size": 44}
    with pytest.raises(InputError, match="has 11 queries"):
        limited({"inputs": [binary]}, app(input_type), 10, b"\0" * 44)


def test_rows_at_the_limit_and_one_query_of_the_declared_shape():
    doc = {"inputs": [tensor("FP32", [10, 1], list(range(10)))]}
    assert len(app_queries(limited(doc, app("doubles"), 10).tensor, app("doubles"))) == 10
    # A tensor of the app's declared shape is one query, however long.
    spec = app("doubles", [20])
    one = limited({"inputs": [tensor("FP32", [20], list(range(20)))]}, spec, 10)
    assert len(app_queries(one.tensor, spec)) == 1
    with pytest.raises(InputError, match="has 20 queries"):
        limited({"inputs": [tensor("FP32", [20, 1], list(range(20)))]}, app("doubles", [1]), 10)


@pytest.mark.usefixtures("no_decoding")
def test_a_shape_larger_than_the_json_can_hold_is_refused_before_decoding():
    doc = {"inputs": [tensor("FP32", [1, 1_000_000], [1])]}
    with pytest.raises(InputError, match=r"needs 1000000 elements, more than the \d+ bytes"):
        limited(doc, app("doubles"), 10)


@pytest.mark.parametrize(
    ("uid", "ok"),
    [("u" * 256, True), ("u" * 257, False), ("é" * 128, True), ("é" * 129, False), (2**62, True)],
)
def test_uid_is_at_most_256_bytes(uid, ok):
    doc = {"inputs": [tensor("FP32", [1], [1])], "parameters": {"clipper_uid": uid}}
    if ok:
        assert parse(doc).uid == str(uid)
    else:
        assert "parameters.clipper_uid is longer than the limit of 256 bytes" in error(doc)


def test_decompress():
    raw = b'{"a": 1}' * 100
    assert decompress(gzip.compress(raw), "gzip", 10_000) == raw
    assert decompress(zlib.compress(raw), "deflate", 10_000) == raw
    assert decompress(raw, "identity", 10_000) == raw
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(raw), "gzip", 100)
    with pytest.raises(InputError, match="unsupported Content-Encoding 'br'"):
        decompress(raw, "br", 10_000)
    with pytest.raises(InputError, match="not valid gzip"):
        decompress(raw, "gzip", 10_000)


# -- tensors → queries ---------------------------------------------------------------------


def t(datatype: str, shape: list[int], data: list) -> Tensor:
    return decode_json("input", datatype, tuple(shape), data)


def test_declared_shape_one_query_or_a_batch():
    spec = app("doubles", [3])
    one = app_queries(t("FP32", [3], [1, 2, 3]), spec)
    assert len(one) == 1 and one[0].dtype == np.float64 and one[0].tolist() == [1, 2, 3]
    many = app_queries(t("INT64", [2, 3], [1, 2, 3, 4, 5, 6]), spec)
    assert [q.tolist() for q in many] == [[1, 2, 3], [4, 5, 6]]
    assert all(q.flags.c_contiguous for q in many)
    with pytest.raises(InputError, match=r"expected shape \[3\] or \[N, 3\], found \[2, 2\]"):
        app_queries(t("FP32", [2, 2], [1, 2, 3, 4]), spec)


def test_undeclared_shape_first_dimension_is_the_batch():
    spec = app("floats")
    qs = app_queries(t("FP64", [2, 2, 2], list(range(8))), spec)
    assert len(qs) == 2 and qs[0].shape == (2, 2) and qs[0].dtype == np.float32
    qs = app_queries(t("FP64", [3], [1, 2, 3]), spec)
    assert [q.tolist() for q in qs] == [[1.0], [2.0], [3.0]]
    with pytest.raises(InputError, match="needs a batch dimension"):
        app_queries(t("FP64", [], [1]), spec)
    with pytest.raises(InputError, match="the batch is empty"):
        app_queries(t("FP64", [0, 3], []), spec)
    with pytest.raises(InputError, match="each query is empty"):
        app_queries(t("FP64", [2, 0], []), spec)


@pytest.mark.parametrize(
    ("datatype", "data", "ok"),
    [
        ("FP32", [1.0, 2.0], True),
        ("FP64", [1.0, -3.0], True),
        ("FP32", [1.5, 2.0], False),
        ("INT64", [1, 2**31], False),
        ("UINT32", [1, 2**31 - 1], True),
        ("UINT64", [0, 2**64 - 1], False),
        ("BOOL", [True, False], True),
        ("INT8", [-128, 127], True),
    ],
)
def test_integers_app_refuses_lossy_conversions(datatype, data, ok):
    spec = app("integers", [2])
    tensor = t(datatype, [2], data)
    if ok:
        (q,) = app_queries(tensor, spec)
        assert q.dtype == np.int32 and q.tolist() == [int(x) for x in data]
    else:
        with pytest.raises(InputError, match=r"fraction|out of range"):
            app_queries(tensor, spec)


def test_floats_app_refuses_overflow_and_non_finite():
    with pytest.raises(InputError, match="overflows float32"):
        app_queries(t("FP64", [1, 1], [1e300]), app("floats"))
    nan = Tensor("input", "FP32", (1, 1), np.array([[np.nan]], dtype=np.float32))
    with pytest.raises(InputError, match="not a finite number"):
        app_queries(nan, app("doubles"))


def test_numeric_app_refuses_bytes():
    with pytest.raises(InputError, match="send a numeric tensor, not BYTES"):
        app_queries(t("BYTES", [1], ["1"]), app("doubles"))


def test_strings_bytes_and_json_apps():
    raw = Tensor("input", "BYTES", (2, 1), np.array([[b"caf\xc3\xa9"], [b"x"]], dtype=object))
    assert app_queries(raw, app("strings")) == ["café", "x"]
    assert app_queries(raw, app("bytes")) == [b"caf\xc3\xa9", b"x"]
    assert app_queries(t("BYTES", [2], ["ab", "c"]), app("bytes")) == [b"ab", b"c"]
    assert app_queries(t("BYTES", [2], ['{"a": 1}', "[1, 2]"]), app("json")) == [
        {"a": 1},
        [1, 2],
    ]
    assert app_queries(t("FP64", [2, 2], [1, 2, 3, 4]), app("json")) == [[1.0, 2.0], [3.0, 4.0]]
    assert app_queries(t("INT32", [], [5]), app("json")) == [5]
    bad = Tensor("input", "BYTES", (1,), np.array([b"\xff"], dtype=object))
    with pytest.raises(InputError, match=r"input 'input'\[0\]: not valid UTF-8"):
        app_queries(bad, app("strings"))
    with pytest.raises(InputError, match=r"\[1\]: not valid JSON text"):
        app_queries(t("BYTES", [2], ["1", "{"]), app("json"))
    with pytest.raises(InputError, match=r"expected shape \[N\] or \[N, 1\], found \[2, 2\]"):
        app_queries(t("BYTES", [2, 2], ["a", "b", "c", "d"]), app("strings"))
    with pytest.raises(InputError, match="send BYTES, not FP32"):
        app_queries(t("FP32", [1], [1]), app("strings"))


# -- answers -------------------------------------------------------------------------------


def request(binary: bool, rid: str | None = "q") -> InferRequest:
    return InferRequest(rid, t("FP32", [1], [1]), "out", binary, None, None)


def test_json_answer():
    payload, length = encode_response("m", "1", request(False), [1.5, 2.5], [False] * 2, [None] * 2)
    assert length is None
    assert orjson.loads(payload) == {
        "model_name": "m",
        "model_version": "1",
        "id": "q",
        "outputs": [{"name": "out", "datatype": "FP64", "shape": [2], "data": [1.5, 2.5]}],
    }


def test_binary_answer_and_defaults_marked():
    payload, length = encode_response(
        "m", "1", request(True, None), [1.5, "-1"], [False, True], [None, "too slow"], [None, None]
    )
    assert length is not None
    header = orjson.loads(payload[: int(length)])
    assert "id" not in header
    assert header["parameters"] == {
        "clipper_default": [False, True],
        "clipper_default_explanation": [None, "too slow"],
    }
    out = header["outputs"][0]
    assert out["datatype"] == "FP64" and out["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(payload[int(length) :], "<f8").tolist() == [1.5, -1.0]


def test_default_value():
    assert default_value("-1") == -1 and default_value("0.5") == 0.5
    assert default_value("[0, 1]") == [0, 1]
    assert default_value("none") == "none" and default_value("true") == "true"
    assert default_value('"q"') == '"q"'


def test_tritonclient_reads_our_answers_and_we_read_its_requests():
    httpclient = pytest.importorskip("tritonclient.http")
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    s = np.array([b"a", b"\xff"], dtype=object)
    for data, datatype in ((x, "FP32"), (s, "BYTES")):
        for binary in (True, False):
            if datatype == "BYTES" and not binary:
                data = np.array([b"a", "ü".encode()], dtype=object)
            inp = httpclient.InferInput("input", list(data.shape), datatype)
            inp.set_data_from_numpy(data, binary_data=binary)
            out = httpclient.InferRequestedOutput("output0", binary_data=binary)
            raw, length = httpclient.InferenceServerClient.generate_request_body(
                [inp], outputs=[out], request_id="r", timeout=1000
            )
            req = parse_infer_request(raw, None if length is None else str(length))
            assert req.binary_output is binary and req.timeout_s == pytest.approx(0.001)
            got = req.tensor.data
            if datatype == "FP32":
                np.testing.assert_array_equal(got, x)
                outputs = [row.tolist() for row in got]
            else:
                outputs = [e if isinstance(e, str) else e.decode("latin-1") for e in got]
            payload, json_len = encode_response(
                "app", "1", req, outputs, [False] * len(outputs), [None] * len(outputs)
            )
            result = httpclient.InferenceServerClient.parse_response_body(
                payload, header_length=None if json_len is None else int(json_len)
            )
            answer = result.as_numpy("output0")
            if datatype == "FP32":
                assert answer.dtype == np.float64
                np.testing.assert_array_equal(answer, x.astype(np.float64))
            else:
                texts = [a.decode() if isinstance(a, bytes) else a for a in answer.tolist()]
                assert texts == outputs
            assert result.get_response()["id"] == "r"
