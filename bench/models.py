"""Deterministic offline workloads with real batch economics.

Each model is a plain object with ``predict(batch) -> list``; the benchmark
ships it to a container with cloudpickle *by value* (``bench`` is not an
installed package, so the container could not import it by reference).

- ``MLP``: a numpy multi-layer perceptron, 784→512→512→10, weights from a
  fixed seed, float32 maths; inputs are 784 integers 0-255 (MNIST-like
  pixels). One query costs ~0.67 M multiply-adds, so a matrix-matrix
  product over a batch is far cheaper per query than one matrix-vector
  product per query.
- ``LinearSVM``: scikit-learn's ``LinearSVC`` trained on the bundled 8x8
  digits data (64 doubles per query). The arithmetic is tiny; what batching
  amortises is scikit-learn's fixed per-call cost (input validation and
  dispatch), the paper's linear-SVM case.
- ``RandomForest``: scikit-learn's ``RandomForestClassifier`` (25 trees, one
  thread) on the same digits data. Every call walks each tree once through
  Python-level dispatch (~50 µs a tree) whatever the batch size, so a batch
  of 64 costs about what one query does: the strongest batch economics of
  the set.
- ``NoOp``: answers 0 for every input: what is left is the serving system.
- ``Slowable``: wraps a model; while a flag file exists, each batch also
  sleeps the time written in it (to slow a model down in the middle of a
  run and watch the batch-size controller react).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import numpy as np

MLP_SHAPE = (784, 512, 512, 10)
DIGITS_FEATURES = 64


class MLP:
    """A fixed-seed 784→512→512→10 ReLU network; outputs the argmax class."""

    shape: tuple[int, ...] = MLP_SHAPE

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        for fan_in, fan_out in itertools.pairwise(self.shape):
            scale = np.sqrt(2.0 / fan_in)
            self.weights.append((rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32))
            self.biases.append(np.zeros(fan_out, dtype=np.float32))

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32) * np.float32(1 / 255)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < last:
                np.maximum(h, 0, out=h)
        return h

    def predict(self, inputs: Any) -> list[int]:
        x = np.asarray(inputs).reshape(len(inputs), MLP_SHAPE[0])
        return self.logits(x).argmax(axis=1).tolist()


class DigitsClassifier:
    """A scikit-learn classifier fitted on the bundled digits data (deterministic)."""

    def __init__(self, model: Any) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.model = model.fit(digits.data, digits.target)

    def predict(self, inputs: Any) -> list[int]:
        x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), DIGITS_FEATURES)
        return self.model.predict(x).tolist()


class LinearSVM(DigitsClassifier):
    """scikit-learn ``LinearSVC`` on the digits data."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.svm import LinearSVC

        super().__init__(LinearSVC(C=0.01, random_state=seed, max_iter=5000))


class RandomForest(DigitsClassifier):
    """scikit-learn ``RandomForestClassifier`` on the digits data: ``trees`` trees,
    one thread (``n_jobs=1``: the replica has one core, and joblib's threads
    would only add scheduling to every call)."""

    def __init__(self, seed: int = 0, trees: int = 25) -> None:
        from sklearn.ensemble import RandomForestClassifier

        super().__init__(RandomForestClassifier(n_estimators=trees, n_jobs=1, random_state=seed))


class NoOp:
    """Answers 0 for every input."""

    def predict(self, inputs: Any) -> list[int]:
        return [0] * len(inputs)


class Slowable:
    """``model`` plus, while ``flag_path`` exists, a sleep in every batch of
    ``A + B·n`` milliseconds (``A B`` read from the file; n the batch size)."""

    def __init__(self, model: Any, flag_path: str) -> None:
        self.model = model
        self.flag_path = flag_path

    def predict(self, inputs: Any) -> list[Any]:
        per_batch_ms = per_query_ms = 0.0
        try:
            with open(self.flag_path) as f:
                per_batch_ms, per_query_ms = (float(v) for v in f.read().split())
        except (OSError, ValueError):
            pass
        out: list[Any] = self.model.predict(inputs)
        extra_ms = per_batch_ms + per_query_ms * len(inputs)
        if extra_ms > 0:
            time.sleep(extra_ms / 1000)
        return out


def set_slowdown(flag_path: str, slowdown: tuple[float, float] | None) -> None:
    """Slow a ``Slowable`` down by (ms per batch, ms per query), or back to normal (None)."""
    if slowdown is None:
        if os.path.exists(flag_path):
            os.unlink(flag_path)
        return
    tmp = flag_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{slowdown[0]} {slowdown[1]}")
    os.replace(tmp, flag_path)


def mlp_inputs(count: int, seed: int = 1) -> list[list[int]]:
    """``count`` distinct MNIST-like inputs: 784 integers 0-255."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, MLP_SHAPE[0])).tolist()


def digits_inputs(count: int) -> list[list[int]]:
    """Rows of the digits data set (64 values 0-16), cycled to ``count``."""
    from sklearn.datasets import load_digits

    data = load_digits().data.astype(int)
    return [data[i % len(data)].tolist() for i in range(count)]


def paced_timing(
    model: Any, inputs: list[Any], interval_s: float, calls: int = 100
) -> tuple[float, float]:
    """Median and p99 seconds of single-query calls made ``interval_s`` apart, in
    this process: the model's own time at a low rate, its caches gone cold in
    between as they do in a server at that rate (the light MLP: 0.11 ms back to
    back, about 0.5 ms every 20 ms on our benchmark machine)."""
    rows = [
        np.asarray(inputs[i % len(inputs) : i % len(inputs) + 1], dtype=np.float64)
        for i in range(calls + 5)
    ]
    samples = []
    for i, x in enumerate(rows):
        time.sleep(interval_s)
        t0 = time.perf_counter()
        model.predict(x)
        if i >= 5:
            samples.append(time.perf_counter() - t0)
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99)


def timing(
    model: Any, inputs: list[Any], sizes: tuple[int, ...] = (1, 8, 32, 64)
) -> dict[int, float]:
    """Median seconds per batch of each size, in this process (no serving)."""
    out: dict[int, float] = {}
    for size in sizes:
        x = np.asarray(inputs[:size], dtype=np.float64)
        model.predict(x)
        samples = []
        for _ in range(max(5, 200 // size)):
            t0 = time.perf_counter()
            model.predict(x)
            samples.append(time.perf_counter() - t0)
        out[size] = float(np.median(samples))
    return out
