"""Deploy a PyTorch module (needs the ``torch`` extra).

As in clipper_admin's ``deploy_pytorch_model``: ``func(model, inputs)``
turns one batch into one output per input, with the model at hand. The
module ships inside the cloudpickled closure (see
:func:`clipper.deployers.python.deploy_python_closure`): a CPU copy of it,
cloudpickled whole, so a module class defined in ``__main__`` or a notebook
travels by value and its weights through torch's own tensor serialisation.
The caller's module is left as it was (device, mode). The container needs
torch importable: the server's environment, or give it with
``pkgs_to_install=["torch==<version>"]``.

Devices: a replica runs on the device its manager placed it on (the
``devices`` model option, passed as ``CLIPPER_DEVICE``: ``"cuda"`` or
``"cpu"``; unset, the CPU). Before it registers, the replica moves the
module there (in the ``precision`` option's dtype on a GPU: fp16 or bf16),
so the first batch pays no set-up; each batch goes to the device in one
copy and its outputs come back in one. A replica placed on a GPU whose
torch has no CUDA (a CPU build) runs on the CPU, and its status says so
(``runtime.warning``); on the CPU the precision is fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .python import deploy_python_closure

if TYPE_CHECKING:
    from ..admin import ClipperConnection


def _cpu_copy(pytorch_model: Any) -> Any:
    """A CPU, eval-mode copy of ``pytorch_model``; ValueError if it is no module."""
    import torch

    if not isinstance(pytorch_model, torch.nn.Module):
        raise ValueError(
            f"pytorch_model must be a torch.nn.Module, got {type(pytorch_model).__name__}"
        )
    return copy.deepcopy(pytorch_model).to("cpu").eval()


def _make_predict(
    func: Callable[[Any, Any], Any] | None, pytorch_model: Any
) -> Callable[[Any], list[Any]]:
    """The closure shipped to the container.

    It holds a CPU copy of the module; its ``clipper_prepare`` hook (run by
    the container before it registers, else on the first batch) moves it to
    the replica's device and precision and puts it in eval mode; every batch
    runs under ``torch.inference_mode()``. With ``func=None`` the batch
    becomes one tensor on the device (float32, or the precision's dtype),
    goes through the module, and each output row becomes a list (or a number
    for 1-D outputs). Self-contained: it unpickles without importing this module.
    """
    if func is not None and not callable(func):
        raise ValueError(f"func must be callable or None, got {type(func).__name__}")
    model = _cpu_copy(pytorch_model)
    state: dict[str, Any] = {}

    def prepare() -> dict[str, str]:
        import os

        import torch

        details = {"framework": f"torch {torch.__version__}"}
        device, precision = torch.device("cpu"), "fp32"
        if os.environ.get("CLIPPER_DEVICE") == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            if torch.cuda.is_available():
                device = torch.device("cuda")
                precision = os.environ.get("CLIPPER_PRECISION") or "fp32"
            else:
                details["warning"] = (
                    f"placed on GPU(s) {visible or '?'}, but this torch has no CUDA device: "
                    "running on the CPU"
                )
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        model.to(device=device, dtype=dtype).eval()
        label = "cpu"
        if device.type == "cuda":
            label = "cuda:" + (os.environ.get("CUDA_VISIBLE_DEVICES") or "0")
        state.update(device=device, dtype=dtype)
        return {**details, "device": label, "precision": precision}

    def plain(value: Any) -> Any:
        # numpy values (and tensors) become lists and numbers, float32 at its own
        # precision; clipper is importable wherever the closure runs
        from clipper.rpc.protocol import plain_value

        return plain_value(value)

    def predict(inputs: Any) -> list[Any]:
        import numpy as np
        import torch

        if not state:
            prepare()
        with torch.inference_mode():
            if func is None:
                # np.array copies: the container's batch is a read-only buffer;
                # then one copy to the device, cast there
                batch = torch.from_numpy(np.array(inputs, dtype=np.float32))
                out: Any = model(batch.to(state["device"], state["dtype"]))
            else:
                out = func(model, inputs)
            if isinstance(out, torch.Tensor) and (
                out.device.type != "cpu" or out.dtype in (torch.float16, torch.bfloat16)
            ):
                out = out.to("cpu", torch.float32 if out.is_floating_point() else out.dtype)
        return [plain(row) for row in out]

    predict.clipper_prepare = prepare  # type: ignore[attr-defined]
    return predict


def deploy_pytorch_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str,
    input_type: str,
    func: Callable[[Any, Any], Any] | None,
    pytorch_model: Any,
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
    """Deploy ``pytorch_model`` (a ``torch.nn.Module``) as model ``name:version``.

    ``func(model, inputs)`` receives the module (on the replica's device, in
    eval mode, under ``torch.inference_mode()``) and one batch, and returns one output
    per input; tensors and numpy values in what it returns become plain
    lists and numbers. ``func=None`` feeds the batch to the module as a
    float32 tensor and answers each input with its output row as a list.

    Raises ValueError, before anything is shipped, when ``pytorch_model`` is
    not a module or ``func`` is not callable. The other keyword arguments
    are those of :func:`~clipper.deployers.python.deploy_python_closure`.
    """
    deploy_python_closure(
        clipper_conn,
        name,
        version,
        input_type,
        _make_predict(func, pytorch_model),
        labels=labels,
        batch_size=batch_size,
        num_replicas=num_replicas,
        pkgs_to_install=pkgs_to_install,
        options=options,
        exist_ok=exist_ok,
        wait=wait,
        timeout=timeout,
    )
