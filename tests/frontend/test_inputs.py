"""Parsing and validation of query bodies (clipper.frontend.inputs)."""

from __future__ import annotations

import base64
import contextlib
import math
import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipper.exceptions import InputError, ValidationError
from clipper.frontend import inputs as inputs_module
from clipper.frontend.inputs import (
    PredictRequest,
    describe_json_type,
    parse_input,
    parse_predict_body,
    parse_update_body,
)
from clipper.types import InputType

NUMERIC = [InputType.INTEGERS, InputType.FLOATS, InputType.DOUBLES]
DTYPES = {InputType.INTEGERS: np.int32, InputType.FLOATS: np.float32, InputType.DOUBLES: np.float64}
F32_MAX = float(np.finfo(np.float32).max)
# The smallest float64 that rounds to inf as float32 (FLT_MAX + half an ulp).
F32_OVERFLOW = 2.0**128 - 2.0**103


def body(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def error(raw: bytes, input_type: InputType = InputType.DOUBLES, shape: Any = None) -> str:
    with pytest.raises(InputError) as info:
        parse_predict_body(raw, input_type, shape)
    return str(info.value)


def input_error(value: Any, input_type: InputType, shape: Any = None, where: str = "input") -> str:
    with pytest.raises(InputError) as info:
        parse_input(value, input_type, shape, where)
    return str(info.value)


# -- describe_json_type ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("x", "a string"),
        ({}, "an object"),
        (True, "a boolean"),
        (False, "a boolean"),
        (None, "null"),
        (1, "a number"),
        (1.5, "a number"),
        ([], "an array"),
    ],
)
def test_describe_json_type(value, name):
    assert describe_json_type(value) == name


def test_describe_non_json_value():
    assert "tuple" in describe_json_type((1, 2))


# -- body structure ----------------------------------------------------------


def test_single_input():
    req = parse_predict_body(body(input=[1.5, 2]), InputType.DOUBLES, None)
    assert isinstance(req, PredictRequest)
    assert req.is_batch is False
    assert req.version is None
    assert len(req.inputs) == 1
    np.testing.assert_array_equal(req.inputs[0], [1.5, 2.0])


def test_batch_input_and_version():
    req = parse_predict_body(
        body(input_batch=[[1], [2], [3]], version="v2"), InputType.DOUBLES, None
    )
    assert req.is_batch is True
    assert req.version == "v2"
    assert [x.tolist() for x in req.inputs] == [[1.0], [2.0], [3.0]]


def test_request_is_frozen():
    req = PredictRequest(inputs=[1], is_batch=False, version=None)
    with pytest.raises(AttributeError):
        req.version = "v1"  # type: ignore[misc]


def test_input_error_is_a_validation_error():
    assert issubclass(InputError, ValidationError)


def test_invalid_json():
    assert error(b'{"input": [1, 2}').startswith("request body is not valid JSON: ")
    assert error(b"").startswith("request body is not valid JSON: ")


def test_non_utf8_body():
    assert error(b'{"input": "\xff\xfe"}', InputType.STRINGS).startswith(
        "request body is not valid JSON: "
    )


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_literals_are_rejected(literal):
    assert error(b'{"input": [1.0, ' + literal + b"]}").startswith(
        "request body is not valid JSON: "
    )


@pytest.mark.parametrize(
    ("raw", "found"), [(b"[1, 2]", "an array"), (b'"x"', "a string"), (b"null", "null")]
)
def test_body_must_be_an_object(raw, found):
    assert error(raw) == f"request body must be a JSON object, found {found}"


def test_both_input_and_batch():
    msg = error(body(input=[1], input_batch=[[1]]))
    assert "exactly one of 'input' and 'input_batch'" in msg


def test_neither_input_nor_batch():
    assert "'input' or 'input_batch'" in error(body(version="v1"))
    assert "'input' or 'input_batch'" in error(b"{}")


def test_unknown_field_is_named():
    assert error(body(inptu=[1])).startswith("unknown field 'inptu'")
    msg = error(body(input=[1], b=1, a=2))
    assert msg.startswith("unknown fields 'a', 'b'")


