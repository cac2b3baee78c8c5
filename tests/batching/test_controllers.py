"""Batch-size controllers against simulated models with latency a + b·batch."""

import random

import pytest

from clipper.batching.controllers import AIMDController, QuantileRegressionController

TARGET = 0.010  # 10 ms


def drive(controller, latency_of, steps, noise=None, rng=None):
    """Saturating load: every batch fills the current maximum."""
    sizes = []
    for _ in range(steps):
        size = controller.max_batch_size()
        latency = latency_of(size) + (noise(rng) if noise else 0.0)
        controller.observe(size, latency)
        sizes.append(controller.max_batch_size())
    return sizes


def fast(b):
    return 0.001 + 0.0002 * b  # fits the target up to b = 45


def slow(b):
    return 0.002 + 0.0004 * b  # fits the target up to b = 20


def test_aimd_converges_to_the_largest_batch_that_fits():
    c = AIMDController(TARGET)
    sizes = drive(c, fast, 300)
    settled = sizes[100:]
    assert max(settled) <= 45 and min(settled) >= 36
    assert fast(max(settled)) <= TARGET


def test_aimd_backs_off_when_the_model_slows_and_recovers_when_it_speeds_up():
    c = AIMDController(TARGET)
    drive(c, fast, 200)
    before = c.max_batch_size()
    sizes = drive(c, slow, 100)
    assert max(sizes[30:]) <= 20 < before
    sizes = drive(c, fast, 200)
    assert min(sizes[100:]) >= 36


def test_aimd_does_not_grow_without_full_batches():
    c = AIMDController(TARGET, initial=4)
    for _ in range(50):
        c.observe(1, 0.0001)  # light load: batches of one
    assert c.max_batch_size() == 4


def test_aimd_parameters_are_checked():
    with pytest.raises(ValueError):
        AIMDController(TARGET, backoff=1.5)


def test_quantile_regression_picks_the_right_size_from_noisy_samples():
    rng = random.Random(7)
    c = QuantileRegressionController(TARGET)
    # Exponential noise, mean 0.5 ms: its p99 is about 2.3 ms, so the largest
    # size whose p99 fits is about (10 - 1 - 2.3) / 0.2 = 33.
    sizes = drive(c, fast, 3000, noise=lambda r: r.expovariate(1 / 0.0005), rng=rng)
    settled = sizes[2000:]
    assert min(settled) >= 27 and max(settled) <= 38


def test_quantile_regression_follows_a_slowdown():
    rng = random.Random(3)
    c = QuantileRegressionController(TARGET, window=300)
    drive(c, fast, 1000, noise=lambda r: r.expovariate(1 / 0.0002), rng=rng)
    sizes = drive(c, slow, 1500, noise=lambda r: r.expovariate(1 / 0.0002), rng=rng)
    assert max(sizes[-200:]) <= 21
