"""The RPC wire protocol between the frontend and model containers (pure, no I/O).

A message is a list of ZeroMQ frames: one msgpack header (a map with ``v``,
the protocol version, and ``type``), then zero or more raw data frames that
the header describes. The frontend binds a ROUTER; each container connects
a DEALER, so the ROUTER sees an identity frame first, which this module
never handles.

Message types (see docs/rpc-protocol.md for the full specification):

- ``register`` (container → frontend): model name, version, input type,
  pid, a replica label and the frontend's secret. Answered by ``registered``
  (which carries the frontend's size limit, ``max_message_bytes``) or
  ``rejected``.
- ``heartbeat`` (both ways): liveness. A frontend that does not know the
  sender answers a heartbeat with ``reregister``.
- ``batch`` (frontend → container): a batch id, the input type and an
  encoding of the inputs in the data frames.
- ``result`` (container → frontend): the batch id and either ``outputs``
  (one per input, with ``errors``/``bad_outputs`` naming the inputs the
  model failed on, when the frontend announced the ``input_errors``
  feature) or ``error_type``/``error_message`` for the whole batch.
- ``goodbye`` (container → frontend): a clean shutdown.

Inputs travel as raw buffers: a rectangular numeric batch as one 2-D (or
N-D) array frame (``encoding: "array"``, with dtype and shape), a ragged
numeric batch as one frame per input (``"arrays"``, with shapes), bytes as
one frame per input (``"frames"``), strings and JSON values in a msgpack
frame (``"msgpack"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from ..exceptions import RPCError
from ..types import NUMERIC_FORMATS

PROTOCOL_VERSION = 1

REGISTER = "register"
REGISTERED = "registered"
REJECTED = "rejected"
REREGISTER = "reregister"
HEARTBEAT = "heartbeat"
BATCH = "batch"
RESULT = "result"
GOODBYE = "goodbye"
MESSAGE_TYPES = frozenset(
    {REGISTER, REGISTERED, REJECTED, REREGISTER, HEARTBEAT, BATCH, RESULT, GOODBYE}
)

# Input type name → the dtype of its array frames (little-endian), from the types' table.
NUMERIC_DTYPES: dict[str, str] = {t.value: f.dtype for t, f in NUMERIC_FORMATS.items()}
MAX_HEADER_BYTES = 1 << 20

# -- limits on what a peer may send the frontend ----------------------------------
# The largest frame the frontend accepts (ZeroMQ's MAXMSGSIZE on its ROUTER:
# a peer that sends a larger frame is disconnected). Sent to containers in
# ``registered`` as ``max_message_bytes``; a container checks its result
# against it and reports an error result instead of sending one over it.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Frames in one message (the header included, ZeroMQ's identity frame not):
# a registered container's largest message is an ok ``result`` (header and
# outputs); anyone else may only send header-only messages (``register``,
# ``heartbeat``, ``goodbye``).
MAX_FRAMES_REGISTERED = 2
MAX_FRAMES_UNREGISTERED = 1
# The header of a peer that has not registered (a ``register`` is well
# under 1 KiB): parsing a stranger's message costs little.
MAX_UNREGISTERED_HEADER_BYTES = 16 * 1024
# A model's error as the frontend keeps it (the container cuts it too).
MAX_ERROR_MESSAGE = 2000
MAX_ERROR_TYPE = 200
# The error type a container reports when its result is over the size limit.
RESULT_TOO_LARGE = "ResultTooLarge"

# Features a frontend announces in ``registered`` (``features``): what a
# container may send it beyond version 1's first form. ``input_errors``: an ok
# ``result`` may name the inputs the model failed on (``errors``,
# ``bad_outputs``), so one bad input no longer fails its whole batch.
INPUT_ERRORS = "input_errors"
FEATURES: tuple[str, ...] = (INPUT_ERRORS,)
# The per-input errors of one ok ``result`` are cut to fit this many bytes of
# header (at least MIN_INPUT_ERROR_CHARS characters each); a container whose
# errors still do not fit sends the batch's first error for the whole batch.
INPUT_ERRORS_BUDGET = 256 * 1024
MIN_INPUT_ERROR_CHARS = 40

# Frames: bytes, memoryviews or zmq.Frame objects, as pyzmq accepts them.
Frames = list[Any]

# Below this many elements a float32 array is converted element by element
# (numpy's own shortest repr); above, by the vectorised search (faster).
_SHORTEST_VECTOR_FROM = 64
_POW10 = np.array([10.0**k for k in range(23)])  # exact doubles: 10^0 .. 10^22


def narrow_floats(arr: np.ndarray) -> list[Any] | Any:
    """A float16/float32 array (or scalar) as Python floats that print as the
    model meant them: each the double nearest the shortest decimal that reads
    back as the same float32 (``0.33333334``, not ``0.3333333432674408``).

    Small arrays go through numpy's shortest repr, element by element; larger
    ones through a vectorised search over 6 to 9 significant digits (about 0.1
    µs an element, a tenth of the per-element cost), checked by reading each
    candidate back as float32; what it cannot settle (tiny or huge magnitudes,
    NaN, infinity) falls back to the repr.
    """
    ref = np.asarray(arr)
    flat = ref.reshape(-1)
    if flat.size < _SHORTEST_VECTOR_FROM:
        out = np.array([float(str(v)) for v in flat], dtype=np.float64)
    else:
        out = _shortest_vector(flat)
    return out.reshape(ref.shape).tolist()


def _shortest_vector(ref: np.ndarray) -> np.ndarray:
    values = ref.astype(np.float64)
    out = values.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.floor(np.log10(np.abs(values)))
    # Finite, nonzero, and every power of ten used below is an exact double, so
    # each candidate m / 10^k (or m * 10^k) is the double nearest that decimal.
    exact = (exp >= -13) & (exp <= 21)
    slow = np.flatnonzero(~exact)
    idx = np.flatnonzero(exact)
    v, e, want = values[idx], exp[idx].astype(np.int64), ref[idx]
    for digits in (6, 7, 8, 9):  # float32 needs at most 9 significant digits
        k = (digits - 1) - e
        neg = k < 0
        scale = _POW10[np.abs(k)]
        scaled = v * scale
        scaled[neg] = v[neg] / scale[neg]
        m = np.rint(scaled)
        cand = m / scale
        cand[neg] = m[neg] * scale[neg]
        hit = cand.astype(ref.dtype) == want
        out[idx[hit]] = cand[hit]
        miss = ~hit
        idx, v, e, want = idx[miss], v[miss], e[miss], want[miss]
        if not idx.size:
            break
    for i in (*slow.tolist(), *idx.tolist()):
        out[i] = float(str(ref[i]))
    return out


def plain_outputs(outputs: Any) -> list[Any]:
    """A model's outputs as a list (its length unchecked): a numpy array as
    nested Python values in one go (float32 and float16 at their own
    precision, ``narrow_floats``); anything else as ``list(outputs)``."""
    if isinstance(outputs, np.ndarray):
        if outputs.dtype.kind == "f" and outputs.dtype.itemsize < 8:
            result = narrow_floats(outputs)
        else:
            result = outputs.tolist()
        if isinstance(result, list):
            return result
    return list(outputs)


def _default(obj: Any) -> Any:
    # Models often return numpy scalars or arrays; send them as plain values
    # (float32 and float16 at their own precision, not widened).
    if isinstance(obj, np.generic):
        if isinstance(obj, np.floating) and obj.itemsize < 8:
            return float(str(obj))
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and obj.dtype.itemsize < 8:
            return narrow_floats(obj)
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def plain_value(value: Any) -> Any:
    """A model's output as plain Python values: a numpy array or scalar (or a
    torch tensor) as nested lists and numbers, float32 and float16 at their own
    precision; anything else unchanged. For deployers' closures."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray | np.generic):
        return _default(value)
    return value