@pytest.mark.parametrize(
    ("version", "found"),
    [("", "an empty string"), (3, "a number"), (None, "null"), (["v1"], "an array")],
)
def test_version_must_be_a_non_empty_string(version, found):
    assert error(body(input=[1], version=version)) == (
        f"field 'version' must be a non-empty string, found {found}"
    )


def test_batch_must_be_a_non_empty_array():
    assert error(body(input_batch=[])) == (
        "field 'input_batch' must be a non-empty array, found an empty array"
    )
    assert error(body(input_batch={"a": 1})) == (
        "field 'input_batch' must be a non-empty array, found an object"
    )
    assert "found a string" in error(body(input_batch="abc"), InputType.STRINGS)


def test_batch_element_errors_name_the_index():
    raw = body(input_batch=[[1.0], [2.0], [3.0], "x"])
    assert error(raw) == (
        "input_batch[3]: expected an array of numbers for input type 'doubles', found a string"
    )
    raw = body(input_batch=[[1.0, 2.0], [3.0, True]])
    assert error(raw) == (
        "input_batch[1][1]: expected a number for input type 'doubles', found a boolean"
    )
    assert error(body(input_batch=["a", 1]), InputType.STRINGS) == (
        "input_batch[1]: expected a string for input type 'strings', found a number"
    )


# -- bounds: the batch length and the uid ---------------------------------------


def test_batch_length_limit():
    raw = body(input_batch=[[1.0]] * 6)
    with pytest.raises(InputError, match=r"^input_batch has 6 inputs; the limit is 5$"):
        parse_predict_body(raw, InputType.DOUBLES, None, 5)
    assert len(parse_predict_body(raw, InputType.DOUBLES, None, 6).inputs) == 6
    assert len(parse_predict_body(raw, InputType.DOUBLES, None).inputs) == 6  # no limit


@pytest.fixture
def no_conversion(monkeypatch):
    def refuse(*args: Any, **kw: Any) -> Any:
        raise AssertionError("an element was converted")

    monkeypatch.setattr(inputs_module, "_parse", refuse)


@pytest.mark.usefixtures("no_conversion")
@pytest.mark.parametrize("input_type", list(InputType))
def test_batch_length_is_checked_before_any_element_is_converted(input_type):
    # Short: orjson parses it and the length is checked before the elements.
    with pytest.raises(InputError, match="input_batch has 3 inputs; the limit is 2"):
        parse_predict_body(body(input_batch=[[0], [0], [0]]), input_type, None, 2)


def bomb(n: int, key: bytes = b"input_batch", extra: bytes = b"") -> bytes:
    return b'{"' + key + b'":[' + b",".join([b"[0]"] * n) + extra + b"]}"


@pytest.mark.parametrize(
    "raw",
    [
        bomb(100_000),
        bomb(100_000, key=b"input\\u005fbatch"),  # the name with an escape
        bomb(100_000).replace(b"{", b'{"version": "1", ', 1),
    ],
)
def test_a_long_batch_is_refused_before_it_becomes_python_objects(raw, monkeypatch):
    def refuse(*args: Any) -> Any:
        raise AssertionError("the body went to orjson")

    monkeypatch.setattr(inputs_module.orjson, "loads", refuse)
    for input_type in InputType:
        with pytest.raises(InputError, match="input_batch has 100000 inputs; the limit is 10000"):
            parse_predict_body(raw, input_type, None, 10_000)


