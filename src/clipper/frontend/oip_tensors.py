"""Tensors of the Open Inference Protocol v2: decode requests, encode answers.

Pure functions, no I/O. A request tensor arrives as JSON ``data`` (flat or
nested, row-major) or, with the binary tensor extension, as raw little-endian
bytes after the JSON header; ``BYTES`` elements travel in binary as a 4-byte
little-endian length followed by the element's bytes. Every problem raises
:class:`~clipper.exceptions.InputError` naming the tensor and the problem,
which the frontend answers with a 400.

Over gRPC, a tensor's data is raw (the same bytes as the binary extension's)
or typed: one repeated field of ``InferTensorContents`` per datatype
(:data:`CONTENTS_FIELDS`), decoded by :func:`decode_typed`.

Numeric data never goes through a per-element Python loop: JSON lists go to
numpy in one call and binary data is read with ``np.frombuffer``.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from ..exceptions import InputError

__all__ = [
    "CONTENTS_FIELDS",
    "DATATYPES",
    "OutputTensor",
    "Tensor",
    "decode_binary",
    "decode_json",
    "decode_typed",
    "deserialize_bytes",
    "encode_output",
    "serialize_bytes",
]

# Datatype name → little-endian numpy dtype (None for BYTES).
DATATYPES: dict[str, np.dtype[Any] | None] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": None,
}
# Datatype name → the field of gRPC's InferTensorContents that carries it typed
# (FP16 has none: it travels raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_MAX_DIMS = 32
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Tensor:
    """A decoded request tensor.

    ``data`` has shape ``shape``: the datatype's numpy dtype for numeric and
    BOOL tensors, an object array of ``bytes`` (binary) or ``str`` (JSON)
    elements for BYTES.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """An answer tensor: numeric ``array``, or BYTES ``elements`` (flat)."""

    datatype: str
    shape: list[int]
    array: npt.NDArray[Any] | None = None
    elements: list[bytes] | None = None

    def json_data(self) -> Any:
        """The tensor's ``data`` for a JSON answer (flat, row-major)."""
        if self.array is not None:
            return self.array.ravel()  # orjson serialises contiguous numpy arrays natively
        assert self.elements is not None
        return [_text(e) for e in self.elements]

    def binary_data(self) -> bytes:
        """The tensor's raw bytes for a binary answer."""
        if self.array is not None:
            return self.array.tobytes()
        assert self.elements is not None
        return serialize_bytes(self.elements)


