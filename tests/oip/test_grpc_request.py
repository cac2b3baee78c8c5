"""The gRPC endpoint's request parsing and answer encoding, without a server:
the same checks and tensors as /v2 (its unit tests are test_request.py)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import orjson
import pytest

from clipper.exceptions import InputError
from clipper.frontend.oip import OIPError
from clipper.frontend.oip_grpc import (
    _status,
    encode_grpc_response,
    parse_grpc_request,
)
from clipper.frontend.oip_tensors import serialize_bytes
from clipper.frontend.proto import grpc_predict_v2_pb2 as pb
from clipper.selection.processor import Overloaded, Prediction
from clipper.types import AppSpec, InputType


def spec(input_type: str = "doubles", shape: list[int] | None = None) -> AppSpec:
    return AppSpec(
        name="app",
        input_type=InputType.parse(input_type),
        default_output="-1",
        slo_micros=100_000,
        input_shape=tuple(shape) if shape else None,
    )


def request(datatype="FP64", shape=(2, 3), field=None, values=None, raw=None, **params):
    msg = pb.ModelInferRequest(model_name="app")
    t = msg.inputs.add(name="x", datatype=datatype, shape=list(shape))
    if field is not None:
        getattr(t.contents, field).extend(values)
    if raw is not None:
        msg.raw_input_contents.append(raw)
    for key, value in params.items():
        if isinstance(value, bool):
            msg.parameters[key].bool_param = value
        elif isinstance(value, int):
            msg.parameters[key].int64_param = value
        else:
            msg.parameters[key].string_param = value
    return msg


def test_raw_and_typed_contents_decode_to_the_same_tensor():
    x = np.arange(6, dtype="<f8").reshape(2, 3)
    raw = parse_grpc_request(request(raw=x.tobytes()), spec())
    typed = parse_grpc_request(request(field="fp64_contents", values=x.ravel().tolist()), spec())
    assert raw.tensor.data.tolist() == typed.tensor.data.tolist() == x.tolist()
    assert raw.binary_output and typed.binary_output  # answers are raw by default


def test_typed_contents_of_each_kind():
    t = parse_grpc_request(request("INT8", (2,), "int_contents", [-3, 4]), spec()).tensor
    assert t.data.dtype == np.int8 and t.data.tolist() == [-3, 4]
    t = parse_grpc_request(request("BOOL", (2,), "bool_contents", [True, False]), spec()).tensor
    assert t.data.tolist() == [True, False]
    t = parse_grpc_request(request("BYTES", (2,), "bytes_contents", [b"a", b"bc"]), spec()).tensor
    assert t.data.tolist() == [b"a", b"bc"]
    t = parse_grpc_request(request("BYTES", (2,), raw=serialize_bytes([b"a", b"bc"])), spec())
    assert t.tensor.data.tolist() == [b"a", b"bc"]


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (request("INT8", (1,), "int_contents", [300]), "300 is out of range for INT8"),
        (request("FP64", (2, 3), "fp64_contents", [1.0]), "needs 6 elements"),
        (request("FP64", (1,), "fp32_contents", [1.0]), "goes in contents.fp64_contents"),
        (request("FP16", (1,), "fp32_contents", [1.0]), "raw_input_contents only"),
        (
            request("FP64", (1,), "fp64_contents", [1.0], raw=b"\0" * 8),
            "both contents and raw_input_contents",
        ),
        (request("FP64", (2, 3), raw=b"\0" * 8), "needs 48 bytes"),
        (request("FP64", (2, 3), raw=b"\0" * 48, sequence_id=7), "sequence batching"),
        (request("XX", (1,), raw=b"\0"), "unsupported datatype 'XX'"),
        (request("FP64", (0, 3), raw=b""), "zero-size dimension"),
    ],
)
def test_bad_requests_name_the_problem(msg, message):
    with pytest.raises(InputError, match=message):
        parse_grpc_request(msg, spec())


def test_rows_are_bounded_before_data_is_read():
    with pytest.raises(InputError, match="the limit is 10"):
        parse_grpc_request(request("FP64", (11, 3), raw=b""), spec(shape=[3]), max_queries=10)


def test_parameters_are_read_as_on_v2():
    parsed = parse_grpc_request(
        request(raw=b"\0" * 48, timeout=250_000, clipper_uid="u1", binary_data_output=False),
        spec(),
    )
    assert parsed.timeout_s == 0.25 and parsed.uid == "u1" and not parsed.binary_output
    assert parsed.id is None and parsed.output_name == "output0"
    msg = request(raw=b"\0" * 48)
    msg.outputs.add(name="y")
    assert parse_grpc_request(msg, spec()).output_name == "y"


def test_answers_raw_or_typed_with_defaults_marked():
    parsed = parse_grpc_request(request(raw=b"\0" * 48), spec())
    predictions = [
        Prediction(0, 6.0, False),
        Prediction(1, "-1", True, explanation="no model answered"),
    ]
    reply = encode_grpc_response("app", "1", parsed, predictions)
    assert reply.outputs[0].datatype == "FP64" and list(reply.outputs[0].shape) == [2]
    assert np.frombuffer(reply.raw_output_contents[0], "<f8").tolist() == [6.0, -1.0]
    assert orjson.loads(reply.parameters["clipper_default"].string_param) == [False, True]
    why = orjson.loads(reply.parameters["clipper_default_explanation"].string_param)
    assert why == [None, "no model answered"]
    typed = parse_grpc_request(request(raw=b"\0" * 48, binary_data_output=False), spec())
    reply = encode_grpc_response("app", "1", typed, [Prediction(0, "a", False)] * 2)
    assert reply.outputs[0].datatype == "BYTES" and not reply.raw_output_contents
    assert list(reply.outputs[0].contents.bytes_contents) == [b"a", b"a"]
    assert "clipper_default" not in reply.parameters


def test_errors_map_to_status_codes():
    assert _status(OIPError(404, "unknown model"))[0] == grpc.StatusCode.NOT_FOUND
    assert _status(OIPError(401, "key"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert _status(InputError("bad"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(Overloaded("queue full")) == (
        grpc.StatusCode.UNAVAILABLE,
        "overloaded: queue full",
    )


def test_the_stubs_live_beside_tritonclients():
    # Both define inference.* messages: ours are in a private pool, so no clash.
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours = request(raw=b"\0" * 48, timeout=5)
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.parameters["timeout"].int64_param == 5
    assert theirs.raw_input_contents[0] == b"\0" * 48


def test_the_port_serves_tls_with_the_query_ports_certificate(tmp_path):
    from tests.helpers import free_port, self_signed_cert

    grpc_aio_client = pytest.importorskip("tritonclient.grpc.aio")
    cert, key = self_signed_cert(tmp_path)
    port = free_port()

    async def main() -> tuple[bool, bool]:
        from clipper.frontend.oip_grpc import bind, grpc_server

        # ServerLive and ServerReady need no models: no frontend behind them.
        server = grpc_server(None, is_ready=lambda: False, max_message_bytes=1 << 20)
        bind(server, "127.0.0.1", port, (str(cert), str(key)))
        await server.start()
        try:
            client = grpc_aio_client.InferenceServerClient(
                f"localhost:{port}", ssl=True, root_certificates=str(cert)
            )
            try:
                return await client.is_server_live(), await client.is_server_ready()
            finally:
                await client.close()
        finally:
            await server.stop(None)

    assert asyncio.run(main()) == (True, False)


def test_a_port_in_use_fails_to_bind():
    from clipper.frontend.oip_grpc import bind, grpc_server

    async def main() -> None:
        first = grpc_server(None, is_ready=lambda: True, max_message_bytes=1024)
        port = bind(first, "127.0.0.1", 0)
        await first.start()
        try:
            second = grpc_server(None, is_ready=lambda: True, max_message_bytes=1024)
            with pytest.raises(OSError, match="could not listen"):
                bind(second, "127.0.0.1", port)  # no SO_REUSEPORT: no silent sharing
        finally:
            await first.stop(None)

    asyncio.run(main())
