"""The Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService``.

The same models and inference semantics as ``/v2`` (:mod:`.oip`), on their own
port (the ``grpc_port`` setting; 0, the default, leaves it off), served by
``grpc.aio`` on the server's event loop. ``tritonclient.grpc`` and the other
KServe v2 gRPC clients work unchanged. Served: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata and ModelInfer; the rest of Triton's
service (repository, statistics, shared memory, streaming) answers
UNIMPLEMENTED.

Nothing is parsed twice: a ``ModelInferRequest`` becomes the same
:class:`~.oip_request.InferRequest` an HTTP body does, through the same
checks (:func:`~.oip_request.request_options`,
:func:`~.oip_request.check_input_header`, the tensor decoders of
:mod:`.oip_tensors`), and the answer is built from the same
:func:`~.oip_request.answer_tensor` and :func:`~.oip_request.answer_parameters`.

Errors are gRPC status codes with the message ``/v2`` would send
(:data:`STATUS_CODES`). Default outputs are marked as over HTTP, in the
response's ``parameters``; a protocol parameter holds one value, so the
per-row lists (``clipper_default``, ``clipper_default_explanation``,
``clipper_confidence``) travel as JSON text in ``string_param``.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import orjson

from .. import __version__
from ..exceptions import InputError, PayloadTooLarge, ValidationError
from ..selection.processor import Overloaded, Prediction
from .oip import EXTENSIONS, OIPError, OIPFrontend
from .oip_request import (
    InferRequest,
    answer_parameters,
    answer_tensor,
    check_input_count,
    check_input_header,
    request_options,
    requested_output,
)
from .oip_tensors import CONTENTS_FIELDS, decode_binary, decode_typed
from .proto import grpc_predict_v2_pb2 as pb
from .proto import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = [
    "STATUS_CODES",
    "OIPServicer",
    "bind",
    "encode_grpc_response",
    "grpc_server",
    "parse_grpc_request",
]

log = logging.getLogger("clipper.frontend.oip_grpc")

# The HTTP status /v2 answers → the gRPC status code of the same error.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


# -- request → InferRequest ----------------------------------------------------------


def plain_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A protocol ``parameters`` map as plain values (what JSON would hold)."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(param, which)
    return out


def parse_grpc_request(
    msg: pb.ModelInferRequest, spec: Any = None, max_queries: int | None = None
) -> InferRequest:
    """A ``ModelInferRequest`` as the :class:`InferRequest` ``/v2`` would parse.

    The input's data is ``raw_input_contents[0]`` (the bytes of the binary
    tensor extension) or its typed ``contents``; answers are raw unless the
    request sets ``binary_data_output`` (or the output's ``binary_data``) false.
    """
    timeout_s, uid, binary_default = request_options(plain_parameters(msg.parameters), True)
    check_input_count(list(msg.inputs))
    raw = msg.raw_input_contents
    if len(raw) > 1:
        raise InputError(f"raw_input_contents has {len(raw)} entries; it needs one per input (1)")
    tensor = msg.inputs[0]
    header = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "parameters": plain_parameters(tensor.parameters),
    }
    name, datatype, shape, _params = check_input_header(header, spec, max_queries)
    where = f"input {name!r}"
    typed = [field.name for field, _ in tensor.contents.ListFields()]
    if raw:
        if typed:
            raise InputError(f"{where} has both contents and raw_input_contents")
        decoded = decode_binary(name, datatype, shape, raw[0])
    else:
        field = CONTENTS_FIELDS.get(datatype)
        if field is None:
            raise InputError(f"{where}: {datatype} data travels in raw_input_contents only")
        others = [f for f in typed if f != field]
        if others:
            raise InputError(
                f"{where}: a {datatype} tensor's data goes in contents.{field}, "
                f"found {', '.join(others)}"
            )
        decoded = decode_typed(name, datatype, shape, getattr(tensor.contents, field))
    outputs = [{"name": o.name, "parameters": plain_parameters(o.parameters)} for o in msg.outputs]
    output_name, binary_output = requested_output(outputs or None, binary_default)
    return InferRequest(msg.id or None, decoded, output_name, binary_output, timeout_s, uid)


# -- predictions → ModelInferResponse ---------------------------------------------------


def encode_grpc_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    predictions: list[Prediction],
) -> pb.ModelInferResponse:
    """The answer: one output tensor, raw or typed as the request asked, and the
    default-output marks in ``parameters`` (JSON text)."""
    defaults = [p.default for p in predictions]
    tensor = answer_tensor([p.output for p in predictions], defaults)
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id or ""
    )
    out = response.outputs.add(
        name=request.output_name, datatype=tensor.datatype, shape=tensor.shape
    )
    if request.binary_output:
        response.raw_output_contents.append(tensor.binary_data())
    else:
        values = tensor.array.ravel().tolist() if tensor.array is not None else tensor.elements
        getattr(out.contents, CONTENTS_FIELDS[tensor.datatype]).extend(values)
    params = answer_parameters(
        defaults, [p.explanation for p in predictions], [p.confidence for p in predictions]
    )
    for key, value in params.items():
        response.parameters[key].string_param = orjson.dumps(value).decode()
    return response


# -- the service ------------------------------------------------------------------------


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, _Abort):
        return exc.code, str(exc)
    if isinstance(exc, OIPError):
        return STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), str(exc)
    if isinstance(exc, PayloadTooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, ValidationError):  # InputError included
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.UNAVAILABLE, f"overloaded: {exc}"
    log.exception("gRPC request failed", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


class OIPServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over the ``/v2`` frontend's models (the
    methods are named as the protocol names its RPCs)."""

    def __init__(self, frontend: OIPFrontend, is_ready: Callable[[], bool]) -> None:
        self.frontend = frontend
        self.is_ready = is_ready

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="clipper", version=__version__, extensions=EXTENSIONS)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        try:
            self._check_key(request.name, context)
            ready = self.frontend.ready(request.name, request.version or None)
        except Exception as exc:
            await context.abort(*_status(exc))
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        try:
            self._check_key(request.name, context)
            meta = self.frontend.metadata(request.name, request.version or None)
        except Exception as exc:
            await context.abort(*_status(exc))
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensors(**t) for t in meta["inputs"]],
            outputs=[tensors(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        try:
            name, version = request.model_name, request.model_version or None
            self._check_key(name, context)
            route = self.frontend.resolve(name, version)
            parsed = parse_grpc_request(request, route.spec, self.frontend.max_batch_inputs)
            remaining = context.time_remaining()
            if remaining is not None and (parsed.timeout_s is None or remaining < parsed.timeout_s):
                # The client's gRPC deadline tightens the query's, as parameters.timeout does.
                parsed = dataclasses.replace(parsed, timeout_s=max(remaining, 0.0))
            model_version, predictions = await self.frontend.predict(route, version, parsed)
            return encode_grpc_response(name, model_version, parsed, predictions)
        except Exception as exc:
            await context.abort(*_status(exc))
            raise  # abort raises; for the type checker

    def _check_key(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        headers = [
            (key.encode("latin-1"), value.encode("latin-1") if isinstance(value, str) else value)
            for key, value in context.invocation_metadata() or ()
        ]
        self.frontend.check_api_key(name, headers, "the 'x-api-key' metadata")


def grpc_server(
    frontend: OIPFrontend,
    *,
    is_ready: Callable[[], bool],
    max_message_bytes: int,
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """A ``grpc.aio`` server with the OIP service (create it on the running loop;
    bind with :func:`bind`). Requests are bounded by ``max_message_bytes`` (the
    query port's body limit); ``SO_REUSEPORT`` is off unless ``reuse_port``
    (several worker processes share the port), so a second server on the same
    port fails to bind rather than sharing it unseen."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(OIPServicer(frontend, is_ready), server)
    return server


def bind(
    server: grpc.aio.Server,
    host: str,
    port: int,
    tls: tuple[str, str] | None = None,
) -> int:
    """Listen on ``host:port`` (TLS with ``(certfile, keyfile)``); the bound port."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
                creds = grpc.ssl_server_credentials([(key.read(), cert.read())])
            bound = server.add_secure_port(address, creds)
    except (RuntimeError, OSError, ssl.SSLError) as exc:
        raise OSError(f"could not listen on {address}: {exc}") from None
    if not bound:
        raise OSError(f"could not listen on {address}")
    return int(bound)