def check_header(tensor: Any, where: str) -> tuple[str, str, tuple[int, ...]]:
    """Validate a tensor's ``name``, ``datatype`` and ``shape``; return them."""
    if not isinstance(tensor, dict):
        raise InputError(f"{where} must be a JSON object")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise InputError(f"{where}: 'name' must be a string")
    where = f"input {name!r}"
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise InputError(f"{where}: 'datatype' must be a string")
    if datatype not in DATATYPES:
        raise InputError(
            f"{where}: unsupported datatype {datatype!r} (supported: {', '.join(DATATYPES)})"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise InputError(
            f"{where}: 'shape' must be an array of at most {_MAX_DIMS} non-negative integers"
        )
    _count(tuple(shape), where)
    return name, datatype, tuple(shape)


def _count(shape: tuple[int, ...], where: str) -> int:
    """The number of elements of a tensor of ``shape``.

    A zero-size dimension is refused: such a tensor holds no query, and its
    other dimensions could claim any number of rows for free (``[100000000,
    0]`` is 100 million empty rows in no data). With every dimension at least
    1, no dimension exceeds the element count, which the data must match.
    """
    if 0 in shape:
        what = "the batch is empty" if shape[0] == 0 else "each query is empty"
        raise InputError(f"{where}: 'shape' {list(shape)} has a zero-size dimension ({what})")
    return math.prod(shape)


def decode_binary(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview
) -> Tensor:
    """Decode a tensor's binary data (the binary tensor extension).

    The shape is checked against the data's length before anything is read.
    """
    count = _count(shape, f"input {name!r}")
    dtype = DATATYPES[datatype]
    if dtype is None:
        if count > len(raw) // 4:  # each element has a 4-byte length
            raise InputError(
                f"input {name!r}: shape {list(shape)} needs {count} BYTES elements, "
                f"the binary data holds {len(raw) // 4} at most ({len(raw)} bytes, "
                "with a 4-byte length per element)"
            )
        elements = deserialize_bytes(raw, f"input {name!r}")
        if len(elements) != count:
            raise InputError(
                f"input {name!r}: shape {list(shape)} needs {count} BYTES elements, "
                f"the binary data holds {len(elements)}"
            )
        data = np.empty(count, dtype=object)
        data[:] = elements
        return Tensor(name, datatype, shape, data.reshape(shape))
    if len(raw) != count * dtype.itemsize:
        raise InputError(
            f"input {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes, binary_data_size is {len(raw)}"
        )
    if datatype == "BOOL":
        arr = np.frombuffer(raw, dtype=np.uint8) != 0
    else:
        arr = np.frombuffer(raw, dtype=dtype)
    return Tensor(name, datatype, shape, arr.reshape(shape))


def decode_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Tensor:
    """Decode a tensor's JSON ``data``: flat, or nested to match ``shape``."""
    where = f"input {name!r}"
    count = _count(shape, where)
    if not isinstance(data, list):
        raise InputError(f"{where}: 'data' must be an array")
    dtype = DATATYPES[datatype]
    if dtype is None:
        flat = _flatten_strings(data, shape, count, where)
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return Tensor(name, datatype, shape, arr.reshape(shape))
    try:
        parsed = np.array(data)
    except (ValueError, OverflowError):
        raise InputError(f"{where}: 'data' is ragged or holds values of mixed kinds") from None
    _check_count(parsed, shape, count, where)
    kind = parsed.dtype.kind
    if datatype == "BOOL":
        if kind != "b" and parsed.size:
            raise InputError(f"{where}: BOOL data must be true or false")
        return Tensor(name, datatype, shape, parsed.astype(np.bool_).reshape(shape))
    if dtype.kind in "iu" and parsed.size and kind in "fO":
        # numpy reads a mix of int64 and uint64 values as floats: check the
        # values themselves on this unusual path.
        return Tensor(name, datatype, shape, _exact_integers(data, dtype, datatype, shape, where))
    if kind not in "iuf" and parsed.size:
        found = "booleans" if kind == "b" else "non-numbers (or integers beyond 64 bits)"
        raise InputError(f"{where}: {datatype} data must be numbers, found {found}")
    if dtype.kind in "iu" and parsed.size:
        info = np.iinfo(dtype)
        low, high = int(parsed.min()), int(parsed.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InputError(f"{where}: {bad} is out of range for {datatype}")
    with np.errstate(over="ignore"):
        arr = parsed.astype(dtype)
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{where}: a value is out of range for {datatype}")
    return Tensor(name, datatype, shape, arr.reshape(shape))


def decode_typed(name: str, datatype: str, shape: tuple[int, ...], values: Any) -> Tensor:
    """Decode a tensor's typed contents (gRPC's ``InferTensorContents``): the
    flat, row-major sequence of its datatype's field (:data:`CONTENTS_FIELDS`)."""
    where = f"input {name!r}"
    count = _count(shape, where)
    if len(values) != count:
        raise InputError(
            f"{where}: shape {list(shape)} needs {count} elements, "
            f"contents.{CONTENTS_FIELDS[datatype]} holds {len(values)}"
        )
    dtype = DATATYPES[datatype]
    if dtype is None:
        data = np.empty(count, dtype=object)
        data[:] = list(values)
        return Tensor(name, datatype, shape, data.reshape(shape))
    if dtype.kind in "iu" and dtype.itemsize < 4:  # carried as 32-bit integers
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            bad = wide.min() if wide.min() < info.min else wide.max()
            raise InputError(f"{where}: {bad} is out of range for {datatype}")
        arr = wide.astype(dtype)
    else:
        arr = np.array(values, dtype=dtype)
    return Tensor(name, datatype, shape, arr.reshape(shape))


def _exact_integers(
    data: list[Any], dtype: np.dtype[Any], datatype: str, shape: tuple[int, ...], where: str
) -> npt.NDArray[Any]:
    flat = np.array(data, dtype=object).ravel().tolist()
    for x in flat:
        if type(x) is not int:
            found = "a fraction" if isinstance(x, float) else "a value that is not a number"
            raise InputError(f"{where}: {datatype} data must be integers, found {found}")
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except OverflowError:
        info = np.iinfo(dtype)
        bad = next(x for x in flat if not info.min <= x <= info.max)
        raise InputError(f"{where}: {bad} is out of range for {datatype}") from None


def _check_count(parsed: npt.NDArray[Any], shape: tuple[int, ...], count: int, where: str) -> None:
    if parsed.ndim > 1 and parsed.shape != shape:
        raise InputError(
            f"{where}: nested 'data' of shape {list(parsed.shape)} does not match "
            f"'shape' {list(shape)}"
        )
    if parsed.size != count:
        raise InputError(
            f"{where}: 'shape' {list(shape)} needs {count} elements, 'data' holds {parsed.size}"
        )


def _flatten_strings(data: list[Any], shape: tuple[int, ...], count: int, where: str) -> list[str]:
    if all(type(x) is str for x in data):
        flat: list[str] = data
    else:
        flat = []
        _walk_strings(data, flat, where, 0)
    if len(flat) != count:
        raise InputError(
            f"{where}: 'shape' {list(shape)} needs {count} elements, 'data' holds {len(flat)}"
        )
    return flat


def _walk_strings(node: list[Any], out: list[str], where: str, depth: int) -> None:
    if depth > _MAX_DIMS:
        raise InputError(f"{where}: 'data' is nested too deep")
    for x in node:
        if type(x) is str:
            out.append(x)
        elif isinstance(x, list):
            _walk_strings(x, out, where, depth + 1)
        else:
            raise InputError(f"{where}: BYTES data must be strings")


# -- the BYTES binary format ----------------------------------------------------------


def serialize_bytes(elements: list[bytes]) -> bytes:
    """Each element as a 4-byte little-endian length and its bytes, concatenated."""
    pack = _LENGTH.pack
    return b"".join([part for e in elements for part in (pack(len(e)), e)])


def deserialize_bytes(raw: bytes | memoryview, where: str = "tensor") -> list[bytes]:
    """The elements of a length-prefixed BYTES buffer; ``InputError`` if malformed."""
    view = memoryview(raw)
    out: list[bytes] = []
    offset, end = 0, len(view)
    unpack = _LENGTH.unpack_from
    while offset < end:
        if end - offset < 4:
            raise InputError(
                f"{where}: BYTES data ends inside an element's 4-byte length prefix "
                f"(at byte {offset})"
            )
        (size,) = unpack(view, offset)
        offset += 4
        if size > end - offset:
            raise InputError(
                f"{where}: BYTES element {len(out)} declares {size} bytes, "
                f"only {end - offset} remain"
            )
        out.append(bytes(view[offset : offset + size]))
        offset += size
    return out


# -- answers --------------------------------------------------------------------------

_NUMBER_TYPES = frozenset({int, float})


def encode_output(values: list[Any]) -> OutputTensor:
    """The answer tensor for one output per row.

    Numbers become INT64 (all integers) or FP64, shape ``[N]``; equal-length
    arrays of numbers ``[N, k, ...]``; booleans BOOL; anything else BYTES of
    JSON text, strings as they are (shape ``[N]``).
    """
    n = len(values)
    types = set(map(type, values))
    try:
        if types == {int}:
            return OutputTensor("INT64", [n], np.array(values, dtype="<i8"))
        if types <= _NUMBER_TYPES:
            return OutputTensor("FP64", [n], np.array(values, dtype="<f8"))
        if types == {bool}:
            return OutputTensor("BOOL", [n], np.array(values, dtype=np.bool_))
        if types == {list} and (out := _encode_arrays(values)) is not None:
            return out
    except (OverflowError, ValueError, TypeError):
        pass  # integers beyond int64, say: fall back to JSON text
    return OutputTensor("BYTES", [n], elements=[_element(v) for v in values])


def _encode_arrays(values: list[Any]) -> OutputTensor | None:
    arr = np.array(values)
    if arr.dtype.kind == "i":
        return OutputTensor("INT64", list(arr.shape), np.ascontiguousarray(arr, dtype="<i8"))
    if arr.dtype.kind == "f":
        return OutputTensor("FP64", list(arr.shape), np.ascontiguousarray(arr, dtype="<f8"))
    if arr.dtype.kind == "b":
        return OutputTensor("BOOL", list(arr.shape), np.ascontiguousarray(arr))
    return None


def _element(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # integers beyond 64 bits, say: the standard library copes
        return json.dumps(value, default=_json_default).encode()


def _json_default(obj: object) -> object:
    if isinstance(obj, bytes):
        return _text(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _text(element: bytes) -> str:
    # JSON carries text only: bytes that are not UTF-8 go as base64, as /predict does.
    try:
        return element.decode()
    except UnicodeDecodeError:
        return base64.b64encode(element).decode()
