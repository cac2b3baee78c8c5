"""Parse and validate the body of a query (``POST /{app}/predict``).

Pure functions for the hot path: no I/O, no asyncio. Every problem with a
client's input raises :class:`~clipper.exceptions.InputError` with a short
message that names the problem and where it is (``input``, ``input_batch[3]``,
``input[2][5]``); the frontend returns it as a JSON 400.

Numeric inputs become C-contiguous numpy arrays of their type's dtype, with
the ranges of :data:`~clipper.types.NUMERIC_FORMATS` (``integers`` → int32,
``floats`` → float32, ``doubles`` → float64). The commonest body, one flat
array (``{"input": [0.1, 0.2, ...]}``), goes from the JSON text straight into
a numpy buffer through simdjson, with no Python object per number; other
numeric inputs are converted without per-element Python code where their
text shows only numbers; anything unusual falls back to a slower
element-by-element walk that is the authority on what is valid and finds the
exact position of the first problem. Each faster path answers exactly what
the slower one would, or leaves the body to it (a property test checks this).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
import simdjson

from ..exceptions import InputError
from ..types import NUMERIC_FORMATS, InputType

__all__ = [
    "MAX_UID_BYTES",
    "PredictRequest",
    "check_uid",
    "describe_json_type",
    "parse_input",
    "parse_predict_body",
]

_KNOWN_FIELDS = frozenset({"input", "input_batch", "version", "uid"})
# A user id is a key of per-user selection state in the config store.
MAX_UID_BYTES = 256

# The input types' table, bound once here: nothing is looked up per query.
_DTYPES: dict[InputType, np.dtype[Any]] = {t: f.np_dtype for t, f in NUMERIC_FORMATS.items()}
_INTEGERS = NUMERIC_FORMATS[InputType.INTEGERS]
_INT_DTYPE = _INTEGERS.np_dtype
_INT_MIN = int(_INTEGERS.min_value)
_INT_MAX = int(_INTEGERS.max_value)
_FLOATS = NUMERIC_FORMATS[InputType.FLOATS]
_FLOAT_DTYPE = _FLOATS.np_dtype
_FLOAT_OVERFLOW = _FLOATS.overflow  # float64 magnitudes from here up overflow to inf
# numpy's own limit on dimensions; it also bounds the slow path's recursion.
_MAX_DIMS = 64
_NUMBER_TYPES = frozenset({int, float})


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A validated query body."""

    inputs: list[Any]  # one element per query
    is_batch: bool  # True when the body used "input_batch"
    version: str | None  # optional "version" pin
    uid: str | None = None  # optional user id, for per-user selection state


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """A validated feedback body ``{"uid", "input", "label"}``."""

    uid: str
    input: Any
    label: Any