@pytest.mark.usefixtures("no_conversion")
def test_bodies_simdjson_cannot_read_still_meet_the_limit():
    # simdjson refuses integers beyond 64 bits (orjson reads them as floats) and a
    # field given twice is left to orjson (which keeps the last): the check after
    # orjson still refuses them before converting any element.
    for raw in (
        bomb(30_000, extra=b",[123456789012345678901234567890]"),
        b'{"input_batch": [[1]], ' + bomb(30_000)[1:],
    ):
        with pytest.raises(InputError, match=r"input_batch has 300\d\d inputs; the limit is 10000"):
            parse_predict_body(raw, InputType.DOUBLES, None, 10_000)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    limit=st.integers(1, 8),
    element=st.sampled_from(
        ["[0]", "0", '"a"', "[1.5, 2]", "{}", "1e400", "123456789012345678901"]
    ),
    wrapper=st.sampled_from(
        [
            '{"input_batch": [%s]}',
            '{"input\\u005fbatch": [%s]}',
            '{"input_batch": [%s], "input_batch": [[1]]}',
            '{"input_batch": [[1]], "input_batch": [%s]}',
            '{"input_batch": [%s], "input": [1]}',
            '{"input_batch": [%s], "uid": "\\u00e9"}',
            '{"input_batch": [%s], "x": 1}',
            '{"input_batch": [%s]',
            "[%s]",
        ]
    ),
    input_type=st.sampled_from(list(InputType)),
)
def test_the_early_count_agrees_with_the_general_path(n, limit, element, wrapper, input_type):
    raw = (wrapper % ",".join([element] * n)).encode()

    def answer(early: bool) -> Any:
        with pytest.MonkeyPatch.context() as mp:
            if not early:
                mp.setattr(inputs_module, "_refuse_long_batch", lambda _body, _limit: None)
            try:
                return parse_predict_body(raw, input_type, None, limit)
            except InputError as exc:
                return exc

    expected, got = answer(early=False), answer(early=True)
    if isinstance(got, InputError):
        # Refused early only when the general path refuses too.
        assert isinstance(expected, InputError), (raw, got)
        if "the limit is" not in str(got) or "the limit is" in str(expected):
            assert str(got) == str(expected), raw
    else:
        assert isinstance(expected, PredictRequest), raw
        assert len(got.inputs) == len(expected.inputs), raw


@pytest.mark.parametrize(
    ("uid", "ok"),
    [("u" * 256, True), ("u" * 257, False), ("é" * 128, True), ("é" * 129, False), (7, True)],
)
def test_uid_is_at_most_256_bytes(uid, ok):
    raw = body(input=[1.0], uid=uid)
    update = body(uid=uid, input=[1.0], label=1)
    if ok:
        assert parse_predict_body(raw, InputType.DOUBLES, None).uid == str(uid)
        assert parse_update_body(update, InputType.DOUBLES, None).uid == str(uid)
        return
    message = "field 'uid' is longer than the limit of 256 bytes (UTF-8)"
    assert error(raw) == message
    with pytest.raises(InputError, match=re.escape(message)):
        parse_update_body(update, InputType.DOUBLES, None)


# -- numeric types -----------------------------------------------------------


@pytest.mark.parametrize("input_type", NUMERIC)
def test_numeric_result_dtype_and_layout(input_type):
    (arr,) = parse_predict_body(body(input=[1, 2, 3]), input_type, None).inputs
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == DTYPES[input_type]
    assert arr.flags.c_contiguous
    assert arr.tolist() == [1, 2, 3]


@pytest.mark.parametrize("input_type", [InputType.FLOATS, InputType.DOUBLES])
def test_integer_literals_are_valid_floats(input_type):
    arr = parse_input([1, 2.5, -3], input_type, None)
    assert arr.dtype == DTYPES[input_type]
    assert arr.tolist() == [1.0, 2.5, -3.0]


def test_doubles_keep_full_precision():
    arr = parse_input([0.1, 1e308, -5e-324], InputType.DOUBLES, None)
    assert arr.tolist() == [0.1, 1e308, -5e-324]


@pytest.mark.parametrize("input_type", NUMERIC)
@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("abc", "a string"),
        (5, "a number"),
        ({"a": [1]}, "an object"),
        (None, "null"),
        (True, "a boolean"),
    ],
)
def test_numeric_input_must_be_an_array(input_type, value, found):
    assert input_error(value, input_type) == (
        f"input: expected an array of numbers for input type '{input_type.value}', found {found}"
    )


@pytest.mark.parametrize("input_type", NUMERIC)
@pytest.mark.parametrize(
    ("value", "where", "found"),
    [
        ([1, True], "input[1]", "a boolean"),
        ([False, 1.0], "input[0]", "a boolean"),
        ([True, False], "input[0]", "a boolean"),
        ([1, "2"], "input[1]", "a string"),
        ([1, None], "input[1]", "null"),
        ([1, {}], "input[1]", "an object"),
        ([[1, 2], [3, False]], "input[1][1]", "a boolean"),
    ],
)
def test_non_numbers_in_arrays_are_rejected(input_type, value, where, found):
    expected = f"{where}: expected a number for input type '{input_type.value}', found {found}"
    # Through the body (the hot path, with its text-level hint) and directly.
    assert error(body(input=value), input_type) == expected
    assert input_error(value, input_type) == expected


