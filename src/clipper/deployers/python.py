"""Deploy a Python function (closure) as a model: cloudpickled, shipped, served."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:
    from ..admin import ClipperConnection


def deploy_python_closure(
    clipper_conn: ClipperConnection,
    name: str,
    version: str,
    input_type: str,
    func: Callable[[Any], list[Any]],
    *,
    labels: list[str] | None = None,
    batch_size: int = -1,
    num_replicas: int = 1,
) -> None:
    """Deploy ``func`` as model ``name:version``.

    ``func`` receives one batch (a 2-D numpy array for same-length numeric
    inputs, else a list) and returns one JSON-serialisable output per input.
    Its referenced modules must import in the container (the server's
    Python environment).
    """
    data = cloudpickle.dumps(func)
    clipper_conn.add_model(
        {
            "model_name": name,
            "model_version": str(version),
            "input_type": input_type,
            "labels": labels or [],
            "batch_size": batch_size,
            "num_replicas": num_replicas,
            "model_data": base64.b64encode(data).decode(),
        }
    )
