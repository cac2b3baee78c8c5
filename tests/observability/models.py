"""Models the observability tests deploy (pickled by value into containers)."""

from __future__ import annotations

import time
from typing import Any


def total(xs: Any) -> list[float]:
    return [float(sum(x)) for x in xs]


def picky(xs: Any) -> list[float]:
    """Raises for a batch holding a negative input: the batch's queries get the default."""
    if any(float(sum(x)) < 0 for x in xs):
        raise ValueError("negative input")
    return [float(sum(x)) for x in xs]


def sleepy(xs: Any) -> list[str]:
    time.sleep(0.3)
    return ["late"] * len(xs)


def parity(xs: Any) -> list[int]:
    return [int(x[0]) % 2 for x in xs]


def constant(xs: Any) -> list[int]:
    return [7] * len(xs)


def check_row(row: Any) -> None:
    if row[0] < 0:
        raise ValueError(f"negative first feature: {float(row[0])}")


def first_feature_positive(xs: Any) -> list[float]:
    """Raises on a row whose first feature is negative (in ``check_row``: the
    replica's log shows that line)."""
    for x in xs:
        check_row(x)
    return [float(sum(x)) for x in xs]