def describe_json_type(value: object) -> str:
    """Name a JSON value's type for an error message ("a string", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a non-JSON value of type {type(value).__name__}"


def parse_predict_body(
    body: bytes,
    input_type: InputType,
    input_shape: tuple[int, ...] | None,
    max_batch_inputs: int | None = None,
) -> PredictRequest:
    """Parse a query body ``{"input": x}`` or ``{"input_batch": [x, ...]}``.

    An optional ``"version"`` pins a model version. An ``input_batch`` longer
    than ``max_batch_inputs`` is refused before any of its elements is
    converted (and, for a body long enough to hold that many, before the body
    becomes Python objects). Raises ``InputError``.
    """
    if input_type.is_numeric:
        flat = _flat_input(body, input_type)
        if flat is not None and (input_shape is None or flat.shape == tuple(input_shape)):
            return PredictRequest([flat], False, None)
    # Each input takes at least two bytes ("0,"): a shorter body cannot hold
    # more than the limit, and skips the count.
    if max_batch_inputs is not None and len(body) > 2 * max_batch_inputs:
        _refuse_long_batch(body, max_batch_inputs)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # also raised for bytes that are not UTF-8
        raise InputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"request body must be a JSON object, found {describe_json_type(doc)}")
    unknown = doc.keys() - _KNOWN_FIELDS
    if unknown:
        names = ", ".join(repr(k) for k in sorted(unknown))
        plural = "s" if len(unknown) > 1 else ""
        raise InputError(
            f"unknown field{plural} {names} "
            "(expected 'input' or 'input_batch', and optionally 'version' and 'uid')"
        )
    has_input = "input" in doc
    has_batch = "input_batch" in doc
    if has_input and has_batch:
        raise InputError("specify exactly one of 'input' and 'input_batch', not both")
    if not has_input and not has_batch:
        raise InputError("missing field: the body needs 'input' or 'input_batch'")

    version = doc.get("version")
    if "version" in doc and (not isinstance(version, str) or not version):
        found = "an empty string" if version == "" else describe_json_type(version)
        raise InputError(f"field 'version' must be a non-empty string, found {found}")

    uid = _parse_uid(doc) if "uid" in doc else None
    plain = (
        "uid" not in doc
        and input_type.is_numeric
        and isinstance(body, bytes | bytearray)
        and _has_only_plain_numbers(body, len(doc), "version" in doc)
    )
    if has_input:
        value = _parse(doc["input"], input_type, input_shape, "input", plain, finite=True)
        return PredictRequest([value], False, version, uid)

    batch = doc["input_batch"]
    if not isinstance(batch, list):
        raise InputError(
            f"field 'input_batch' must be a non-empty array, found {describe_json_type(batch)}"
        )
    if not batch:
        raise InputError("field 'input_batch' must be a non-empty array, found an empty array")
    if max_batch_inputs is not None and len(batch) > max_batch_inputs:
        raise InputError(_too_many(len(batch), max_batch_inputs))
    inputs = [
        _parse(x, input_type, input_shape, f"input_batch[{i}]", plain, finite=True)
        for i, x in enumerate(batch)
    ]
    return PredictRequest(inputs, True, version, uid)


def _too_many(n: int, limit: int) -> str:
    return f"input_batch has {n} inputs; the limit is {limit}"


def _refuse_long_batch(body: bytes, limit: int) -> None:
    """Raise when the body's ``input_batch`` holds more than ``limit`` elements.

    Counted on simdjson's tape, before orjson makes a Python object of every
    element: for 16 MiB of ``[0],`` about a tenth of orjson's time and three
    fifths of its memory, freed at once (a parser of its own: the shared one
    keeps its buffers). The field's name is in the text unless it is written
    with an escape. Anything unusual (integers beyond 64 bits, which simdjson
    refuses; a field given twice, where orjson keeps the last) is left to the
    check after orjson, which is the authority: this one saves time and memory.
    """
    if b"input_batch" not in body and b"\\" not in body:
        return
    try:
        doc = simdjson.Parser().parse(body)
    except (ValueError, TypeError, RuntimeError):  # not JSON simdjson reads
        return
    # keys() and get() leave the values on the tape (items() would convert them).
    if type(doc) is not simdjson.Object or list(doc.keys()).count("input_batch") != 1:
        return
    batch = doc.get("input_batch")
    if type(batch) is simdjson.Array and len(batch) > limit:
        raise InputError(_too_many(len(batch), limit))


def check_uid(uid: Any, where: str = "field 'uid'") -> str:
    """A user id: a non-empty string of at most ``MAX_UID_BYTES`` (UTF-8) or an
    integer, as a string. Raises ``InputError`` naming ``where``."""
    if isinstance(uid, bool) or not isinstance(uid, str | int) or uid == "":
        found = "an empty string" if uid == "" else describe_json_type(uid)
        raise InputError(f"{where} must be a non-empty string or an integer, found {found}")
    text = str(uid)
    # Cheap first: a character takes at most 4 bytes in UTF-8.
    if len(text) * 4 > MAX_UID_BYTES and len(text.encode(errors="replace")) > MAX_UID_BYTES:
        raise InputError(f"{where} is longer than the limit of {MAX_UID_BYTES} bytes (UTF-8)")
    return text


def _parse_uid(doc: dict[str, Any]) -> str:
    return check_uid(doc["uid"])


def parse_update_body(
    body: bytes, input_type: InputType, input_shape: tuple[int, ...] | None
) -> UpdateRequest:
    """Parse a feedback body ``{"uid": str|int, "input": x, "label": y}``.

    The label is any JSON value except null. Raises ``InputError``.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"request body must be a JSON object, found {describe_json_type(doc)}")
    unknown = doc.keys() - {"uid", "input", "label"}
    if unknown:
        names = ", ".join(repr(k) for k in sorted(unknown))
        raise InputError(f"unknown field(s) {names} (expected 'uid', 'input' and 'label')")
    for name in ("uid", "input", "label"):
        if name not in doc:
            raise InputError(f"missing field '{name}': feedback needs 'uid', 'input' and 'label'")
    if doc["label"] is None:
        raise InputError("field 'label' must not be null")
    if _deeper_than(doc["label"], MAX_JSON_DEPTH):
        raise InputError(f"label: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    value = parse_input(doc["input"], input_type, input_shape, "input")
    return UpdateRequest(_parse_uid(doc), value, doc["label"])


def parse_input(
    value: Any,
    input_type: InputType,
    input_shape: tuple[int, ...] | None,
    where: str = "input",
) -> Any:
    """Validate one query input (a JSON value) and convert it for ``input_type``.

    ``where`` names the input in error messages. ``input_shape`` applies to the
    numeric types only. Raises ``InputError``.
    """
    return _parse(value, input_type, input_shape, where, plain=False, finite=False)


def _parse(
    value: Any,
    input_type: InputType,
    input_shape: tuple[int, ...] | None,
    where: str,
    plain: bool,
    finite: bool,
) -> Any:
    """``parse_input`` with hints from the caller.

    ``plain``: the leaves of ``value`` are known to be ints and floats only (no
    booleans, strings or nulls). ``finite``: no float is inf or NaN (orjson
    guarantees it for what it parses).
    """
    if input_type.is_numeric:
        arr = None
        if type(value) is list and value and (plain or _leaves_are_numbers(value)):
            arr = _to_array(value, input_type, finite)
        if arr is None:
            arr = _parse_numeric_slow(value, input_type, where)
        if input_shape is not None and arr.shape != tuple(input_shape):
            raise InputError(f"{where}: expected shape {tuple(input_shape)}, found {arr.shape}")
        return arr
    if input_type is InputType.STRINGS:
        if not isinstance(value, str):
            raise InputError(
                f"{where}: expected a string for input type 'strings', "
                f"found {describe_json_type(value)}"
            )
        return value
    if input_type is InputType.BYTES:
        if not isinstance(value, str):
            raise InputError(
                f"{where}: expected a base64 string for input type 'bytes', "
                f"found {describe_json_type(value)}"
            )
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
            raise InputError(f"{where}: invalid base64 for input type 'bytes': {exc}") from None
    if input_type is InputType.JSON:
        if _deeper_than(value, MAX_JSON_DEPTH):
            raise InputError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        return value
    raise InputError(f"unsupported input type {input_type!r}")


# JSON outputs and cache keys are encoded with orjson, which stops at 255 levels.
MAX_JSON_DEPTH = 128


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether a JSON value nests more than ``limit`` arrays/objects (iteratively)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list | dict):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, list | dict))
    return False


