"""Models the manager tests deploy; shipped by value (replicas cannot import ``tests``)."""

from __future__ import annotations

import os
from typing import Any


def total(xs: Any) -> list[float]:
    """The sum of each input."""
    return [float(sum(x)) for x in xs]


def whoami(xs: Any) -> list[int]:
    """The replica's process id, for each input (to see which replica answered)."""
    return [os.getpid()] * len(xs)


class Unloadable:
    """Pickles fine; fails when a replica loads it (the model never starts)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_fail_to_load, ())


def _fail_to_load() -> None:
    raise RuntimeError("this model cannot be loaded")


def make_gil_holder(flag_file: str) -> Any:
    """Sums each input; while ``flag_file`` exists, a batch never returns from a
    C call that holds the GIL (libc's ``sleep`` through ``ctypes.PyDLL``): no
    other thread of the replica runs, its heartbeats and its watchdog included."""

    def gil_holder(xs: Any) -> list[float]:
        if os.path.exists(flag_file):
            import ctypes

            ctypes.PyDLL(None).sleep(3600)
        return [float(sum(x)) for x in xs]

    return gil_holder