def pack(obj: Any) -> bytes:
    """msgpack-encode a header or value, converting numpy values."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    """msgpack-decode, raising RPCError on malformed data."""
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, max_bin_len=1 << 30, max_str_len=1 << 30
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise RPCError(f"malformed msgpack data: {exc}") from exc


def make(msg_type: str, **fields: Any) -> bytes:
    """Encode a header frame."""
    return pack({"v": PROTOCOL_VERSION, "type": msg_type, **fields})


def spare_packer() -> msgpack.Packer:
    """A packer made in advance, for the messages that must still go out once
    memory has run out: a new packer allocates its buffer (a megabyte) on every
    call, which fails past a replica's memory limit. Not thread-safe: give each
    user its own."""
    return msgpack.Packer(use_bin_type=True)


def make_spare(packer: msgpack.Packer, msg_type: str, **fields: Any) -> bytes:
    """``make`` with a ``spare_packer`` (plain field values only)."""
    data: bytes = packer.pack({"v": PROTOCOL_VERSION, "type": msg_type, **fields})
    return data


def parse_header(frame: bytes | memoryview, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """Decode and check a header frame: a map with a known version and type."""
    if len(frame) > max_bytes:
        raise RPCError(f"header of {len(frame)} bytes exceeds {max_bytes}")
    header = unpack(frame)
    if not isinstance(header, dict):
        raise RPCError("header is not a map")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise RPCError(f"unsupported protocol version {summary(version)} (this side speaks 1)")
    msg_type = header.get("type")
    if msg_type not in MESSAGE_TYPES:
        raise RPCError(f"unknown message type {summary(msg_type)}")
    return header


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (an ellipsis marks a cut)."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def summary(value: Any, limit: int = 80) -> str:
    """A short, printable description of a value a peer sent, for log lines:
    strings and bytes cut before ``repr`` (which escapes newlines and control
    characters), anything else by its type only."""
    if isinstance(value, str | bytes):
        text = repr(value[:limit])
        return text + "…" if len(value) > limit else text
    if value is None or isinstance(value, bool | int | float):
        return cut(repr(value), limit)
    return f"<{type(value).__name__}>"


def frames_size(frames: Sequence[Any]) -> int:
    """Total bytes of a message's frames (bytes, memoryviews or zmq.Frame)."""
    return sum(memoryview(f).nbytes for f in frames)