@pytest.mark.parametrize("input_type", NUMERIC)
def test_booleans_found_when_the_text_hint_cannot_rule_them_out(input_type):
    # An 'l' in the version string defeats the cheap text check; the elementwise
    # check must still catch the boolean.
    raw = body(input=[1, True], version="full")
    assert "input[1]" in error(raw, input_type)
    assert "found a boolean" in error(raw, input_type)


def test_hint_false_positives_still_parse():
    for version in ("true", "false", "null", 'q"uote', "u"):
        req = parse_predict_body(body(input=[1, 2], version=version), InputType.DOUBLES, None)
        assert req.inputs[0].tolist() == [1.0, 2.0]
        assert req.version == version
    raw = b'{"input": [1, 2], "input": [3, 4]}'  # duplicate keys: the last one wins
    assert parse_predict_body(raw, InputType.DOUBLES, None).inputs[0].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("input_type", NUMERIC)
@pytest.mark.parametrize("value", [[], [[]], [[], []], [[[]]]])
def test_empty_arrays_are_rejected(input_type, value):
    assert input_error(value, input_type) == "input is empty"
    assert error(body(input_batch=[[1], value]), input_type) == "input_batch[1] is empty"


@pytest.mark.parametrize("input_type", NUMERIC)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[1, 2], [3]], "input[1]: ragged nested arrays: expected length 2, found length 1"),
        ([[1], [2, 3]], "input[1]: ragged nested arrays: expected length 1, found length 2"),
        ([[1, 2], 3], "input[1]: ragged nested arrays: expected an array, found a number"),
        ([1, [2]], "input[1]: ragged nested arrays: expected a number, found an array"),
        ([[], [1]], "input[1]: ragged nested arrays: expected length 0, found length 1"),
        (
            [[[1], [2]], [[3], 4]],
            "input[1][1]: ragged nested arrays: expected an array, found a number",
        ),
    ],
)
def test_ragged_arrays_are_rejected(input_type, value, message):
    assert input_error(value, input_type) == message
    assert error(body(input=value), input_type) == message


@pytest.mark.parametrize("input_type", NUMERIC)
def test_string_where_a_row_should_be(input_type):
    assert input_error([[1, 2], "ab"], input_type) == (
        f"input[1]: expected an array of numbers for input type '{input_type.value}', "
        "found a string"
    )


def test_too_deeply_nested():
    value: Any = [1.0]
    for _ in range(70):
        value = [value]
    assert "nested more than 64 levels" in input_error(value, InputType.DOUBLES)


# -- integers ------------------------------------------------------------------


def test_int32_bounds_are_accepted():
    arr = parse_input([-(2**31), 0, 2**31 - 1], InputType.INTEGERS, None)
    assert arr.dtype == np.int32
    assert arr.tolist() == [-(2**31), 0, 2**31 - 1]


@pytest.mark.parametrize(
    ("value", "where", "shown"),
    [
        ([1, 2**31], "input[1]", "2147483648"),
        ([-(2**31) - 1], "input[0]", "-2147483649"),
        ([0, 2**63], "input[1]", "9223372036854775808"),  # numpy makes this uint64
        ([-1, 2**63], "input[1]", "9223372036854775808"),  # ... and this float64
        ([2**64], "input[0]", "18446744073709551616"),  # ... and this an object array
    ],
)
def test_int32_out_of_range(value, where, shown):
    msg = input_error(value, InputType.INTEGERS)
    assert msg == (
        f"{where}: {shown} is out of range for input type 'integers' "
        "(int32: -2147483648 to 2147483647)"
    )


def test_integer_literal_beyond_64_bits_is_out_of_range():
    # orjson gives a float for an integer literal that does not fit 64 bits.
    msg = error(b'{"input": [123456789012345678901234567890]}', InputType.INTEGERS)
    assert msg.startswith("input[0]: ")
    assert "out of range for input type 'integers'" in msg


