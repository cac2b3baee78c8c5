"""The wire's outputs: per-input errors in an ok result, NaN and infinity found
in the packed bytes, and float32 outputs at their own precision."""

import math

import msgpack
import numpy as np
import pytest

from clipper.rpc import protocol as p


def result(outputs, **fields):
    frames = p.encode_result_ok(9, outputs, **fields)
    return p.decode_result(p.parse_header(frames[0]), frames[1:])


def test_a_result_without_failures_decodes_to_a_plain_list():
    got = result([1, "a", [2.5, None], {"k": 1.0}])
    assert type(got) is list and got == [1, "a", [2.5, None], {"k": 1.0}]


def test_per_input_errors_take_their_inputs_places():
    got = result(
        [None, 4.0, None],
        errors=[(0, "ValueError", "negative first feature: -3.0")],
        bad_outputs=[(2, "an output that cannot be sent (TypeError: no)")],
    )
    assert isinstance(got, p.PartialOutputs) and got.failed == 2
    assert got[0] == p.ModelRaised("ValueError", "negative first feature: -3.0")
    assert got[1] == 4.0
    assert got[2] == p.BadResult("an output that cannot be sent (TypeError: no)")


@pytest.mark.parametrize(
    "errors",
    [
        "not a list",
        [[0, "ValueError"]],  # too short
        [[5, "ValueError", "out of range"]],
        [[True, "ValueError", "a bool is no index"]],
        [[0, 1, "type not a string"]],
        [[0, "E", "m"], [1, "E", "m"], [2, "E", "m"]],  # more entries than outputs
    ],
)
def test_malformed_per_input_errors_make_a_bad_result(errors):
    header = {"v": 1, "type": "result", "id": 1, "ok": True, "errors": errors}
    got = p.decode_result(header, [p.pack([None, None])])
    assert isinstance(got, p.BadResult) and "per-input error" in got.reason


def test_per_input_error_texts_are_cut():
    got = result([None], errors=[(0, "E" * 500, "m" * 5000)])
    assert isinstance(got, p.PartialOutputs)
    raised = got[0]
    assert isinstance(raised, p.ModelRaised)
    assert len(raised.error_type) == p.MAX_ERROR_TYPE and raised.error_type.endswith("…")
    assert len(raised.message) == p.MAX_ERROR_MESSAGE


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        ([1.0, [2.0, math.nan]], "NaN"),
        ({"score": math.inf}, "Infinity"),
    ],
)
def test_nan_and_infinite_outputs_fail_their_input_only(value, what):
    got = result([1.5, value, "ok"])
    assert isinstance(got, p.PartialOutputs) and got.failed == 1
    assert got[0] == 1.5 and got[2] == "ok"
    assert got[1] == p.BadResult(f"an output holding {what}, which JSON cannot carry")


def test_float32_nan_from_another_container_is_found_too():
    data = msgpack.packb([1.0, float("nan")], use_single_float=True)
    header = {"v": 1, "type": "result", "id": 1, "ok": True}
    got = p.decode_result(header, [data])
    assert isinstance(got, p.PartialOutputs) and isinstance(got[1], p.BadResult)


def test_bytes_that_look_like_a_nan_are_not_one():
    # The scan is cautious: a string holding the same bytes is checked, and passes.
    tricky = b"\xcb\x7f\xff\xca\xff\xff"
    got = result([tricky, 1.0e308, -1.0e308])
    assert type(got) is list and got == [tricky, 1.0e308, -1.0e308]


def test_the_frontend_announces_per_input_errors():
    assert p.INPUT_ERRORS in p.FEATURES


def test_batches_carry_the_time_left_until_their_deadline():
    frames = p.encode_batch(3, "doubles", [np.array([1.0])], time_limit_s=5.0, deadline_s=0.25)
    header = p.parse_header(frames[0])
    assert header["deadline_s"] == 0.25 and header["time_limit_s"] == 5.0


# -- float32 at its own precision ---------------------------------------------------------


def test_float32_scalars_and_arrays_are_sent_at_their_own_precision():
    third = np.float32(1) / np.float32(3)
    assert p.unpack(p.pack(third)) == 0.33333334
    assert repr(p.unpack(p.pack([third]))[0]) == "0.33333334"
    assert p.unpack(p.pack(np.array([[0.1, 0.2]], dtype=np.float32))) == [[0.1, 0.2]]
    assert p.unpack(p.pack(np.float16(1) / np.float16(3))) == 0.3333
    # float64 stays as it was.
    assert p.unpack(p.pack(np.float64(1) / 3)) == 1 / 3


@pytest.mark.parametrize("size", [5, 63, 64, 1000])
def test_narrow_floats_match_numpys_shortest_repr(size):
    rng = np.random.default_rng(size)
    values = (rng.standard_normal(size) * 10.0 ** rng.integers(-40, 39, size)).astype(np.float32)
    values[: min(size, 6)] = [0.0, -0.0, 1 / 3, 16777216, 1e-45, 3.4e38][: min(size, 6)]
    got = p.narrow_floats(values)
    assert len(got) == size
    for want, have in zip(values, got, strict=True):
        assert have == float(str(want))  # the double nearest numpy's shortest decimal
        assert np.float32(have) == want  # which reads back as the same float32


def test_narrow_floats_keep_nan_and_infinity_for_the_frontend_to_refuse():
    got = p.narrow_floats(np.array([np.nan, np.inf, -np.inf, 1.5] * 20, dtype=np.float32))
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf and got[3] == 1.5


def test_plain_outputs_turn_arrays_into_lists_in_one_go():
    assert p.plain_outputs(np.array([1, 2])) == [1, 2]
    assert p.plain_outputs(np.array([[0.5], [0.25]], dtype=np.float32)) == [[0.5], [0.25]]
    assert p.plain_outputs((1, 2)) == [1, 2]
