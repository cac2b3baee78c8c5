"""What isolating failing inputs and encoding float32 outputs cost (issue #23).

``python -m bench.isolation`` (about 30 s) prints three markdown tables, the
figures docs/reliability.md quotes:

1. **A model that never fails**: one batch through the replica's code
   (``run_predict``: decode, predict, check, encode) and the frontend's
   (``decode_result``) as they are now, against the path before per-input
   errors (no NaN check, ``decode_outputs``). The only work added is one
   byte scan of the packed outputs for NaN and infinity, in the replica.
2. **One bad row**: the same batches with one input the model raises on:
   the time of the batch against a batch that succeeds, and the calls to
   ``predict`` (bisection: 1 + 2·log2(N)).
3. **float32 outputs**: packing a model's float32 array at its own precision
   (``narrow_floats``) against widening it (``tolist``).

The model computes a 64→16 matrix product per row (numpy), so a batch's time
grows with its size, as a real model's does. Each figure is the fastest of
``--repeats`` timing loops, the two sides of a comparison alternating; the
machine is whatever it is (the ratios are what matter).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from clipper.container.runtime import run_predict
from clipper.rpc import protocol as p

WEIGHTS = np.random.default_rng(0).standard_normal((64, 16))


class Model:
    """A matrix product per row; raises on a row whose first feature is negative."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, xs: Any) -> list[float]:
        self.calls += 1
        arr = np.asarray(xs)
        if (arr[:, 0] < 0).any():
            raise ValueError(f"negative first feature: {float(arr[arr[:, 0] < 0][0, 0])}")
        return (arr @ WEIGHTS).sum(axis=1).tolist()


def batch(size: int, bad: bool) -> tuple[dict[str, Any], list[bytes]]:
    rows = np.abs(np.random.default_rng(size).standard_normal((size, 64)))
    if bad:
        rows[size // 3, 0] = -3.0
    fields, frames = p.encode_inputs("doubles", list(rows))
    header = p.parse_header(p.make(p.BATCH, id=1, input_type="doubles", deadline_s=10.0, **fields))
    return header, [bytes(f) for f in frames]


def per_call(fn: Callable[[], Any], repeats: int, budget_s: float = 0.1) -> float:
    """Seconds per call of ``fn``: the fastest of ``repeats`` timing loops (the
    least disturbed by whatever else the machine runs)."""
    fn()
    n = 1
    while True:  # calls per loop: enough to fill the budget
        started = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - started
        if took > budget_s / 4 or n > 1 << 20:
            break
        n *= 2
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - started) / n)
    return min(samples)


def compare(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int
) -> tuple[float, float]:
    """Seconds per call of each, timed in turns (drift hits both alike)."""
    a, b = [], []
    for _ in range(repeats):
        a.append(per_call(first, 1))
        b.append(per_call(second, 1))
    return min(a), min(b)


def round_trip(model: Model, header: dict[str, Any], frames: list[bytes], on: bool) -> Any:
    """One batch through the replica and back. ``on``: as now (per-input
    errors, the NaN check); off: the path before them (no check anywhere)."""
    result = run_predict(model, 1, header, frames, input_errors=on)
    parsed = p.parse_header(result[0])
    if not on:
        return p.decode_outputs(result[1:])  # what decode_result did before
    return p.decode_result(parsed, result[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    sizes = (1, 8, 64, 512)
    model = Model()

    print("| batch | before | now | difference | the NaN scan in it |")
    print("|---:|---:|---:|---:|---:|")
    for size in sizes:
        header, frames = batch(size, bad=False)
        old, new = compare(
            lambda h=header, f=frames: round_trip(model, h, f, False),
            lambda h=header, f=frames: round_trip(model, h, f, True),
            args.repeats,
        )
        packed = run_predict(model, 1, header, frames)[1]
        scan = per_call(lambda d=packed: p.may_hold_nonfinite(d), args.repeats)
        print(
            f"| {size} | {old * 1e6:.1f} µs | {new * 1e6:.1f} µs | {(new - old) * 1e6:+.1f} µs "
            f"| {scan * 1e6:.2f} µs |"
        )

    print()
    print("| batch | all good | one bad row | ratio | calls to predict |")
    print("|---:|---:|---:|---:|---:|")
    for size in sizes[1:]:
        good_h, good_f = batch(size, bad=False)
        bad_h, bad_f = batch(size, bad=True)
        good, bad = compare(
            lambda h=good_h, f=good_f: round_trip(model, h, f, True),
            lambda h=bad_h, f=bad_f: round_trip(model, h, f, True),
            args.repeats,
        )
        counter = Model()
        got = round_trip(counter, bad_h, bad_f, True)
        assert isinstance(got, p.PartialOutputs) and got.failed == 1
        print(
            f"| {size} | {good * 1e6:.0f} µs | {bad * 1e6:.0f} µs | {bad / good:.1f}x "
            f"| {counter.calls} |"
        )

    print()
    print("| float32 outputs | widened (`tolist`) | own precision | per element |")
    print("|---|---:|---:|---:|")
    rng = np.random.default_rng(1)
    for shape in ((64,), (64, 10), (512, 10)):
        arr = rng.standard_normal(shape).astype(np.float32)
        wide, narrow = compare(
            lambda a=arr: p.pack(a.tolist()),
            lambda a=arr: p.pack(p.plain_outputs(a)),
            args.repeats,
        )
        each = (narrow - wide) / arr.size
        label = " x ".join(map(str, shape))
        print(f"| {label} | {wide * 1e6:.0f} µs | {narrow * 1e6:.0f} µs | +{each * 1e9:.0f} ns |")


if __name__ == "__main__":
    main()
