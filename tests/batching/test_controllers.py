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


def test_quantile_regression_grows_past_one_on_a_model_with_a_large_fixed_cost():
    # A random forest: ~4 ms per call whatever the batch, 20 µs per query.
    # With noise, batches of one have a p99 above half the target, so a line
    # through the origin (the guess from one size) says two would not fit; only
    # trying two shows the slope is nearly flat. The fit then allows about
    # (10 - 4 - 2.3) / 0.02 = 185.
    rng = random.Random(5)
    c = QuantileRegressionController(TARGET)
    sizes = drive(
        c, lambda b: 0.004 + 0.00002 * b, 2000, noise=lambda r: r.expovariate(1 / 0.0005), rng=rng
    )
    assert min(sizes[1500:]) >= 100


def test_cost_curve_tries_unknown_sizes_then_picks_the_cheapest_per_query():
    from clipper.batching.controllers import BatchCostCurve

    curve = BatchCostCurve(explore=2)
    assert curve.choose(0, 64) == 1 and curve.choose(1, 64) == 1
    assert curve.choose(3, 64) == 3  # nothing known: try what is there
    assert curve.choose(10, 4) == 4  # never above the controller's cap
    # A heavy float32 network on OpenBLAS: pairs cost 4x a single call, big
    # batches are cheap per query.
    measured = [(1, 0.7), (2, 3.0), (3, 3.1), (4, 3.2), (16, 4.8), (32, 7.0), (64, 10.0)]
    for size, ms in measured:
        for _ in range(2):
            curve.observe(size, ms / 1e3)
    assert curve.choose(2, 64) == 1  # a pair costs more than two singles
    assert curve.choose(4, 64) == 1
    assert curve.choose(6, 64) == 6  # 5-8 never measured: tried
    assert curve.choose(12, 64) == 8  # 9-16 is known, 5-8 not yet: tried first
    for _ in range(2):
        curve.observe(8, 3.7e-3)
    assert curve.choose(12, 64) == 12  # 9-16: 0.3 ms per query, the cheapest
    assert curve.choose(16, 64) == 16
    assert curve.choose(64, 64) == 64
    assert curve.curve()["1"] == 0.7 and curve.curve()["2"] == 1.5


def test_cost_curve_of_a_light_model_always_takes_the_whole_queue():
    from clipper.batching.controllers import BatchCostCurve

    curve = BatchCostCurve(explore=1)
    for size in (1, 2, 4, 8, 16, 32):
        curve.observe(size, (0.2 + 0.02 * size) / 1e3)  # fixed cost + per query
    assert [curve.choose(n, 64) for n in (2, 3, 7, 20, 32)] == [2, 3, 7, 20, 32]


def test_cost_curve_follows_a_model_that_gets_cheaper():
    from clipper.batching.controllers import BatchCostCurve

    curve = BatchCostCurve(explore=1, weight=0.5)
    curve.observe(1, 0.001)
    curve.observe(2, 0.004)
    assert curve.choose(2, 8) == 1
    for _ in range(10):
        curve.observe(2, 0.001)  # e.g. the machine got quieter
    assert curve.choose(2, 8) == 2


def overload(controller, seed, steps=1000, rate=2400.0, slo=0.020):
    """A cold start under overload, the frontend and the model on one core.

    The benchmark's large MLP: a batch costs 2.3 ms + 0.12 ms per query, times
    1.35 for the frontend's share of the core. While a backlog stands (more
    waiting than the batch size) the frontend's work in between adds a heavy
    tail (exponential, mean 1.5 ms); otherwise a light one. Queries older than
    the SLO expire, so the queue holds at most ``rate · slo``. Returns the
    queue length after each batch.
    """
    rng = random.Random(seed)
    queue = rate * slo
    queues = []
    for _ in range(steps):
        cap = controller.max_batch_size()
        size = max(1, min(cap, int(queue)))
        tail = 0.0015 if queue - size > cap else 0.0003
        latency = 1.35 * (0.0023 + 0.00012 * size) + rng.expovariate(1 / tail)
        queue = min(max(queue - size, 0) + rate * latency, rate * slo)
        controller.observe(size, latency, int(queue))
        queues.append(queue)
    return queues


@pytest.mark.parametrize("seed", range(1, 11))
def test_quantile_regression_grows_out_of_an_overload_that_slows_small_batches(seed):
    # Small batches cannot keep up (size 3: ~1,700 queries/s) and, slowed by the
    # backlog, their p99 misses the target, so the fit alone allowed no more:
    # six seeds in ten stayed at sizes 1-3 with the queue full for good. A
    # backlog now grows the size until the queue drains (size ~14 suffices).
    c = QuantileRegressionController(TARGET)
    queues = overload(c, seed)
    drained = next(i for i, q in enumerate(queues) if q < 24)
    assert drained < 200
    assert sum(queues[-500:]) / 500 < 20


def test_quantile_regression_fit_matches_a_refit_of_the_whole_window():
    # The fit keeps the window grouped by size as samples come and go; it must
    # equal numpy's weighted fit of the window's p99 per size, computed afresh.
    import numpy as np

    rng = random.Random(9)
    c = QuantileRegressionController(TARGET, window=500)
    seen = []
    for step in range(3000):
        size = rng.choice([1, 1, 2, 3, 5, 8, 13, 21] if step < 1500 else [30, 31, 32, 2])
        latency = 0.001 + 0.0002 * size + rng.expovariate(2000)
        c.observe(size, latency)
        seen.append((size, latency))
        if step % 250 == 249:
            by_size = {}
            for s, lat in seen[-500:]:
                by_size.setdefault(s, []).append(lat)
            points = [(s, np.quantile(v, 0.99), len(v)) for s, v in by_size.items() if len(v) >= 5]
            x, y, n = (np.array(col, dtype=float) for col in zip(*points, strict=True))
            slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(n))
            fitted = c.fit()
            assert fitted == pytest.approx((intercept, max(slope, 0.0)), rel=1e-9, abs=1e-12)
            assert c.sizes_measured == sorted(int(s) for s in x)
