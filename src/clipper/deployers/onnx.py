"""Deploy an ONNX model, served by ONNX Runtime (needs the ``onnx`` extra).

The serialised model (bytes) ships inside the cloudpickled closure (see
:func:`clipper.deployers.python.deploy_python_closure`); the container
builds an ``onnxruntime.InferenceSession`` from those bytes before it
registers. The container needs onnxruntime importable (not onnx): the
server's environment, or give it with
``pkgs_to_install=["onnxruntime==<version>"]``.

Devices: a replica placed on a GPU (the ``devices`` model option, passed
as ``CLIPPER_DEVICE=cuda``) uses ONNX Runtime's ``CUDAExecutionProvider``
when its onnxruntime has it (``onnxruntime-gpu``), else the CPU with a
warning; the status reports the provider that runs (``runtime.provider``).
The model runs at the precision it was exported in (``precision`` is
PyTorch's option).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .python import deploy_python_closure

if TYPE_CHECKING:
    from ..admin import ClipperConnection

# ONNX Runtime's input type names and the numpy dtype each batch is cast to.
DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def _model_bytes(onnx_model: Any) -> bytes:
    """The serialised model, checked; ValueError naming what is wrong with it."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(onnx_model, onnx.ModelProto):
        data = onnx_model.SerializeToString()
    elif isinstance(onnx_model, (bytes, bytearray, memoryview)):
        data = bytes(onnx_model)
    elif isinstance(onnx_model, (str, os.PathLike)):
        path = Path(onnx_model)
        if not path.is_file():
            raise ValueError(f"ONNX model file {str(path)!r} does not exist")
        data = path.read_bytes()
    else:
        raise ValueError(
            "onnx_model must be bytes, a path or an onnx.ModelProto, "
            f"got {type(onnx_model).__name__}"
        )
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"onnx_model is not a serialised ONNX model: {exc}") from exc
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"onnx_model is not a valid ONNX model: {exc}") from exc
    initializers = {init.name for init in proto.graph.initializer}
    if not [i for i in proto.graph.input if i.name not in initializers]:
        raise ValueError("the ONNX model's graph has no input to feed")
    if not proto.graph.output:
        raise ValueError("the ONNX model's graph has no output")
    return data


def _make_predict(model_bytes: bytes) -> Callable[[Any], list[Any]]:
    """The closure shipped to the container.

    Its ``clipper_prepare`` hook (run by the container before it registers,
    else on the first batch) creates the inference session on the replica's
    device (see the module's docstring); each batch is cast to the element
    type of the model's first input and fed as that input; each input's
    answer is its row of the first output, as a list (or a number when the
    output is 1-D). Self-contained: it unpickles without importing this
    module or onnxruntime.
    """
    dtypes = dict(DTYPES)
    state: dict[str, Any] = {}

    def plain(value: Any) -> Any:
        # numpy values (and tensors) become lists and numbers, float32 at its own
        # precision; clipper is importable wherever the closure runs
        from clipper.rpc.protocol import plain_value

        return plain_value(value)

    def prepare() -> dict[str, str]:
        import os

        import numpy as np
        import onnxruntime

        details = {"framework": f"onnxruntime {onnxruntime.__version__}"}
        providers = ["CPUExecutionProvider"]
        if os.environ.get("CLIPPER_DEVICE") == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                details["warning"] = (
                    "placed on a GPU, but this onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu): running on the CPU"
                )
        session = onnxruntime.InferenceSession(model_bytes, providers=providers)
        first = session.get_inputs()[0]
        if first.type not in dtypes:
            raise TypeError(f"unsupported ONNX input type {first.type} of {first.name!r}")
        state.update(
            session=session,
            input=first.name,
            dtype=np.dtype(dtypes[first.type]),
            output=session.get_outputs()[0].name,
        )
        provider = session.get_providers()[0]
        on_gpu = provider == "CUDAExecutionProvider"
        device = "cuda:" + (os.environ.get("CUDA_VISIBLE_DEVICES") or "0") if on_gpu else "cpu"
        return {**details, "device": device, "provider": provider}

    def predict(inputs: Any) -> list[Any]:
        import numpy as np

        if not state:
            prepare()
        batch = np.asarray(inputs, dtype=state["dtype"])
        out = state["session"].run([state["output"]], {state["input"]: batch})[0]
        return [plain(row) for row in out]

    predict.clipper_prepare = prepare  # type: ignore[attr-defined]
    return predict


def deploy_onnx_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str,
    input_type: str,
    onnx_model: Any,
    *,
    labels: list[str] | None = None,
    batch_size: int = -1,
    num_replicas: int = 1,
    pkgs_to_install: list[str] | None = None,
    options: dict[str, Any] | None = None,
    exist_ok: bool = False,
    wait: bool = True,
    timeout: float = 300.0,
) -> None:
    """Deploy an ONNX model as model ``name:version``.

    ``onnx_model`` is the serialised model (bytes), a path to a ``.onnx``
    file, or an ``onnx.ModelProto``. Each batch is fed as the model's first
    input, cast to its element type (float32 for ``tensor(float)``, int64
    for ``tensor(int64)``, ...); each input is answered with its row of the
    model's first output, as a list, or a number when that output is 1-D.
    The first input's leading dimension should be the batch (dynamic).

    Raises ValueError, before anything is shipped, when ``onnx_model`` is
    not a readable, valid ONNX model with an input and an output. The other
    keyword arguments are those of
    :func:`~clipper.deployers.python.deploy_python_closure`.
    """
    deploy_python_closure(
        clipper_conn,
        name,
        version,
        input_type,
        _make_predict(_model_bytes(onnx_model)),
        labels=labels,
        batch_size=batch_size,
        num_replicas=num_replicas,
        pkgs_to_install=pkgs_to_install,
        options=options,
        exist_ok=exist_ok,
        wait=wait,
        timeout=timeout,
    )