def test_huge_python_int_message_is_short():
    msg = input_error([2**20000], InputType.INTEGERS)
    assert "an integer of 20001 bits is out of range" in msg


@pytest.mark.parametrize("value", [[1, 1.5], [1, 2.0], [[1], [-0.5]]])
def test_floats_are_rejected_for_integers(value):
    msg = input_error(value, InputType.INTEGERS)
    assert "found a non-integer number" in msg
    assert msg.startswith("input[1]")


def test_integers_2d():
    arr = parse_input([[1, 2, 3], [4, 5, 6]], InputType.INTEGERS, (2, 3))
    assert arr.dtype == np.int32
    assert arr.shape == (2, 3)


# -- floats and doubles ------------------------------------------------------------


def test_float32_limits():
    arr = parse_input([F32_MAX, -F32_MAX, math.nextafter(F32_OVERFLOW, 0)], InputType.FLOATS, None)
    assert arr.dtype == np.float32
    assert np.isfinite(arr).all()


@pytest.mark.parametrize("value", [3.5e38, -1e39, F32_OVERFLOW, 1e308])
def test_float32_overflow_is_rejected(value):
    msg = input_error([1.0, value], InputType.FLOATS)
    assert msg.startswith(f"input[1]: {value!r} overflows float32 for input type 'floats'")
    assert error(body(input=[1.0, value]), InputType.FLOATS) == msg


def test_float32_overflow_threshold_matches_numpy():
    below = math.nextafter(F32_OVERFLOW, 0)
    with np.errstate(over="ignore"):
        assert np.isfinite(np.float32(below))
        assert np.isinf(np.float32(F32_OVERFLOW))


def test_big_ints_as_doubles():
    arr = parse_input([2**70, 1], InputType.DOUBLES, None)  # an object array to numpy
    assert arr.tolist() == [float(2**70), 1.0]
    msg = input_error([2**1100], InputType.DOUBLES)
    assert "out of range for input type 'doubles'" in msg


@pytest.mark.parametrize("input_type", [InputType.FLOATS, InputType.DOUBLES])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_python_floats_are_rejected(input_type, bad):
    # orjson never yields these, but parse_input may be called directly.
    assert input_error([1.0, bad], input_type) == f"input[1]: {bad!r} is not a finite number"


# -- shapes ----------------------------------------------------------------


def test_flat_shape():
    arr = parse_input(list(range(64)), InputType.DOUBLES, (64,))
    assert arr.shape == (64,)
    assert input_error(list(range(63)), InputType.DOUBLES, (64,)) == (
        "input: expected shape (64,), found (63,)"
    )


def test_2d_shape():
    value = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    arr = parse_input(value, InputType.FLOATS, (2, 3))
    assert arr.shape == (2, 3)
    assert arr.flags.c_contiguous
    assert input_error(value, InputType.FLOATS, (3, 2)) == (
        "input: expected shape (3, 2), found (2, 3)"
    )
    assert input_error([1.0] * 6, InputType.FLOATS, (2, 3)) == (
        "input: expected shape (2, 3), found (6,)"
    )


def test_shape_error_in_a_batch_names_the_element():
    raw = body(input_batch=[[1, 2], [1, 2, 3]])
    assert error(raw, InputType.INTEGERS, (2,)) == (
        "input_batch[1]: expected shape (2,), found (3,)"
    )


def test_any_shape_without_input_shape():
    for value in ([1.0], [[1.0, 2.0]], [[[1.0]], [[2.0]]]):
        assert parse_input(value, InputType.DOUBLES, None).shape == np.shape(value)


def test_shape_is_ignored_for_other_types():
    assert parse_input("abc", InputType.STRINGS, (64,)) == "abc"
    assert parse_input({"a": 1}, InputType.JSON, (64,)) == {"a": 1}
    assert parse_input("AAE=", InputType.BYTES, (64,)) == b"\x00\x01"


# -- bytes, strings, json ----------------------------------------------------------


def test_bytes():
    data = bytes(range(256))
    req = parse_predict_body(
        body(input_batch=[base64.b64encode(data).decode(), ""]), InputType.BYTES, None
    )
    assert req.inputs == [data, b""]