# -- encryption --------------------------------------------------------------


def curve_keypair(directory: str) -> tuple[bytes, bytes]:
    """The frontend's CurveZMQ (public, secret) key pair, made once and kept in
    ``directory`` (the secret readable by its owner only)."""
    import os

    import zmq

    public_path = os.path.join(directory, "server.key")
    secret_path = os.path.join(directory, "server.key_secret")
    if not os.path.exists(secret_path):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        public, secret = zmq.curve_keypair()
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        with open(public_path, "wb") as f:
            f.write(public)
    with open(public_path, "rb") as f, open(secret_path, "rb") as g:
        return f.read().strip(), g.read().strip()


# -- inputs ------------------------------------------------------------------


def encode_inputs(input_type: str, inputs: Sequence[Any]) -> tuple[dict[str, Any], Frames]:
    """Encode one batch of validated inputs as header fields plus data frames.

    Rectangular numeric batches become a single stacked array frame, so the
    container receives a 2-D array without copying per element.
    """
    count = len(inputs)
    if input_type in NUMERIC_DTYPES:
        dtype = NUMERIC_DTYPES[input_type]
        first = inputs[0].shape if count else ()
        if count and all(a.shape == first for a in inputs):
            batch = np.stack(inputs) if count > 1 else inputs[0][np.newaxis, ...]
            batch = np.ascontiguousarray(batch, dtype=dtype)
            return (
                {"encoding": "array", "dtype": dtype, "shape": list(batch.shape), "count": count},
                [batch.data.cast("B")],
            )
        arrays = [np.ascontiguousarray(a, dtype=dtype) for a in inputs]
        return (
            {
                "encoding": "arrays",
                "dtype": dtype,
                "shapes": [list(a.shape) for a in arrays],
                "count": count,
            },
            [a.data.cast("B") for a in arrays],
        )
    if input_type == "bytes":
        return {"encoding": "frames", "count": count}, list(inputs)
    return {"encoding": "msgpack", "count": count}, [pack(list(inputs))]


def encode_batch(
    batch_id: int,
    input_type: str,
    inputs: Sequence[Any],
    time_limit_s: float | None = None,
    deadline_s: float | None = None,
) -> Frames:
    """A ``batch`` message: its header, then the inputs' data frames (arrays
    as zero-copy views). Raises when the inputs do not fit the input type.

    ``deadline_s``: seconds until the last of the batch's queries is answered
    anyway (its deadline); a container isolating a failing input stops then."""
    fields, frames = encode_inputs(input_type, inputs)
    if time_limit_s is not None:
        fields["time_limit_s"] = time_limit_s
    if deadline_s is not None:
        fields["deadline_s"] = deadline_s
    return [make(BATCH, id=batch_id, input_type=input_type, **fields), *frames]


