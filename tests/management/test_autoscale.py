"""The autoscaling policy with a test clock: bursts separated by idle time."""

import asyncio

import pytest

from clipper.batching.controllers import ControllerStatistics
from clipper.batching.dispatcher import ModelStatistics
from clipper.batching.queue import QueueStatistics
from clipper.management.autoscale import AutoscalePolicy, Autoscaler, Signals
from clipper.types import ModelId, ModelOptions


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_bursts_scale_up_from_zero_and_back_down_when_idle():
    clock = Clock()
    p = AutoscalePolicy(
        0, 3, scale_down_after_s=30, up_cooldown_s=2, down_cooldown_s=5, clock=clock
    )
    enq = missed = 0
    target = 0
    history = []
    for burst in range(3):
        # A burst: queries pile up, some expire.
        for _ in range(20):
            clock.now += 0.5
            enq += 10
            missed += 1 if target < 3 else 0
            target = p.decide(target, Signals(target, 8, target, enq, missed))
            history.append(target)
        assert target == 3, f"burst {burst}: scaled to {target}"
        # Idle minutes (compressed): nothing arrives.
        for _ in range(200):
            clock.now += 0.5
            target = p.decide(target, Signals(target, 0, 0, enq, missed))
        assert target == 0
    # From zero, the first query starts a replica at once (no cooldown).
    clock.now += 0.5
    assert p.decide(0, Signals(0, 1, 0, enq + 1, missed)) == 1


def test_it_never_leaves_its_bounds_and_waits_between_steps():
    clock = Clock()
    p = AutoscalePolicy(1, 2, scale_down_after_s=10, up_cooldown_s=2, clock=clock)
    assert p.decide(1, Signals(1, 50, 1, 100, 5)) == 2
    clock.now += 0.5
    assert p.decide(2, Signals(2, 50, 2, 200, 10)) == 2  # at the maximum
    p2 = AutoscalePolicy(1, 4, up_cooldown_s=2, clock=clock)
    assert p2.decide(1, Signals(1, 9, 1, 10, 1)) == 2
    clock.now += 0.5
    assert p2.decide(2, Signals(2, 9, 2, 20, 2)) == 2  # cooling down
    clock.now += 2
    assert p2.decide(2, Signals(2, 9, 2, 30, 3)) == 3
    for _ in range(100):
        clock.now += 1
        p2.decide(1, Signals(1, 0, 0, 30, 3))
    assert p2.decide(1, Signals(1, 0, 0, 30, 3)) == 1  # the minimum


def test_queries_shed_at_arrival_scale_up_and_keep_the_replicas_busy():
    """Shed at arrival, a burst leaves no queue behind: only the shed count says
    the replicas fall short (and that the model is not idle)."""
    clock = Clock()
    p = AutoscalePolicy(0, 3, scale_down_after_s=3, up_cooldown_s=2, clock=clock)

    def signals(target, shed):
        load = statistics(ModelId("m", "1"), target, 0, 5, shed=shed)
        return Signals.of(load)

    target = p.decide(0, signals(0, 0))
    assert target == 1  # the first queries: a cold start
    shed = 0
    for _ in range(10):  # 5 s of a burst, every extra query shed
        clock.now += 0.5
        shed += 20
        target = p.decide(target, signals(target, shed))
    assert target == 3


def test_a_short_burst_in_the_cooldown_still_scales_up_after_it():
    """Shed right after a cold start, inside the cooldown, then quiet: the
    step up waits for the cooldown, and happens."""
    clock = Clock()
    p = AutoscalePolicy(0, 3, scale_down_after_s=3, up_cooldown_s=2, clock=clock)
    assert p.decide(0, Signals(0, 1, 0, 1, 0)) == 1  # cold start
    # The replica is still starting: what it misses is no reason to add one.
    clock.now += 0.5
    assert p.decide(1, Signals(0, 0, 0, 5, 4)) == 1
    clock.now += 0.5
    assert p.decide(1, Signals(1, 0, 0, 45, 36)) == 1  # live; 32 shed; cooling down
    clock.now += 1.0
    assert p.decide(1, Signals(1, 0, 0, 45, 36)) == 2  # the cooldown is over
    clock.now += 1.0
    assert p.decide(2, Signals(2, 0, 0, 45, 36)) == 2  # no new misses: no more


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        AutoscalePolicy(3, 1)


def statistics(model, replicas, depth, enqueued, expired=0, rejected=0, shed=0):
    """The dispatcher's typed statistics of one model version."""
    return ModelStatistics(
        model=model,
        replicas=replicas,
        idle_replicas=replicas,
        in_flight_batches=0,
        batches=0,
        errors=0,
        max_batch_size=8,
        mean_batch_size=0.0,
        last_batch_size=0,
        last_batch_latency_s=0.0,
        max_delay_s=0.0,
        coalesced=0,
        controller=ControllerStatistics("fixed", 8, 0),
        queue=QueueStatistics(depth, 100, enqueued, 0, expired, rejected),
        shed=shed,
    )


def test_signals_come_from_the_dispatchers_typed_statistics():
    s = Signals.of(statistics(ModelId("m", "1"), 2, 5, 40, expired=3, rejected=4))
    assert s == Signals(live_replicas=2, queue_depth=5, in_flight_batches=0,
                        enqueued_total=40, missed_total=7)  # fmt: skip
    # Queries shed at arrival arrived, and were missed.
    s = Signals.of(statistics(ModelId("m", "1"), 2, 0, 40, expired=3, rejected=4, shed=10))
    assert (s.enqueued_total, s.missed_total) == (50, 17)


def test_the_autoscaler_scales_each_model_version_by_its_model_id():
    clock = Clock()
    bursty, steady = ModelId("bursty", "1"), ModelId("steady", "2")
    stats = [statistics(bursty, 0, 0, 0), statistics(steady, 1, 0, 0)]
    applied = []

    async def apply():
        applied.append(dict(scaler.targets))

    options = {bursty: ModelOptions(min_replicas=0, max_replicas=2), steady: ModelOptions()}
    scaler = Autoscaler(lambda: stats, lambda: options, apply, clock=clock)
    scaler.refresh()
    assert scaler.targets == {bursty: 0} and not scaler.is_autoscaled(steady)
    stats = [statistics(bursty, 0, 1, 1), statistics(steady, 1, 9, 90)]  # a first query
    assert asyncio.run(scaler.tick()) is True
    assert applied == [{bursty: 1}] and scaler.events[-1].model == "bursty:1"
