"""Shedding at arrival (issue #28): a query the queue ahead of it would make late is
answered at once, never queued. The dispatcher on fake timers and a fake transport."""

import asyncio

import numpy as np
import pytest

from clipper.batching.controllers import AIMDController, FixedBatchSize
from clipper.batching.dispatcher import Dispatcher, ModelConfig
from clipper.batching.model_state import ModelState
from clipper.batching.outcomes import SHED
from clipper.batching.queue import DeadlineQueue, Task
from clipper.cache import PredictionCache
from clipper.timers import FakeTimers
from clipper.types import DefaultReason, reason_of
from tests.batching.test_dispatcher import MODEL, FakeTransport, answer, replica

BATCH_S = 0.010  # every batch takes 10 ms on the fake clock


def make(*, shed=True, batch=4, cache=None):
    timers = FakeTimers(100.0)
    config = ModelConfig(FixedBatchSize(batch), 0.0, 1000)
    d = Dispatcher(configure=lambda _m: config, timers=timers, shed_at_arrival=shed, cache=cache)
    t = FakeTransport()
    d.set_transport(t)
    return d, t, timers


async def learn_latency(d, t, timers, r, batches=2):
    """Run ``batches`` one-query batches of BATCH_S each: the replica's latency
    estimate (it skips the first) becomes BATCH_S."""
    for i in range(batches):
        f = d.submit(MODEL, np.array([float(1000 + i)]), deadline=timers.now() + 1.0)
        await asyncio.sleep(0)
        timers.advance(BATCH_S)
        answer(d, r, t.sent[-1][1], ["ok"])
        assert (await f).ok


def test_capacity_is_unknown_until_every_replica_has_an_estimate():
    state = ModelState(MODEL, ModelConfig(FixedBatchSize(8)), DeadlineQueue(100))
    assert state.capacity_within(0.05) is None  # no replica
    state.join(replica(b"r1"), 0.0)
    state.join(replica(b"r2"), 0.0)
    assert state.capacity_within(0.05) is None  # no estimate yet
    one, two = state.members.values()
    one.estimate.latency = 0.010
    assert state.capacity_within(0.05) is None  # r2 has none yet
    two.estimate.latency = 0.020
    # Each replica: its largest batch per latency, for the whole budget.
    assert state.capacity_within(0.05) == pytest.approx(8 * 0.05 / 0.010 + 8 * 0.05 / 0.020)
    assert state.capacity_within(0.015) == pytest.approx(8 * 0.015 / 0.010 + 8 * 0.015 / 0.020)


def test_a_query_the_queue_would_make_late_is_answered_at_once():
    async def main():
        d, t, timers = make(batch=4)
        r = replica(b"r1")
        d.replica_joined(r)
        await learn_latency(d, t, timers, r)
        deadline = timers.now() + 0.025  # room for 4 x 25 / 10 = 10 queued queries
        first = d.submit(MODEL, np.array([0.0]), deadline=deadline)
        await asyncio.sleep(0)  # the replica takes it: a batch in flight
        queued = [d.submit(MODEL, np.array([float(i)]), deadline=deadline) for i in range(1, 11)]
        shed = [d.submit(MODEL, np.array([float(i)]), deadline=deadline) for i in range(11, 14)]
        assert not any(f.done() for f in queued)
        for f in shed:  # answered now, before any time passes
            assert f.done()
            outcome = f.result()
            assert not outcome.ok and outcome.overloaded
            assert reason_of(outcome) is DefaultReason.OVERLOADED
            assert SHED in outcome.error and "10 queries wait ahead" in outcome.error
        stats = d.statistics()[0]
        assert stats.shed == 3 and stats.queue.depth == 10 and stats.queue.enqueued == 13
        assert stats.to_json()["shed"] == 3
        # The estimate leans optimistic (it does not count the batch in flight),
        # so the last queued batch may still be refused at dispatch: every
        # queued query is answered by its deadline, some of them by the model.
        timers.advance(BATCH_S)
        answer(d, r, t.sent[-1][1], ["first"])
        timers.advance(BATCH_S)
        answer(d, r, t.sent[-1][1], ["x"] * 4)
        timers.advance(max(0.0, deadline - timers.now()))
        assert (await first).ok
        assert all(f.done() for f in queued)
        assert sum(f.result().ok for f in queued) >= 4
        assert all(f.result().ok or "not computed" in f.result().error for f in queued)

    asyncio.run(main())