def decode_inputs(header: dict[str, Any], frames: Sequence[bytes | memoryview]) -> Any:
    """Decode the inputs of a ``batch`` message (container side).

    Returns a 2-D (N-D) numpy array for a rectangular numeric batch, a list of
    arrays for a ragged one, and a list otherwise. Raises RPCError when the
    header and frames disagree.
    """
    encoding = header.get("encoding")
    count = header.get("count")
    if not isinstance(count, int) or count < 0:
        raise RPCError("batch header lacks a valid 'count'")
    try:
        if encoding == "array":
            dtype = np.dtype(header["dtype"])
            shape = tuple(int(d) for d in header["shape"])
            if len(frames) != 1:
                raise RPCError(f"'array' encoding expects 1 data frame, got {len(frames)}")
            arr = np.frombuffer(frames[0], dtype=dtype)
            if arr.size != int(np.prod(shape)) or shape[0] != count:
                raise RPCError(f"array frame does not match shape {shape}")
            return arr.reshape(shape)
        if encoding == "arrays":
            dtype = np.dtype(header["dtype"])
            shapes = header["shapes"]
            if len(frames) != count or len(shapes) != count:
                raise RPCError("'arrays' encoding: frame count does not match 'count'")
            out = []
            for frame, shape in zip(frames, shapes, strict=True):
                arr = np.frombuffer(frame, dtype=dtype)
                out.append(arr.reshape(tuple(int(d) for d in shape)))
            return out
        if encoding == "frames":
            if len(frames) != count:
                raise RPCError("'frames' encoding: frame count does not match 'count'")
            return [bytes(f) for f in frames]
        if encoding == "msgpack":
            if len(frames) != 1:
                raise RPCError("'msgpack' encoding expects 1 data frame")
            values = unpack(frames[0])
            if not isinstance(values, list) or len(values) != count:
                raise RPCError("'msgpack' encoding: value is not a list of 'count' items")
            return values
    except RPCError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise RPCError(f"malformed batch header: {exc}") from exc
    raise RPCError(f"unknown input encoding {encoding!r}")


# -- outputs -----------------------------------------------------------------


def encode_result_ok(
    batch_id: int,
    outputs: list[Any] | bytes,
    errors: Sequence[tuple[int, str, str]] = (),
    bad_outputs: Sequence[tuple[int, str]] = (),
    *,
    finite: bool = False,
) -> Frames:
    """A ``result`` message carrying outputs (container side): a list, or
    already packed. ``errors`` (index, error type, message): inputs the model
    raised on; ``bad_outputs`` (index, reason): outputs that cannot be sent;
    the outputs hold nil at those indices. ``finite``: the container checked
    that no output holds NaN or infinity (the frontend need not look). Only
    for a frontend that announced ``input_errors``."""
    fields: dict[str, Any] = {"finite": True} if finite else {}
    if errors:
        fields["errors"] = [list(e) for e in errors]
    if bad_outputs:
        fields["bad_outputs"] = [list(b) for b in bad_outputs]
    data = outputs if isinstance(outputs, bytes) else pack(outputs)
    return [make(RESULT, id=batch_id, ok=True, **fields), data]


def encode_result_error(
    batch_id: int, error_type: str, message: str, packer: msgpack.Packer | None = None
) -> Frames:
    """A ``result`` message carrying an error as data (container side); with
    ``packer`` (a ``spare_packer``), without allocating a new packer."""
    fields = {
        "id": batch_id,
        "ok": False,
        "error_type": cut(error_type, MAX_ERROR_TYPE),
        "error_message": cut(message, MAX_ERROR_MESSAGE),
    }
    if packer is not None:
        return [make_spare(packer, RESULT, **fields)]
    return [make(RESULT, **fields)]


def bound_error(header: dict[str, Any]) -> None:
    """Cut a failed ``result``'s ``error_type`` and ``error_message`` in place
    (frontend side: whatever a container sends, the explanation stays short)."""
    for key, limit in (("error_type", MAX_ERROR_TYPE), ("error_message", MAX_ERROR_MESSAGE)):
        if key in header:
            value = header[key]
            text = value if isinstance(value, str) else str(value)  # a bounded header
            header[key] = cut(text, limit)


def decode_outputs(frames: Sequence[bytes | memoryview], expected: int | None = None) -> list[Any]:
    """Decode the outputs frame of an ok ``result`` and check the count (if given)."""
    if len(frames) != 1:
        raise RPCError(f"result expects 1 outputs frame, got {len(frames)}")
    outputs = unpack(frames[0])
    if not isinstance(outputs, list):
        raise RPCError("outputs frame is not a list")
    if expected is not None and len(outputs) != expected:
        raise RPCError(count_mismatch(len(outputs), expected))
    return outputs


def count_mismatch(outputs: int, inputs: int) -> str:
    return f"model returned {outputs} outputs for {inputs} inputs"


@dataclass(frozen=True, slots=True)
class ModelRaised:
    """A failed ``result``: the model raised (its exception's type and message)."""

    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class BadResult:
    """An ok ``result`` whose outputs could not be read (``reason``: why); in
    a ``PartialOutputs``, one output that cannot be used (NaN, say)."""

    reason: str


