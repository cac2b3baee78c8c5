"""What the deployer tests share: a batch as the container sees it, a shipped closure."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np


def container_batch(rows: Any, dtype: Any = np.float64) -> np.ndarray:
    """A 2-D batch as the container decodes it: read-only, over a byte buffer."""
    arr = np.asarray(rows, dtype=dtype)
    return np.frombuffer(arr.tobytes(), dtype=dtype).reshape(arr.shape)


def shipped(func: Callable[[Any], list[Any]]) -> Callable[[Any], list[Any]]:
    """The closure after the trip to the container: cloudpickled, plainly unpickled."""
    return pickle.loads(cloudpickle.dumps(func))  # type: ignore[no-any-return]


class Recorder:
    """Stands in for deploy_python_closure: records what a deployer would ship."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))
