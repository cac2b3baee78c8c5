"""Models deployed by the reliability tests (shipped by value into containers).

Some of them misbehave on purpose: they raise, leak, answer the wrong
number of outputs, return what JSON cannot carry, or hold their replica's
start-up back while a gate file exists (so a test can keep a crashed
model down for as long as it needs).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def total(xs: Any) -> list[float]:
    return [float(np.sum(x)) for x in xs]


def describe(xs: Any) -> list[str]:
    """What the container received, as a short string per input."""
    if isinstance(xs, np.ndarray):
        return [f"ndarray{x.shape}:{x.dtype}" for x in xs]
    out = []
    for x in xs:
        if isinstance(x, np.ndarray):
            out.append(f"array{x.shape}:{x.dtype}")
        elif isinstance(x, bytes):
            out.append(f"bytes:{len(x)}")
        elif isinstance(x, str):
            out.append(f"str:{len(x)}")
        else:
            out.append(f"json:{type(x).__name__}")
    return out


def make_sleeper(seconds: float) -> Any:
    """Sums each input after sleeping ``seconds`` per batch."""

    def sleeper(xs: Any) -> list[float]:
        time.sleep(seconds)
        return [float(np.sum(x)) for x in xs]

    return sleeper


def whoami(xs: Any) -> list[int]:
    """The pid of the replica that computed each input (slow enough to overlap)."""
    time.sleep(0.2)
    return [os.getpid()] * len(xs)


def wrong_count(xs: Any) -> list[int]:
    """One output too many, except for an input whose sum is 7."""
    if len(xs) == 1 and float(np.sum(xs[0])) == 7.0:
        return [7]
    return [1] * (len(xs) + 1)


def picky(xs: Any) -> list[float]:
    if any(float(np.sum(x)) < 0 for x in xs):
        raise ValueError("negative input")
    return [float(np.sum(x)) for x in xs]


LEAK: list[bytearray] = []


def leaky(xs: Any) -> list[Any]:
    """Keeps 16 MiB (touched, so resident) per batch, forever; answers how many
    chunks it holds."""
    LEAK.append(bytearray(b"\x01") * (16 * 1024 * 1024))
    return [len(LEAK)] * len(xs)


def odd_outputs(xs: Any) -> list[Any]:
    """Outputs that msgpack carries but JSON cannot: a map with binary keys (for
    an input summing to 1 or 2, nested for 2); a map with integer keys, which
    JSON carries with the keys as strings (4); a plain number otherwise."""
    out: list[Any] = []
    for x in xs:
        s = float(np.sum(x))
        if s == 1.0:
            out.append({b"\xff\x00": "one"})
        elif s == 2.0:
            out.append({"nested": {b"\x01": [1, 2]}})
        elif s == 4.0:
            out.append({1: "one", 2: "two"})
        else:
            out.append(s)
    return out


def echo(xs: Any) -> list[Any]:
    """Returns each input as it came (for json and strings apps)."""
    return list(xs)


def _hold_while(flag_file: str) -> str:
    """Runs when the model is unpickled (at a replica's start): wait while the
    gate file exists, for at most two minutes."""
    deadline = time.monotonic() + 120
    while os.path.exists(flag_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    return flag_file


class _Gate:
    """Pickles as a call to ``_hold_while``: unpickling it blocks while the gate is shut."""

    def __init__(self, flag_file: str) -> None:
        self.flag_file = flag_file

    def __reduce__(self) -> Any:
        return (_hold_while, (self.flag_file,))


def make_gated(flag_file: str, seconds: float = 0.2) -> Any:
    """A sleeper whose replicas cannot start while ``flag_file`` exists."""
    gate = _Gate(flag_file)

    def gated(xs: Any) -> list[float]:
        assert gate  # keeps the gate in the closure, so it is pickled with it
        time.sleep(seconds)
        return [float(np.sum(x)) for x in xs]

    return gated


def make_gil_holding(seconds: int = 3600) -> Any:
    """Sums each input, but a batch holding an input that sums to 13 never
    returns (within ``seconds``) from a C call that keeps the GIL (libc's
    ``sleep`` through ``ctypes.PyDLL``): the replica's other threads, its
    heartbeats and its watchdog, cannot run."""

    def gil_holding(xs: Any) -> list[float]:
        if any(float(np.sum(x)) == 13.0 for x in xs):
            import ctypes

            ctypes.PyDLL(None).sleep(seconds)
        return [float(np.sum(x)) for x in xs]

    return gil_holding


def make_hanging(seconds: float = 3600.0) -> Any:
    """Sums each input, but never returns (within ``seconds``) from a batch
    holding an input that sums to 13: a deadlocked model, still heartbeating."""

    def hanging(xs: Any) -> list[float]:
        if any(float(np.sum(x)) == 13.0 for x in xs):
            time.sleep(seconds)
        return [float(np.sum(x)) for x in xs]

    return hanging