@pytest.mark.parametrize("bad", ["AAE", "A===", "AA-_", "AA E=", "AAÉ=", "!!!!"])
def test_invalid_base64(bad):
    assert input_error(bad, InputType.BYTES).startswith(
        "input: invalid base64 for input type 'bytes'"
    )


@pytest.mark.parametrize(
    ("value", "found"), [([1, 2], "an array"), (7, "a number"), (None, "null")]
)
def test_bytes_need_a_string(value, found):
    assert input_error(value, InputType.BYTES) == (
        f"input: expected a base64 string for input type 'bytes', found {found}"
    )


def test_strings():
    req = parse_predict_body(body(input_batch=["a", "", "ünï ☃"]), InputType.STRINGS, None)
    assert req.inputs == ["a", "", "ünï ☃"]
    assert input_error(["a"], InputType.STRINGS) == (
        "input: expected a string for input type 'strings', found an array"
    )
    assert "found a boolean" in input_error(True, InputType.STRINGS)


@pytest.mark.parametrize("value", [None, True, 1, 1.5, "s", [1, "a", None], {"k": [{}]}, []])
def test_json_passes_through(value):
    (got,) = parse_predict_body(body(input=value), InputType.JSON, None).inputs
    assert got == value
    assert type(got) is type(value)


# -- properties ------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)
numbers = st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
# Mostly well-formed arrays, so that the fast path is exercised as well.
regular_arrays = st.integers(0, 3).flatmap(
    lambda n: st.lists(st.lists(numbers | st.booleans(), min_size=n, max_size=n), max_size=3)
) | st.lists(numbers, max_size=6)
shapes = st.none() | st.lists(st.integers(0, 3), min_size=1, max_size=2).map(tuple)


@settings(max_examples=300, deadline=None)
@given(value=json_values | regular_arrays, input_type=st.sampled_from(InputType), shape=shapes)
def test_parse_input_returns_or_raises_input_error(value, input_type, shape):
    try:
        result = parse_input(value, input_type, shape)
    except InputError:
        return
    if input_type.is_numeric:
        assert isinstance(result, np.ndarray)
        assert result.dtype == DTYPES[input_type]
        assert result.flags.c_contiguous
        assert result.size > 0
        assert shape is None or result.shape == shape
        if input_type is not InputType.INTEGERS:
            assert np.isfinite(result).all()


# JSON that survives a round trip through orjson: 64-bit ints, finite floats.
roundtrip_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
roundtrip_values = st.recursive(
    roundtrip_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


def _outcome(fn: Any) -> Any:
    try:
        result = fn()
    except InputError as exc:
        return ("error", str(exc))
    return ("ok", result.dtype.str, result.shape, result.tobytes())


@settings(max_examples=300, deadline=None)
@given(
    value=roundtrip_values | regular_arrays,
    input_type=st.sampled_from(NUMERIC),
    version=st.none() | st.sampled_from(["v1", "full", "true"]),
)
def test_body_path_agrees_with_parse_input(value, input_type, version):
    # parse_predict_body trusts a text-level hint that parse_input cannot use;
    # the two must agree on every input.
    fields: dict[str, Any] = {"input": value}
    if version is not None:
        fields["version"] = version
    raw = orjson.dumps(fields)
    parsed = orjson.loads(raw)["input"]
    via_body = _outcome(lambda: parse_predict_body(raw, input_type, None).inputs[0])
    direct = _outcome(lambda: parse_input(parsed, input_type, None))
    assert via_body == direct


@settings(max_examples=200, deadline=None)
@given(
    raw=st.binary(max_size=40)
    | st.dictionaries(
        st.sampled_from(["input", "input_batch", "version", "x"]), roundtrip_values
    ).map(orjson.dumps),
    input_type=st.sampled_from(InputType),
)
def test_any_body_returns_or_raises_input_error(raw, input_type):
    with contextlib.suppress(InputError):
        parse_predict_body(raw, input_type, None)


# -- the simdjson path for one flat array --------------------------------------------

_TOKENS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-(2**31) - 2, 2**31 + 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(
        ["1e400", "-1e400", "1E5", "1e-400", "-0.0", "0.5e1", "3.4028235e38", "3.5e38", "-0",
         "true", "null", '"1"', "[1]", "[]", "[[2]]", "1.0", "00", ".5", "NaN"]
    ),
)  # fmt: skip
_WRAPPERS = st.sampled_from(
    [
        '{"input": [%s]}',
        '{"input":[%s]}',
        ' \n{ "input" :\t[ %s ] }\r\n',
        '{"input": [%s], "input": [1]}',
        '{"input": [%s], "uid": "u"}',
        '{"input": [%s], "version": "2"}',
        '{"input_batch": [[%s]]}',
        '{"input": [%s]',
        '{"input": [%s]} x',
        '\ufeff{"input": [%s]}',
        '{"inpu": [%s]}',
        "[%s]",
    ]
)


