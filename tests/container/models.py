"""Models the container's end-to-end tests deploy (pickled by value into containers)."""

from __future__ import annotations

from typing import Any

import numpy as np


def first_feature_positive(xs: Any) -> list[float]:
    """Raises on a batch holding a row whose first feature is negative."""
    for x in xs:
        if x[0] < 0:
            raise ValueError(f"negative first feature: {float(x[0])}")
    return [float(sum(x)) for x in xs]


def thirds_float32(xs: Any) -> Any:
    """float32 outputs, as a numpy array (what torch or onnx models give)."""
    return np.asarray(xs, dtype=np.float32)[:, 0] / np.float32(3)


def nan_for_zero(xs: Any) -> list[float]:
    """NaN (or infinity) for a row whose first feature is 0 (or 1)."""
    out = []
    for x in xs:
        out.append(float("nan") if x[0] == 0 else float("inf") if x[0] == 1 else float(x[0]))
    return out


class Scaler:
    """An object with ``predict``, as scikit-learn-style models are."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, xs: Any) -> Any:
        return (np.asarray(xs, dtype=np.float64) * self.factor).sum(axis=1)
