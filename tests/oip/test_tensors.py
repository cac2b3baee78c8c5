"""OIP v2 tensors without a server: every datatype, JSON and binary, BYTES framing,
and the errors that name the problem (clipper.frontend.oip_tensors)."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from clipper.exceptions import InputError
from clipper.frontend.oip_tensors import (
    DATATYPES,
    check_header,
    decode_binary,
    decode_json,
    deserialize_bytes,
    encode_output,
    serialize_bytes,
)

NUMERIC = [d for d in DATATYPES if d not in ("BYTES", "BOOL")]


def sample(datatype: str) -> np.ndarray:
    dtype = DATATYPES[datatype]
    assert dtype is not None
    if dtype.kind == "f":
        return np.array([[0.5, -1.25, 3.0], [4.0, 5.5, -6.0]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, 1], [2, 3, info.max]], dtype=dtype)


# -- numeric datatypes -----------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_numeric_round_trip(datatype):
    arr = sample(datatype)
    t = decode_binary("x", datatype, arr.shape, arr.astype(DATATYPES[datatype]).tobytes())
    assert t.data.dtype == DATATYPES[datatype] and t.data.shape == (2, 3)
    np.testing.assert_array_equal(t.data, arr)


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("nested", [False, True])
def test_json_numeric_flat_and_nested(datatype, nested):
    arr = sample(datatype)
    data = arr.tolist() if nested else arr.ravel().tolist()
    t = decode_json("x", datatype, (2, 3), orjson.loads(orjson.dumps(data)))
    assert t.data.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(t.data, arr)


def test_bool_json_and_binary():
    t = decode_json("b", "BOOL", (3,), [True, False, True])
    assert t.data.dtype == np.bool_ and t.data.tolist() == [True, False, True]
    t = decode_binary("b", "BOOL", (2, 2), bytes([1, 0, 0, 1]))
    assert t.data.tolist() == [[True, False], [False, True]]


def test_binary_is_little_endian():
    t = decode_binary("x", "INT32", (1,), struct.pack("<i", 258))
    assert t.data.tolist() == [258]


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1.5, 2], "INT32 data must be integers, found a fraction"),
        ("INT8", [1, 200], "200 is out of range for INT8"),
        ("UINT16", [-1, 2], "-1 is out of range for UINT16"),
        ("FP32", ["a", "b"], "FP32 data must be numbers"),
        ("FP32", [None, 1], "FP32 data must be numbers"),
        ("INT64", [True, False], "INT64 data must be numbers, found booleans"),
        ("BOOL", [1, 0], "BOOL data must be true or false"),
        ("FP16", [70000.0, 1.0], "out of range for FP16"),
        ("FP32", [1e300, 1.0], "out of range for FP32"),
    ],
)
def test_json_bad_values_name_the_problem(datatype, data, message):
    with pytest.raises(InputError, match="input 'x'") as info:
        decode_json("x", datatype, (2,), data)
    assert message in str(info.value)


def test_json_element_count_must_match_shape():
    with pytest.raises(InputError, match=r"'shape' \[2, 2\] needs 4 elements, 'data' holds 3"):
        decode_json("x", "FP32", (2, 2), [1, 2, 3])


def test_json_nested_shape_must_match():
    with pytest.raises(InputError, match=r"nested 'data' of shape \[3, 2\] does not match"):
        decode_json("x", "FP32", (2, 3), [[1, 2], [3, 4], [5, 6]])


def test_json_ragged_data():
    with pytest.raises(InputError, match="ragged"):
        decode_json("x", "FP32", (2, 2), [[1, 2], [3]])


def test_json_data_must_be_an_array():
    with pytest.raises(InputError, match="'data' must be an array"):
        decode_json("x", "FP32", (1,), 5)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_size_must_match_shape(datatype):
    itemsize = DATATYPES[datatype].itemsize
    with pytest.raises(InputError) as info:
        decode_binary("x", datatype, (2, 3), b"\0" * (6 * itemsize - 1))
    assert f"needs {6 * itemsize} bytes, binary_data_size is {6 * itemsize - 1}" in str(info.value)


@pytest.mark.parametrize(
    ("shape", "what"),
    [
        ((0,), "the batch is empty"),
        ((0, 3), "the batch is empty"),
        ((2, 0), "each query is empty"),
        # Rows claimed for free: no data at all, and no allocation either.
        ((100_000_000, 0), "each query is empty"),
        ((10**18, 10**18, 0), "each query is empty"),
    ],
)
def test_zero_size_dimensions_are_refused(shape, what):
    message = rf"'shape' \[{', '.join(map(str, shape))}\] has a zero-size dimension \({what}\)"
    with pytest.raises(InputError, match=message):
        decode_json("x", "INT32", shape, [])
    with pytest.raises(InputError, match=message):
        decode_json("x", "BYTES", shape, [])
    with pytest.raises(InputError, match=message):
        decode_binary("x", "FP32", shape, b"")
    with pytest.raises(InputError, match=message):
        decode_binary("x", "BYTES", shape, b"")
    with pytest.raises(InputError, match=message):
        check_header({"name": "x", "datatype": "INT8", "shape": list(shape)}, "i")


def test_bytes_shape_is_checked_against_the_data_before_decoding(monkeypatch):
    # 3 million elements cannot fit in 8 bytes: refused before the data is read.
    def no_reading(*args):
        raise AssertionError("the data was read")

    monkeypatch.setattr("clipper.frontend.oip_tensors.deserialize_bytes", no_reading)
    with pytest.raises(InputError, match=r"needs 3000000 BYTES elements, the binary data holds 2"):
        decode_binary("s", "BYTES", (3_000_000,), b"\0" * 8)


# -- BYTES -----------------------------------------------------------------------------


def test_bytes_length_prefix_format():
    raw = serialize_bytes([b"ab", b"", b"\xff\x00c"])
    assert raw == b"\x02\0\0\0ab" + b"\0\0\0\0" + b"\x03\0\0\0\xff\x00c"
    assert deserialize_bytes(raw) == [b"ab", b"", b"\xff\x00c"]
    assert deserialize_bytes(b"") == []


def test_bytes_binary_tensor():
    t = decode_binary("s", "BYTES", (2, 1), serialize_bytes([b"x", b"yz"]))
    assert t.data.dtype == object and t.data.shape == (2, 1)
    assert t.data.ravel().tolist() == [b"x", b"yz"]


def test_bytes_truncated_prefix():
    with pytest.raises(InputError, match="ends inside an element's 4-byte length prefix"):
        deserialize_bytes(b"\x01\0\0\0a\x02\0")


def test_bytes_truncated_element():
    with pytest.raises(InputError, match="BYTES element 1 declares 5 bytes, only 2 remain"):
        deserialize_bytes(b"\x01\0\0\0a\x05\0\0\0bc")


def test_bytes_count_must_match_shape():
    with pytest.raises(InputError, match=r"needs 3 BYTES elements, the binary data holds 2"):
        decode_binary("s", "BYTES", (3,), serialize_bytes([b"a", b"b"]))


def test_bytes_json_flat_and_nested():
    t = decode_json("s", "BYTES", (2, 2), [["a", "b"], ["c", "d"]])
    assert t.data.ravel().tolist() == ["a", "b", "c", "d"]
    t = decode_json("s", "BYTES", (2,), ["ü", ""])
    assert t.data.tolist() == ["ü", ""]


def test_bytes_json_must_be_strings():
    with pytest.raises(InputError, match="BYTES data must be strings"):
        decode_json("s", "BYTES", (2,), ["a", 1])
    with pytest.raises(InputError, match=r"needs 3 elements, 'data' holds 2"):
        decode_json("s", "BYTES", (3,), ["a", "b"])


# -- tensor headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ([], r"inputs\[0\] must be a JSON object"),
        ({"datatype": "FP32", "shape": [1]}, "'name' must be a string"),
        ({"name": "x", "shape": [1]}, "'datatype' must be a string"),
        ({"name": "x", "datatype": "BF16", "shape": [1]}, "unsupported datatype 'BF16'"),
        ({"name": "x", "datatype": "FP32", "shape": [-1]}, "'shape' must be an array"),
        ({"name": "x", "datatype": "FP32", "shape": [1.0]}, "'shape' must be an array"),
        ({"name": "x", "datatype": "FP32", "shape": "3"}, "'shape' must be an array"),
    ],
)
def test_bad_tensor_headers(tensor, message):
    with pytest.raises(InputError, match=message):
        check_header(tensor, "inputs[0]")


def test_good_tensor_header():
    assert check_header({"name": "x", "datatype": "INT8", "shape": [2, 1]}, "i") == (
        "x",
        "INT8",
        (2, 1),
    )
    assert check_header({"name": "x", "datatype": "INT8", "shape": []}, "i") == ("x", "INT8", ())


# -- answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "datatype", "shape", "data"),
    [
        ([1, 2, 3], "INT64", [3], [1, 2, 3]),
        ([1, 2.5], "FP64", [2], [1.0, 2.5]),
        ([True, False], "BOOL", [2], [True, False]),
        ([[1, 2], [3, 4]], "INT64", [2, 2], [1, 2, 3, 4]),
        ([[1.5, 2], [3, 4]], "FP64", [2, 2], [1.5, 2.0, 3.0, 4.0]),
        ([[True], [False]], "BOOL", [2, 1], [True, False]),
        (["cat", "dög"], "BYTES", [2], ["cat", "dög"]),
        ([{"a": 1}, [1, "x"], None], "BYTES", [3], ['{"a":1}', '[1,"x"]', "null"]),
        ([[1, 2], [3]], "BYTES", [2], ["[1,2]", "[3]"]),
        ([1, "x"], "BYTES", [2], ["1", "x"]),
        ([True, 1], "BYTES", [2], ["true", "1"]),
        ([2**70], "BYTES", [1], [str(2**70)]),
    ],
)
def test_encode_output(values, datatype, shape, data):
    out = encode_output(values)
    assert out.datatype == datatype and out.shape == shape
    assert orjson.loads(orjson.dumps(out.json_data(), option=orjson.OPT_SERIALIZE_NUMPY)) == data


def test_encode_output_binary():
    out = encode_output([1.5, 2.0])
    assert np.frombuffer(out.binary_data(), "<f8").tolist() == [1.5, 2.0]
    out = encode_output([7, -1])
    assert np.frombuffer(out.binary_data(), "<i8").tolist() == [7, -1]
    out = encode_output(["a", {"b": 2}])
    assert deserialize_bytes(out.binary_data()) == [b"a", b'{"b":2}']


def test_output_bytes_nested_in_json():
    out = encode_output([{"raw": b"ok", "bin": b"\xff"}])
    assert out.json_data() == ['{"raw":"ok","bin":"/w=="}']


def test_binary_output_bytes_survive_and_json_uses_base64():
    out = encode_output([b"\xff\x00"])
    assert deserialize_bytes(out.binary_data()) == [b"\xff\x00"]
    assert out.json_data() == ["/wA="]