def test_a_longer_deadline_has_room_behind_the_same_queue():
    async def main():
        d, t, timers = make(batch=4)
        r = replica(b"r1")
        d.replica_joined(r)
        await learn_latency(d, t, timers, r)
        d.submit(MODEL, np.array([0.0]), deadline=timers.now() + 0.020)
        await asyncio.sleep(0)
        for i in range(1, 9):
            d.submit(MODEL, np.array([float(i)]), deadline=timers.now() + 0.020)
        late = d.submit(MODEL, np.array([9.0]), deadline=timers.now() + 0.020)
        roomy = d.submit(MODEL, np.array([10.0]), deadline=timers.now() + 0.100)
        assert late.done() and not late.result().ok
        assert not roomy.done()

    asyncio.run(main())


def test_nothing_is_shed_when_the_setting_is_off_or_before_an_estimate():
    async def main():
        d, t, timers = make(batch=4, shed=False)
        r = replica(b"r1")
        d.replica_joined(r)
        await learn_latency(d, t, timers, r)
        futures = [
            d.submit(MODEL, np.array([float(i)]), deadline=timers.now() + 0.030) for i in range(20)
        ]
        assert not any(f.done() for f in futures)
        assert d.statistics()[0].shed == 0

        d2, _, timers2 = make(batch=4)
        d2.replica_joined(replica(b"r2"))
        fresh = [
            d2.submit(MODEL, np.array([float(i)]), deadline=timers2.now() + 0.030)
            for i in range(20)
        ]
        assert not any(f.done() for f in fresh)  # no latency estimate: nothing to judge by

    asyncio.run(main())


def test_a_cache_hit_is_answered_even_while_shedding():
    async def main():
        d, t, timers = make(batch=4, cache=PredictionCache(1 << 20))
        r = replica(b"r1")
        d.replica_joined(r)
        await learn_latency(d, t, timers, r)
        hit = np.array([1000.0])  # learn_latency's first input: its output is cached
        d.submit(MODEL, np.array([0.0]), deadline=timers.now() + 0.030)
        await asyncio.sleep(0)
        for i in range(1, 12):
            d.submit(MODEL, np.array([float(i)]), deadline=timers.now() + 0.030)
        f = d.submit(MODEL, hit, deadline=timers.now() + 0.030)
        assert f.done() and f.result().ok and f.result().output == "ok"

    asyncio.run(main())


def test_aimd_grows_on_a_backlog_even_when_the_cost_curve_sent_less():
    from clipper.batching.controllers import AIMDController

    c = AIMDController(0.010, initial=2)
    # Batches of 1 (the curve's choice), well within the target, no backlog: hold.
    c.observe(1, 0.001, waiting=0)
    assert c.max_batch_size() == 2
    # The same, with a full batch's worth still waiting: the cap grows.
    c.observe(1, 0.001, waiting=2)
    assert c.max_batch_size() == 4
    c.observe(1, 0.001, waiting=30)
    assert c.max_batch_size() == 6
    c.observe(6, 0.020, waiting=30)  # a miss still backs off
    assert c.max_batch_size() == 5


def _heavy_replica(state):
    """A replica of a model whose lone queries take 2 ms but whose usual batches
    of a dozen took 6 ms (a large cost per batch), as its estimate says."""
    state.join(replica(b"r1"), 0.0)
    (member,) = state.members.values()
    member.estimate.latency = 0.006
    for _ in range(3):
        member.curve.observe(1, 0.002)
        member.curve.observe(12, 0.0072)  # 0.6 ms a query
    return member


def _tasks(state, deadlines):
    outcomes = []
    for d in deadlines:
        assert state.queue.push(Task(f"q{d}", d, outcomes.append, 0.0))
    return outcomes


def test_a_lone_query_is_refused_by_what_a_batch_of_one_takes_not_the_usual_batch():
    state = ModelState(MODEL, ModelConfig(AIMDController(0.01, initial=16)), DeadlineQueue(100))
    member = _heavy_replica(state)
    assert member.latency_for(1) == pytest.approx(0.002)
    assert member.latency_for(12) == pytest.approx(0.006)  # never more than the estimate
    now = 10.0
    refused = _tasks(state, [now + 0.004])  # 4 ms left: a batch of one makes it
    batch = state.take_batch(member, 16, now, 0)
    assert [t.input for t in batch] == [f"q{now + 0.004}"] and refused == []
    state.make_idle(member, now)
    refused = _tasks(state, [now + 0.001])  # 1 ms left: not even a batch of one
    assert state.take_batch(member, 16, now, 0) == []
    assert len(refused) == 1 and not refused[0].ok
    assert reason_of(refused[0]) is DefaultReason.SLO and "about 2 ms" in refused[0].error