# -- numeric fast paths ---------------------------------------------------------

# One parser, reused: it keeps its buffers between documents. Only the event
# loop's thread parses query bodies.
_SIMD = simdjson.Parser()
# JSON numbers are read as int64 (integral types: a fraction is a parse error)
# or float64, then checked against the type's range and cast.
_BUFFER_TYPE: dict[InputType, Literal["i", "d"]] = {
    t: "i" if f.integral else "d" for t, f in NUMERIC_FORMATS.items()
}
_BOM = b"\xef\xbb\xbf"  # simdjson skips it; orjson (the authority) refuses it


def _flat_input(body: bytes, input_type: InputType) -> npt.NDArray[Any] | None:
    """``{"input": [n, ...]}`` with one flat, non-empty array of plain numbers,
    as an array, or None for anything else (the general path decides).

    simdjson parses the text and copies the numbers into a buffer of int64 or
    float64 in C. Its ``as_buffer`` flattens nested arrays, so flatness is
    checked on the text: a body of one field whose value is an array holds
    exactly one '[' when nothing is nested (a '[' in a string fails anyway:
    strings are not numbers). Numbers JSON cannot carry (1e400, integers past
    64 bits) are parse errors here, left to the general path's messages.
    """
    if type(body) is not bytes or body.count(b"[") != 1 or body.startswith(_BOM):
        return None
    try:
        doc = _SIMD.parse(body)
        if type(doc) is not simdjson.Object or len(doc) != 1:
            return None
        value = doc.get("input")
        if type(value) is not simdjson.Array or not len(value):
            return None
        buffer = value.as_buffer(of_type=_BUFFER_TYPE[input_type])
    except (ValueError, TypeError, RuntimeError):  # invalid JSON, a non-number
        return None
    if input_type is InputType.INTEGERS:
        arr = np.frombuffer(buffer, dtype=np.int64)
        if arr.min() < _INT_MIN or arr.max() > _INT_MAX:
            return None
        return arr.astype(_INT_DTYPE)
    arr = np.frombuffer(buffer, dtype=np.float64)
    if input_type is InputType.FLOATS:
        if not np.abs(arr).max() < _FLOAT_OVERFLOW:
            return None
        return arr.astype(_FLOAT_DTYPE)
    return arr


