import msgpack
import numpy as np
import pytest

from clipper.exceptions import RPCError
from clipper.rpc import protocol as p


def roundtrip(input_type, inputs):
    fields, frames = p.encode_inputs(input_type, inputs)
    header = p.parse_header(p.make(p.BATCH, id=1, input_type=input_type, **fields))
    return header, p.decode_inputs(header, [bytes(f) for f in frames])


def test_rectangular_numeric_batch_travels_as_one_2d_array():
    inputs = [np.arange(4, dtype=np.float64) + i for i in range(3)]
    header, out = roundtrip("doubles", inputs)
    assert header["encoding"] == "array"
    assert isinstance(out, np.ndarray) and out.shape == (3, 4) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.stack(inputs))


@pytest.mark.parametrize(("input_type", "dtype"), [("integers", np.int32), ("floats", np.float32)])
def test_numeric_dtypes(input_type, dtype):
    _, out = roundtrip(input_type, [np.array([1, 2], dtype=dtype)])
    assert out.dtype == dtype and out.shape == (1, 2)


def test_ragged_numeric_batch_is_a_list_of_arrays():
    inputs = [np.array([1.0]), np.array([1.0, 2.0])]
    header, out = roundtrip("doubles", inputs)
    assert header["encoding"] == "arrays"
    assert [a.tolist() for a in out] == [[1.0], [1.0, 2.0]]


def test_multidimensional_inputs_keep_their_shape():
    _, out = roundtrip("floats", [np.ones((2, 3), dtype=np.float32)] * 2)
    assert out.shape == (2, 2, 3)


def test_bytes_strings_json():
    assert roundtrip("bytes", [b"\x00\xff", b""])[1] == [b"\x00\xff", b""]
    assert roundtrip("strings", ["a", "ü"])[1] == ["a", "ü"]
    assert roundtrip("json", [{"a": [1, None]}, 3])[1] == [{"a": [1, None]}, 3]


def test_outputs_convert_numpy_values():
    frames = p.encode_result_ok(7, [np.int64(3), np.float32(0.5), np.array([1, 2])])
    header = p.parse_header(frames[0])
    assert header["ok"] is True and header["id"] == 7
    assert p.decode_outputs(frames[1:], 3) == [3, 0.5, [1, 2]]


def test_output_count_mismatch_is_an_error():
    frames = p.encode_result_ok(1, [1, 2])
    with pytest.raises(RPCError, match="2 outputs for 3 inputs"):
        p.decode_outputs(frames[1:], 3)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\xc1garbage", "malformed"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"v": 99, "type": "heartbeat"}), "unsupported protocol version 99"),
        (msgpack.packb({"v": 1, "type": "bogus"}), "unknown message type"),
        (msgpack.packb({"type": "heartbeat"}), "protocol version None"),
    ],
)
def test_bad_headers_are_rejected(frame, match):
    with pytest.raises(RPCError, match=match):
        p.parse_header(frame)


@pytest.mark.parametrize(
    ("fields", "frames"),
    [
        ({"encoding": "array", "dtype": "<f8", "shape": [2, 2], "count": 2}, [b"\x00" * 8]),
        ({"encoding": "array", "dtype": "<f8", "shape": [1, 1], "count": 1}, []),
        ({"encoding": "arrays", "dtype": "<f8", "shapes": [[1]], "count": 2}, [b"\x00" * 8]),
        ({"encoding": "frames", "count": 2}, [b"a"]),
        ({"encoding": "msgpack", "count": 2}, [msgpack.packb(["a"])]),
        ({"encoding": "nope", "count": 1}, [b""]),
        ({"encoding": "array", "count": 1}, [b""]),
        ({"encoding": "array", "count": "x"}, [b""]),
    ],
)
def test_inconsistent_batches_are_rejected(fields, frames):
    with pytest.raises(RPCError):
        p.decode_inputs(fields, frames)


def test_what_a_peer_sent_is_summed_up_short_and_escaped_for_logs():
    assert p.summary("m") == "'m'"
    forged = p.summary("m\n2001-01-01 INFO forged\x1b[31m" + "x" * 1000, 40)
    assert "\n" not in forged and "\x1b" not in forged and len(forged) < 60
    assert forged.endswith("…")
    assert p.summary(b"\x00" * 1000, 8) == repr(b"\x00" * 8) + "…"
    assert p.summary(["x" * 10**6]) == "<list>" and p.summary(7) == "7"
    # The errors parse_header raises carry a summary, not the peer's value.
    with pytest.raises(RPCError) as raised:
        p.parse_header(msgpack.packb({"v": 1, "type": "x\n" * 10_000}))
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 200


def test_a_result_error_is_cut_when_encoded_and_when_received():
    header = p.parse_header(p.encode_result_error(1, "T" * 1000, "e" * 10_000)[0])
    assert len(header["error_type"]) == p.MAX_ERROR_TYPE
    assert len(header["error_message"]) == p.MAX_ERROR_MESSAGE
    received = {"error_type": {"a": 1}, "error_message": "e" * 10_000}
    p.bound_error(received)
    assert received == {"error_type": "{'a': 1}", "error_message": "e" * 1999 + "…"}


def test_a_batch_message_is_its_header_then_the_inputs_frames_zero_copy():
    inputs = [np.arange(3, dtype=np.float64), np.arange(3, dtype=np.float64) + 1]
    frames = p.encode_batch(4, "doubles", inputs, time_limit_s=2.5)
    header = p.parse_header(frames[0])
    assert header["type"] == p.BATCH and header["id"] == 4 and header["time_limit_s"] == 2.5
    assert isinstance(frames[1], memoryview)  # a view of the stacked array, not a copy
    np.testing.assert_array_equal(p.decode_inputs(header, frames[1:]), np.stack(inputs))
    assert "time_limit_s" not in p.parse_header(p.encode_batch(5, "strings", ["a"])[0])


def test_a_result_decodes_to_its_outputs_or_why_there_are_none():
    ok = p.encode_result_ok(1, [1, "two"])
    assert p.decode_result(p.parse_header(ok[0]), ok[1:]) == [1, "two"]  # count unchecked
    failed = p.encode_result_error(2, "ValueError", "boom")
    assert p.decode_result(p.parse_header(failed[0]), []) == p.ModelRaised("ValueError", "boom")
    bare = {"v": 1, "type": p.RESULT, "id": 3, "ok": False}
    assert p.decode_result(bare, []) == p.ModelRaised("Error", "")
    unreadable = p.decode_result(p.parse_header(ok[0]), [b"\xc1"])
    assert isinstance(unreadable, p.BadResult) and "malformed msgpack" in unreadable.reason
    two_frames = p.decode_result(p.parse_header(ok[0]), [ok[1], ok[1]])
    assert two_frames == p.BadResult("result expects 1 outputs frame, got 2")
