"""Models the OIP end-to-end tests deploy (pickled by value into containers)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def total(xs: Any) -> list[float]:
    return [float(np.sum(x)) for x in xs]


def int_total(xs: Any) -> list[int]:
    return [int(np.sum(x)) for x in xs]


def double_total(xs: Any) -> list[float]:
    return [2.0 * float(np.sum(x)) for x in xs]


def pairs(xs: Any) -> list[list[float]]:
    return [[float(np.min(x)), float(np.max(x))] for x in xs]


def upper(xs: Any) -> list[str]:
    return [x.upper() for x in xs]


def sizes(xs: Any) -> list[dict[str, Any]]:
    return [{"size": len(x), "head": x[:2].hex()} for x in xs]


def slow_total(xs: Any) -> list[float]:
    time.sleep(2.5)
    return [float(np.sum(x)) for x in xs]


def sleepy(xs: Any) -> list[str]:
    time.sleep(5.0)
    return ["late"] * len(xs)