def _has_only_plain_numbers(body: bytes | bytearray, n_fields: int, has_version: bool) -> bool:
    """Whether the raw text of a valid body shows the input holds no booleans,
    nulls or strings, so that its leaves can only be numbers.

    Checking the text is much cheaper than looking at each parsed element:
    single-byte searches run at memchr speed. ``false`` and ``null`` contain
    an 'l', which no accepted field name does; ``true`` contains a 'u', which
    only the one input field name does; every string needs two '"', and the
    field names and the version string account for exactly this many. Any
    surplus (a version with an 'l' in it, say) just means "not known", and
    the caller checks the elements instead.
    """
    if b"l" in body:
        return False
    return _occurs_exactly(body, b"u", 1) and _occurs_exactly(
        body, b'"', 2 * n_fields + (2 if has_version else 0)
    )


def _occurs_exactly(body: bytes | bytearray, byte: bytes, count: int) -> bool:
    i = -1
    for _ in range(count):
        i = body.find(byte, i + 1)
        if i < 0:
            return False
    return body.find(byte, i + 1) < 0


def _leaves_are_numbers(value: list[Any]) -> bool:
    """Whether every leaf of nested lists (as deep as the first element's) is an
    int or float, bools excluded; a set of types built by C loops, not a Python one.

    Anything irregular gives False or leaves it to numpy to reject.
    """
    depth = 0
    node: Any = value
    while type(node) is list and node and depth <= _MAX_DIMS:
        depth += 1
        node = node[0]
    items: Iterable[Any] = value
    for _ in range(depth - 1):
        items = chain.from_iterable(items)
    try:
        types = set(map(type, items))
    except TypeError:  # a number where a list should be
        return False
    return types <= _NUMBER_TYPES


def _to_array(value: list[Any], input_type: InputType, finite: bool) -> npt.NDArray[Any] | None:
    """Convert nested lists of ints and floats, or return None to leave the
    decision (and the error message) to the slow path: ragged or empty arrays,
    floats for ``integers``, values out of range or not finite.
    """
    try:
        if input_type is InputType.INTEGERS:
            # Inferring the dtype tells int literals from floats, which a
            # forced dtype would truncate.
            arr = np.array(value)
            if arr.dtype.kind not in "iu" or arr.size == 0:
                return None
            if int(arr.min()) < _INT_MIN or int(arr.max()) > _INT_MAX:
                return None
            return arr.astype(_INT_DTYPE)
        # A forced dtype skips numpy's type discovery, which is safe since the
        # leaves are known to be numbers; a flat list goes through fromiter,
        # about a third faster than np.array for 784 numbers.
        if type(value[0]) is list:
            arr = np.array(value, dtype=np.float64)
        else:
            arr = np.fromiter(value, dtype=np.float64, count=len(value))
    except (ValueError, TypeError, OverflowError):  # ragged, or an int too big for a float
        return None
    if arr.size == 0:
        return None
    if input_type is InputType.FLOATS:
        # Checked before the cast, which would warn and give inf. NaN fails too.
        if not np.abs(arr).max() < _FLOAT_OVERFLOW:
            return None
        return arr.astype(_FLOAT_DTYPE)
    if not finite and not np.isfinite(arr).all():
        return None
    return arr