def _answer(raw: bytes, input_type: InputType, shape: Any, *, general: bool) -> Any:
    """parse_predict_body's request or InputError; ``general``: without the simdjson path."""
    with pytest.MonkeyPatch.context() as mp:
        if general:
            mp.setattr(inputs_module, "_flat_input", lambda _body, _type: None)
        try:
            return parse_predict_body(raw, input_type, shape)
        except InputError as exc:
            return exc


@settings(max_examples=400, deadline=None)
@given(
    tokens=st.lists(_TOKENS, max_size=12),
    separator=st.sampled_from([",", ", ", " ,\n"]),
    wrapper=_WRAPPERS,
    input_type=st.sampled_from(NUMERIC),
    shape=st.sampled_from([None, (3,)]),
)
def test_the_flat_path_answers_exactly_what_the_general_path_does(
    tokens, separator, wrapper, input_type, shape
):
    raw = (wrapper % separator.join(tokens)).encode()
    expected = _answer(raw, input_type, shape, general=True)
    flat = inputs_module._flat_input(raw, input_type)
    if flat is not None and (shape is None or flat.shape == shape):
        # Taken: the general path must accept it, equal to the bit.
        assert isinstance(expected, PredictRequest), (raw, expected)
        (want,) = expected.inputs
        assert flat.dtype == want.dtype and flat.tobytes() == want.tobytes(), raw
    got = _answer(raw, input_type, shape, general=False)
    if isinstance(expected, InputError):
        assert isinstance(got, InputError) and str(got) == str(expected), raw
        return
    assert isinstance(got, PredictRequest), (raw, got)
    fields = ("is_batch", "version", "uid")
    assert [getattr(got, f) for f in fields] == [getattr(expected, f) for f in fields]
    for a, b in zip(got.inputs, expected.inputs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), raw


def test_the_flat_path_takes_the_common_body_and_leaves_the_rest():
    assert inputs_module._flat_input(b'{"input": [1, 2.5, -3e2]}', InputType.DOUBLES) is not None
    ints = inputs_module._flat_input(b'{"input": [1, -2, 2147483647]}', InputType.INTEGERS)
    assert ints is not None and ints.dtype == np.int32 and ints.tolist() == [1, -2, 2147483647]
    for raw in (
        b'{"input": [[1, 2]]}',  # nested: as_buffer would flatten it
        b'{"input": [1, [2]]}',
        b'{"input": []}',
        b'{"input": [1], "uid": 3}',
        b'{"input": [1e400]}',
        b'{"input": [1, true]}',
    ):
        assert inputs_module._flat_input(raw, InputType.DOUBLES) is None, raw
    assert inputs_module._flat_input(b'{"input": [2147483648]}', InputType.INTEGERS) is None
    assert inputs_module._flat_input(b'{"input": [1.5]}', InputType.INTEGERS) is None
    assert inputs_module._flat_input(b'{"input": [3.5e38]}', InputType.FLOATS) is None


def test_a_label_nested_too_deep_is_a_clear_error_not_a_crash():
    deep = b'{"a":' * 400 + b"1" + b"}" * 400
    body = b'{"uid": 0, "input": [1.0], "label": ' + deep + b"}"
    with pytest.raises(InputError, match="label: JSON nested deeper than"):
        parse_update_body(body, InputType.DOUBLES, None)
