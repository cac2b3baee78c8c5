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

    It holds a CPU copy of the module; the container puts it in eval mode on
    the first batch and runs every batch under ``torch.inference_mode()``.
    With ``func=None`` the batch becomes a float32 tensor, goes through the
    module, and each output row becomes a list (or a number for 1-D outputs).
    Self-contained: it unpickles without importing this module.
    """
    if func is not None and not callable(func):
        raise ValueError(f"func must be callable or None, got {type(func).__name__}")
    model = _cpu_copy(pytorch_model)
    ready: list[bool] = []

    def plain(value: Any) -> Any:
        # numpy values (and tensors) become lists and numbers, float32 at its own
        # precision; clipper is importable wherever the closure runs
        from clipper.rpc.protocol import plain_value

        return plain_value(value)

    def predict(inputs: Any) -> list[Any]:
        import numpy as np
        import torch

        if not ready:
            model.eval()
            ready.append(True)
        with torch.inference_mode():
            if func is None:
                # np.array copies: the container's batch is a read-only buffer
                out: Any = model(torch.from_numpy(np.array(inputs, dtype=np.float32)))
            else:
                out = func(model, inputs)
        return [plain(row) for row in out]

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

    ``func(model, inputs)`` receives the module (on the CPU, in eval mode,
    under ``torch.inference_mode()``) and one batch, and returns one output
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