# -- numeric slow path ----------------------------------------------------------


def _parse_numeric_slow(value: Any, input_type: InputType, where: str) -> npt.NDArray[Any]:
    """Validate element by element; raise ``InputError`` at the first problem."""
    type_name = input_type.value
    if not isinstance(value, list):
        raise InputError(
            f"{where}: expected an array of numbers for input type '{type_name}', "
            f"found {describe_json_type(value)}"
        )
    # The first element at each level sets the shape the others must match.
    shape: list[int] = []
    node: Any = value
    while isinstance(node, list):
        if len(shape) == _MAX_DIMS:
            raise InputError(f"{where}: arrays nested more than {_MAX_DIMS} levels deep")
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    leaves: list[int | float] = []
    _walk(value, shape, [], where, input_type, leaves)
    if 0 in shape:
        raise InputError(f"{where} is empty")
    # Leaves are validated: in range, finite, and float32-safe for 'floats'.
    arr = np.array(leaves, dtype=np.float64 if input_type is InputType.FLOATS else None)
    return arr.astype(_DTYPES[input_type]).reshape(shape)


def _walk(
    node: Any,
    shape: list[int],
    index: list[int],
    where: str,
    input_type: InputType,
    leaves: list[int | float],
) -> None:
    depth = len(index)
    if depth < len(shape):
        if not isinstance(node, list):
            if _is_number(node):
                raise InputError(
                    f"{_path(where, index)}: ragged nested arrays: "
                    "expected an array, found a number"
                )
            raise InputError(
                f"{_path(where, index)}: expected an array of numbers for input type "
                f"'{input_type.value}', found {describe_json_type(node)}"
            )
        if len(node) != shape[depth]:
            raise InputError(
                f"{_path(where, index)}: ragged nested arrays: "
                f"expected length {shape[depth]}, found length {len(node)}"
            )
        index.append(0)
        for i, child in enumerate(node):
            index[-1] = i
            _walk(child, shape, index, where, input_type, leaves)
        index.pop()
        return
    if isinstance(node, list):
        raise InputError(
            f"{_path(where, index)}: ragged nested arrays: expected a number, found an array"
        )
    leaves.append(_check_number(node, input_type, where, index))


def _check_number(value: Any, input_type: InputType, where: str, index: list[int]) -> int | float:
    """Return a leaf as a Python number that fits ``input_type``, or raise."""
    type_name = input_type.value
    if not _is_number(value):
        raise InputError(
            f"{_path(where, index)}: expected a number for input type '{type_name}', "
            f"found {describe_json_type(value)}"
        )
    if input_type is InputType.INTEGERS:
        # orjson parses integer literals beyond 64 bits as floats; call those
        # out of range rather than "non-integer".
        if isinstance(value, float) and not (value.is_integer() and abs(value) > _INT_MAX):
            raise InputError(
                f"{_path(where, index)}: expected an integer for input type 'integers', "
                f"found a non-integer number {value!r}"
            )
        if not _INT_MIN <= value <= _INT_MAX:
            raise InputError(
                f"{_path(where, index)}: {_fmt(value)} is out of range for input type "
                f"'integers' ({_INT_DTYPE.name}: {_INT_MIN} to {_INT_MAX})"
            )
        return int(value)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64's range
        raise InputError(
            f"{_path(where, index)}: {_fmt(value)} is out of range for input type '{type_name}'"
        ) from None
    if not math.isfinite(number):
        raise InputError(f"{_path(where, index)}: {value!r} is not a finite number")
    if input_type is InputType.FLOATS and abs(number) >= _FLOAT_OVERFLOW:
        raise InputError(
            f"{_path(where, index)}: {_fmt(value)} overflows {_FLOAT_DTYPE.name} for input type "
            f"'floats' (largest magnitude {_FLOATS.max_value!r})"
        )
    return number


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _path(where: str, index: list[int]) -> str:
    return where + "".join(f"[{i}]" for i in index)


def _fmt(value: int | float) -> str:
    # Python refuses to print ints of more than 4300 digits; say how big instead.
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)