class PartialOutputs(list[Any]):
    """The outputs of a batch the model failed on in part: the failed inputs'
    places hold a ``ModelRaised`` (it raised on that input) or a ``BadResult``
    (its output cannot be used); ``failed`` counts them. A batch that fully
    succeeded decodes to a plain list (no extra work for it)."""

    failed: int = 0


# A batch's result as the frontend's listener hears it: the outputs, in order
# (their count unchecked: the RPC layer does not know the batch), or a failure.
BatchResult = list[Any] | ModelRaised | BadResult


def decode_result(header: dict[str, Any], frames: Sequence[bytes | memoryview]) -> BatchResult:
    """A ``result`` message (header parsed, data frames) as a ``BatchResult``:
    per-input errors and non-finite outputs (NaN, infinity: JSON has no such
    numbers) in their outputs' places, as a ``PartialOutputs``."""
    if header.get("ok") is not True:
        error_type = str(header.get("error_type", "Error"))
        return ModelRaised(error_type, str(header.get("error_message", "")))
    try:
        outputs = decode_outputs(frames)
    except RPCError as exc:
        return BadResult(str(exc))
    errors, bad = header.get("errors"), header.get("bad_outputs")
    # A container that checked says so; any other one's outputs are scanned.
    nonfinite = header.get("finite") is not True and may_hold_nonfinite(frames[0])
    if errors is None and bad is None and not nonfinite:
        return outputs  # the common case: nothing more to look at
    partial = PartialOutputs(outputs)
    try:
        for index, error_type, message in _entries(errors, 3, len(outputs)):
            partial[index] = ModelRaised(
                cut(error_type, MAX_ERROR_TYPE), cut(message, MAX_ERROR_MESSAGE)
            )
        for index, reason in _entries(bad, 2, len(outputs)):
            partial[index] = BadResult(cut(reason, MAX_ERROR_MESSAGE))
    except RPCError as exc:
        return BadResult(str(exc))
    if nonfinite:
        for i, value in enumerate(partial):
            what = nonfinite_in(value)
            if what is not None:
                partial[i] = BadResult(nonfinite_reason(what))
    partial.failed = sum(isinstance(o, ModelRaised | BadResult) for o in partial)
    return partial if partial.failed else outputs


def _entries(field: Any, width: int, count: int) -> list[tuple[Any, ...]]:
    """A result's ``errors`` (width 3) or ``bad_outputs`` (width 2), checked:
    each an input's index, then strings."""
    if field is None:
        return []
    if not isinstance(field, list) or len(field) > count:
        raise RPCError("a result's per-input errors are not a list of at most 'count' entries")
    out = []
    for entry in field:
        if (
            not isinstance(entry, list)
            or len(entry) != width
            or type(entry[0]) is not int
            or not 0 <= entry[0] < count
            or not all(isinstance(x, str) for x in entry[1:])
        ):
            raise RPCError(f"malformed per-input error {summary(entry)} in a result")
        out.append(tuple(entry))
    return out


def nonfinite_reason(what: str) -> str:
    """Why an output holding NaN or infinity (``what``) is a model error."""
    return f"an output holding {what}, which JSON cannot carry"


def may_hold_nonfinite(frame: bytes | memoryview) -> bool:
    """Whether packed msgpack data may hold a NaN or infinite float.

    Such a float is msgpack's float64 marker (0xcb) or float32 marker (0xca),
    then a big-endian sign and exponent of all ones: the byte after the
    marker is 0x7f or 0xff. Those two bytes are rare in packed numbers and
    absent from ASCII text, so the scan looks for them (memchr-fast) and
    checks each one's neighbours; on the side of caution (a string or a
    mantissa may hold the same bytes: the outputs are then checked one by
    one, ``nonfinite_in``)."""
    data = frame if isinstance(frame, bytes) else bytes(frame)
    end = len(data) - 1
    for exponent in (0x7F, 0xFF):
        at = data.find(exponent, 1)
        while 0 < at < end:
            marker = data[at - 1]
            if (marker == 0xCB and data[at + 1] >= 0xF0) or (
                marker == 0xCA and data[at + 1] >= 0x80
            ):
                return True
            at = data.find(exponent, at + 1)
    return False


def nonfinite_in(value: Any) -> str | None:
    """``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` if ``value`` holds such a
    float (at any depth), else None."""
    if type(value) is float:
        if math.isfinite(value):
            return None
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        items: Any = value
    elif isinstance(value, dict):
        items = (*value.keys(), *value.values())
    else:
        return None
    for item in items:
        found = nonfinite_in(item)
        if found is not None:
            return found
    return None
