"""Open Inference Protocol v2 inference requests and responses, for Clipper's apps.

Pure functions, no I/O: parse an ``/infer`` body (JSON header plus optional
binary tensor data; :mod:`.oip_grpc` parses a gRPC ``ModelInferRequest`` with
the same checks), turn its input tensor into one query per row of the
app's input type, and encode the predictions as the answer. Problems raise
:class:`~clipper.exceptions.InputError` (a 400) or
:class:`~clipper.exceptions.PayloadTooLarge` (a 413).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from ..exceptions import InputError, PayloadTooLarge
from ..types import AppSpec, InputType
from .inputs import check_uid
from .oip_tensors import (
    OutputTensor,
    Tensor,
    check_header,
    decode_binary,
    decode_json,
    encode_output,
)

__all__ = [
    "InferRequest",
    "answer_parameters",
    "answer_tensor",
    "app_queries",
    "check_input_count",
    "check_input_header",
    "decompress",
    "default_value",
    "encode_response",
    "parse_infer_request",
    "query_count",
    "request_options",
    "requested_output",
]

DEFAULT_OUTPUT_NAME = "output0"
_WBITS = {"gzip": 31, "deflate": 15}


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A validated ``/infer`` request."""

    id: str | None
    tensor: Tensor
    output_name: str
    binary_output: bool
    timeout_s: float | None
    uid: str | None


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo a request's ``Content-Encoding`` (gzip or deflate), at most ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InputError(f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError(f"request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    return out


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    spec: AppSpec | None = None,
    max_queries: int | None = None,
) -> InferRequest:
    """Parse an ``/infer`` body; ``header_length`` is ``Inference-Header-Content-Length``.

    With ``max_queries``, a tensor whose shape claims more queries (rows, as
    :func:`app_queries` would read them for ``spec``) is refused before its
    data is decoded.
    """
    binary = memoryview(b"")
    header: bytes | memoryview = body
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InputError(
                f"Inference-Header-Content-Length {header_length!r} must be an integer "
                f"from 0 to the body's length ({len(body)})"
            )
        view = memoryview(body)
        header, binary = view[:n], view[n:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"request JSON is not valid: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError("request JSON must be an object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError("'id' must be a string")
    params = _object(doc.get("parameters"), "'parameters'")
    timeout_s, uid, binary_default = request_options(params, False)
    inputs = check_input_count(doc.get("inputs"))
    tensor = _input_tensor(inputs[0], binary, len(header), spec, max_queries)
    output_name, binary_output = requested_output(doc.get("outputs"), binary_default)
    return InferRequest(request_id, tensor, output_name, binary_output, timeout_s, uid)


def request_options(
    params: dict[str, Any], binary_default: bool
) -> tuple[float | None, str | None, bool]:
    """A request's ``parameters`` (plain values, as either transport carries
    them): its timeout in seconds, its user id and whether answers are binary
    by default (``binary_data_output``; ``binary_default`` when unset)."""
    timeout_s = _timeout(params.get("timeout"))
    seq = params.get("sequence_id", 0)
    if seq not in (0, ""):
        raise InputError("sequence batching (parameters.sequence_id) is not supported")
    uid = params.get("clipper_uid")
    if uid is not None:
        uid = check_uid(uid, "parameters.clipper_uid")
    binary = params.get("binary_data_output", binary_default)
    if not isinstance(binary, bool):
        raise InputError("parameters.binary_data_output must be true or false")
    return timeout_s, uid, binary


def check_input_count(inputs: Any) -> list[Any]:
    """A request's inputs, which must be one tensor: the app's queries are its rows."""
    if not isinstance(inputs, list) or not inputs:
        raise InputError("'inputs' must be a non-empty array of tensors")
    if len(inputs) != 1:
        raise InputError(
            f"a Clipper app takes exactly one input tensor (its rows are the queries), "
            f"found {len(inputs)}"
        )
    return inputs


def check_input_header(
    tensor: dict[str, Any], spec: AppSpec | None, max_queries: int | None
) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    """An input tensor's name, datatype, shape and parameters, validated, with
    its number of queries checked against ``max_queries`` before any data is read."""
    name, datatype, shape = check_header(tensor, "inputs[0]")
    where = f"input {name!r}"
    if max_queries is not None and (rows := query_count(shape, spec)) > max_queries:
        raise InputError(
            f"{where} has {rows} queries (rows of shape {list(shape)}); the limit is {max_queries}"
        )
    params = _object(tensor.get("parameters"), f"{where}: 'parameters'")
    if "shared_memory_region" in params:
        raise InputError(f"{where}: shared memory is not supported")
    return name, datatype, shape, params


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError("parameters.timeout must be a non-negative integer (microseconds)")
    return value / 1e6 if value > 0 else None  # 0: no timeout, as in Triton


def query_count(shape: tuple[int, ...], spec: AppSpec | None) -> int:
    """How many queries a tensor of ``shape`` is for ``spec``'s app (see
    :func:`app_queries`): one for a scalar or a tensor of the app's declared
    input shape, else the first dimension. An upper bound for shapes that
    ``app_queries`` refuses."""
    declared = spec.input_shape if spec is not None and spec.input_type.is_numeric else None
    if not shape or (declared is not None and shape == tuple(declared)):
        return 1
    return shape[0]


def _input_tensor(
    tensor: Any,
    binary: memoryview,
    header_bytes: int,
    spec: AppSpec | None,
    max_queries: int | None,
) -> Tensor:
    name, datatype, shape, params = check_input_header(tensor, spec, max_queries)
    where = f"input {name!r}"
    size = params.get("binary_data_size")
    if size is None:
        if len(binary):
            raise InputError(
                f"{len(binary)} bytes of binary data follow the JSON header, "
                "but no input declares parameters.binary_data_size"
            )
        if "data" not in tensor:
            raise InputError(f"{where} has neither 'data' nor parameters.binary_data_size")
        count = math.prod(shape)
        if count > header_bytes:  # each element takes a byte of JSON text at least
            raise InputError(
                f"{where}: shape {list(shape)} needs {count} elements, more than "
                f"the {header_bytes} bytes of JSON hold"
            )
        return decode_json(name, datatype, shape, tensor["data"])
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InputError(f"{where}: parameters.binary_data_size must be a non-negative integer")
    if "data" in tensor:
        raise InputError(f"{where} has both 'data' and parameters.binary_data_size")
    if size != len(binary):
        raise InputError(
            f"{where}: binary_data_size is {size} but {len(binary)} bytes of binary data "
            "follow the JSON header (is Inference-Header-Content-Length right?)"
        )
    return decode_binary(name, datatype, shape, binary)


def requested_output(outputs: Any, binary_default: bool) -> tuple[str, bool]:
    """The answer's tensor name and whether it is binary (raw), from ``outputs``."""
    if outputs is None:
        return DEFAULT_OUTPUT_NAME, binary_default
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise InputError("'outputs' must be an array of at most one tensor: an app has one output")
    if not outputs:
        return DEFAULT_OUTPUT_NAME, binary_default
    out = outputs[0]
    if not isinstance(out, dict) or not isinstance(out.get("name"), str):
        raise InputError("outputs[0] must be an object with a string 'name'")
    params = _object(out.get("parameters"), "outputs[0]: 'parameters'")
    if "shared_memory_region" in params:
        raise InputError("outputs[0]: shared memory is not supported")
    if params.get("classification", 0):
        raise InputError("outputs[0]: the classification extension is not supported")
    binary = params.get("binary_data", binary_default)
    if not isinstance(binary, bool):
        raise InputError("outputs[0]: parameters.binary_data must be true or false")
    return out["name"], binary


# -- tensor → queries -------------------------------------------------------------------


def app_queries(tensor: Tensor, spec: AppSpec) -> list[Any]:
    """One query per row of ``tensor``, each what the app's input type expects.

    Numeric apps: with an input shape S, a tensor of shape S is one query and
    ``[N, *S]`` is N; without one, dimension 0 is the batch (a 1-D tensor is
    N one-number queries). Other apps: a tensor of shape ``[N]`` or ``[N, 1]``
    is N queries (a ``json`` app also takes numeric tensors, row by row).
    """
    where = f"input {tensor.name!r}"
    if spec.input_type.is_numeric:
        rows = _numeric_rows(tensor, spec, where)
        return list(_to_app_dtype(rows, tensor.datatype, spec.input_type, where))
    if spec.input_type is InputType.JSON and tensor.datatype != "BYTES":
        data = tensor.data if tensor.data.ndim else tensor.data.reshape(1)
        if not len(data):
            raise InputError(f"{where}: the batch is empty")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise InputError(f"{where}: a value is not a finite number")
        queries: list[Any] = data.tolist()
        return queries
    if tensor.datatype != "BYTES":
        raise InputError(
            f"{where}: app '{spec.name}' takes {spec.input_type.value}: "
            f"send BYTES, not {tensor.datatype}"
        )
    shape = tensor.shape
    if not (len(shape) <= 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InputError(
            f"{where}: app '{spec.name}' takes one {spec.input_type.value} element per query: "
            f"expected shape [N] or [N, 1], found {list(shape)}"
        )
    elements = tensor.data.reshape(-1).tolist()
    if not elements:
        raise InputError(f"{where}: the batch is empty")
    return [_element(e, spec.input_type, where, i) for i, e in enumerate(elements)]


def _element(value: bytes | str, input_type: InputType, where: str, i: int) -> Any:
    if input_type is InputType.BYTES:
        return value.encode() if isinstance(value, str) else value
    if input_type is InputType.STRINGS:
        if isinstance(value, str):
            return value
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise InputError(f"{where}[{i}]: not valid UTF-8 text for a 'strings' app") from None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{where}[{i}]: not valid JSON text for a 'json' app: {exc}") from None


def _numeric_rows(tensor: Tensor, spec: AppSpec, where: str) -> npt.NDArray[Any]:
    if tensor.datatype == "BYTES":
        raise InputError(
            f"{where}: app '{spec.name}' takes {spec.input_type.value}: send a numeric tensor, "
            "not BYTES"
        )
    data, shape = tensor.data, tensor.shape
    declared = spec.input_shape
    if declared is not None:
        if shape == tuple(declared):
            data = data.reshape((1, *shape))
        elif shape[1:] != tuple(declared):
            raise InputError(
                f"{where}: app '{spec.name}' takes inputs of shape {list(declared)}: expected "
                f"shape {list(declared)} or [N, {', '.join(map(str, declared))}], "
                f"found {list(shape)}"
            )
    elif not shape:
        raise InputError(f"{where}: a numeric tensor needs a batch dimension, found shape []")
    elif len(shape) == 1:
        data = data.reshape((shape[0], 1))
    if not len(data):
        raise InputError(f"{where}: the batch is empty (shape {list(shape)})")
    if not data[0].size:
        raise InputError(f"{where}: each query is empty (shape {list(shape)})")
    return data


def _to_app_dtype(
    arr: npt.NDArray[Any], datatype: str, input_type: InputType, where: str
) -> npt.NDArray[Any]:
    """``arr`` as the app's dtype, refusing values that would change (the
    type's range: :attr:`~clipper.types.InputType.numeric`)."""
    fmt = input_type.numeric
    assert fmt is not None  # a numeric app's
    target = fmt.np_dtype
    kind = arr.dtype.kind
    if kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{where}: a value is not a finite number")
    if fmt.integral:
        if kind == "f" and not (arr == np.trunc(arr)).all():
            raise InputError(
                f"{where}: app takes {input_type.value}, but the {datatype} data has a fraction"
            )
        if kind in "iuf" and arr.dtype != target and arr.size:
            low, high = arr.min(), arr.max()
            if low < fmt.min_value or high > fmt.max_value:
                bad = low if low < fmt.min_value else high
                raise InputError(
                    f"{where}: {bad} is out of range for an app of {input_type.value} "
                    f"({target.name})"
                )
    elif (
        arr.dtype == np.float64
        and arr.size
        and target != arr.dtype
        and not np.abs(arr).max() < fmt.overflow
    ):
        raise InputError(
            f"{where}: a value overflows {target.name} for an app of {input_type.value}"
        )
    return np.ascontiguousarray(arr, dtype=target)


# -- predictions → answer ---------------------------------------------------------------


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Sequence[Any],
    defaults: Sequence[bool],
    explanations: Sequence[str | None],
    confidences: Sequence[float | None] | None = None,
) -> tuple[bytes, str | None]:
    """The answer's body and, for binary output, its JSON header's length.

    Rows that got the app's default output are marked in the response's
    ``parameters``; a default that reads as a JSON number or array (``"-1"``)
    joins a numeric tensor as that value.
    """
    tensor = answer_tensor(outputs, defaults)
    spec: dict[str, Any] = {
        "name": request.output_name,
        "datatype": tensor.datatype,
        "shape": tensor.shape,
    }
    raw = b""
    if request.binary_output:
        raw = tensor.binary_data()
        spec["parameters"] = {"binary_data_size": len(raw)}
    else:
        spec["data"] = tensor.json_data()
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        answer["id"] = request.id
    params = answer_parameters(defaults, explanations, confidences)
    if params:
        answer["parameters"] = params
    answer["outputs"] = [spec]
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not request.binary_output:
        return header, None
    return header + raw, str(len(header))


def answer_tensor(outputs: Sequence[Any], defaults: Sequence[bool]) -> OutputTensor:
    """The answer tensor: one row per prediction, defaults as :func:`default_value`."""
    if any(defaults):
        values = [default_value(v) if d else v for v, d in zip(outputs, defaults, strict=True)]
    else:
        values = list(outputs)
    return encode_output(values)


def answer_parameters(
    defaults: Sequence[bool],
    explanations: Sequence[str | None],
    confidences: Sequence[float | None] | None = None,
) -> dict[str, list[Any]]:
    """The answer's ``parameters``: which rows got the default output and why,
    and the ensemble's confidence per row (empty when there is nothing to say)."""
    params: dict[str, list[Any]] = {}
    if any(defaults):
        params["clipper_default"] = list(defaults)
        params["clipper_default_explanation"] = list(explanations)
    if confidences is not None and any(c is not None for c in confidences):
        params["clipper_confidence"] = [None if c is None else round(c, 6) for c in confidences]
    return params


def default_value(value: Any) -> Any:
    """A default output as it joins a tensor: the JSON number or array it reads
    as (``"-1"`` → -1), else the string itself."""
    if not isinstance(value, str):
        return value
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if isinstance(parsed, int | float | list) and not isinstance(parsed, bool):
        return parsed
    return value
