"""Models deployed by the end-to-end tests (pickled by value into containers)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def total(xs: Any) -> list[float]:
    return [float(np.sum(x)) for x in xs]


def describe(xs: Any) -> list[str]:
    """Shows what the container received: type and dtype per input."""
    if isinstance(xs, np.ndarray):
        return [f"ndarray{xs.shape}:{xs.dtype}:{float(x.sum())}" for x in xs]
    out = []
    for x in xs:
        if isinstance(x, np.ndarray):
            out.append(f"array{x.shape}:{x.dtype}")
        elif isinstance(x, bytes):
            out.append(f"bytes:{len(x)}:{x[:4].hex()}")
        elif isinstance(x, str):
            out.append(f"str:{x.upper()}")
        else:
            out.append(f"json:{type(x).__name__}:{x!r}")
    return out


def sleepy(xs: Any) -> list[str]:
    time.sleep(float(os.environ.get("TEST_SLEEP", "1.0")))
    return ["late"] * len(xs)


def slow_total(xs: Any) -> list[float]:
    time.sleep(0.3)
    return [float(np.sum(x)) for x in xs]


def picky(xs: Any) -> list[float]:
    if any(float(np.sum(x)) < 0 for x in xs):
        raise ValueError("negative input")
    return [float(np.sum(x)) for x in xs]


def wrong_count(xs: Any) -> list[int]:
    return [1] * (len(xs) + 1)


def pid(xs: Any) -> list[int]:
    time.sleep(0.05)
    return [os.getpid()] * len(xs)


def batch_economics(xs: Any) -> list[float]:
    """2 ms per batch plus 0.1 ms per input: batching pays."""
    time.sleep(0.002 + 0.0001 * len(xs))
    return [float(np.sum(x)) for x in xs]


def make_slowable(flag_file: str) -> Any:
    """5 ms + 0.1 ms per input until ``flag_file`` exists, then 20 ms + 3 ms per input.

    Not faster at first: while a batch runs, a closed-loop client's other
    queries must pile up in the queue for batches to fill (AIMD grows only on
    full batches); with 1 ms batches a client slowed by a busy machine kept
    the queue too short and the batch size never grew."""

    def slowable(xs: Any) -> list[float]:
        if os.path.exists(flag_file):
            time.sleep(0.020 + 0.003 * len(xs))
        else:
            time.sleep(0.005 + 0.0001 * len(xs))
        return [float(np.sum(x)) for x in xs]

    return slowable


def make_one_slow_replica(claim_file: str, slow_s: float) -> Any:
    """Answers each input with its replica's pid. The first replica to be
    called claims ``claim_file`` and takes ``slow_s`` per batch (a replica on a
    slower machine); the others answer at once."""
    slow: list[bool] = []

    def one_slow(xs: Any) -> list[int]:
        if not slow:
            try:
                os.close(os.open(claim_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                slow.append(True)
            except FileExistsError:
                slow.append(False)
        if slow[0]:
            time.sleep(slow_s)
        return [os.getpid()] * len(xs)

    return one_slow


def make_counting() -> Any:
    """Counts its calls (per container process); slow enough to overlap queries."""
    calls = [0]

    def counting(xs: Any) -> list[int]:
        calls[0] += 1
        time.sleep(0.3)
        return [calls[0]] * len(xs)

    return counting


def make_classifier(accuracy: float, salt: int) -> Any:
    """Answers the label of input [i] (which is i % 10) right ``accuracy`` of the time,
    deterministically per input, so a cache or a retry sees the same answer."""

    def classify(xs: Any) -> list[int]:
        out = []
        for x in xs:
            i = int(x[0])
            wrong = ((i * 7919 + salt * 104729) % 1000) >= accuracy * 1000
            out.append((i + 1) % 10 if wrong else i % 10)
        return out

    return classify


def make_straggler(answer: int) -> Any:
    def straggle(xs: Any) -> list[int]:
        time.sleep(2.0)
        return [answer] * len(xs)

    return straggle


def make_leaky(chunk_mb: int) -> Any:
    """Keeps ``chunk_mb`` more memory on every call: a model that leaks."""
    hoard: list[bytearray] = []

    def leaky(xs: Any) -> list[int]:
        hoard.append(bytearray(chunk_mb * 1024 * 1024))
        return [len(hoard)] * len(xs)

    return leaky


def slow_second(xs: Any) -> list[str]:
    time.sleep(1.0)
    return ["done"] * len(xs)
