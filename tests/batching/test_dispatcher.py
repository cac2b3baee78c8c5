"""The dispatcher against a fake transport and fake timers (the real ones are tested
end to end): no test waits for the wall clock; time moves when a test moves it."""

import asyncio

import numpy as np
import pytest

from clipper.batching.controllers import AIMDController, FixedBatchSize
from clipper.batching.dispatcher import (
    EXPIRED,
    PROBE_AFTER_S,
    QUEUE_FULL,
    TOO_SLOW,
    Dispatcher,
    ModelConfig,
)
from clipper.cache import PredictionCache
from clipper.rpc import protocol as p
from clipper.rpc.server import FrameSender, Replica
from clipper.timers import FakeTimers
from clipper.types import DefaultReason, ModelId, reason_of

MODEL = ModelId("m", "1")


class FakeTransport:
    """Records each batch sent: (replica identity, {"id", "count"}, inputs)."""

    def __init__(self):
        self.sent: list[tuple[bytes, dict, list]] = []
        self.fail_for: set[bytes] = set()

    def send_batch(self, replica, batch_id, inputs, time_limit_s=None, deadline_s=None):
        if replica.identity in self.fail_for:
            return False
        self.sent.append((replica.identity, {"id": batch_id, "count": len(inputs)}, list(inputs)))
        return True


def replica(name: bytes) -> Replica:
    return Replica(name, MODEL, "doubles", None, name.decode(), 0.0, 0.0)


def make(batch=4, cache=None, delay=0.0, capacity=100, controller=None):
    """A dispatcher on fake timers (its clock starts at 100 s) and a fake transport."""
    timers = FakeTimers(100.0)
    config = ModelConfig(controller or FixedBatchSize(batch), delay, capacity)
    d = Dispatcher(configure=lambda _m: config, cache=cache, timers=timers)
    t = FakeTransport()
    d.set_transport(t)
    return d, t, timers


def answer(d, rep, header, outputs):
    d.batch_done(rep, header["id"], outputs)


def test_idle_replica_pulls_a_batch_of_queued_tasks():
    async def main():
        d, t, _ = make(batch=4)
        r = replica(b"r1")
        d.replica_joined(r)
        futures = [d.submit(MODEL, np.array([float(i)]), deadline=1e12) for i in range(6)]
        await asyncio.sleep(0)
        # One batch in flight per replica: 4 go out, 2 wait.
        assert len(t.sent) == 1 and t.sent[0][1]["count"] == 4
        answer(d, r, t.sent[0][1], ["a", "b", "c", "d"])
        assert len(t.sent) == 2 and t.sent[1][1]["count"] == 2
        answer(d, r, t.sent[1][1], ["e", "f"])
        outs = [(await f).output for f in futures]
        assert outs == ["a", "b", "c", "d", "e", "f"]
        stats = d.statistics()[0]
        assert stats.batches == 2 and stats.mean_batch_size == 3.0
        assert stats.model == MODEL and stats.predictions == 6
        rendered = stats.to_json()  # the JSON of /admin/status: the model as "name:version"
        assert rendered["model"] == "m:1" and "predictions" not in rendered
        assert rendered["queue"]["enqueued"] == 6 and rendered["by_replica"][0]["replica"] == "r1"

    asyncio.run(main())


def test_batch_of_a_lost_replica_is_retried_once_on_another():
    async def main():
        d, t, _ = make()
        r1, r2 = replica(b"r1"), replica(b"r2")
        d.replica_joined(r1)
        fut = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        assert t.sent[-1][0] == b"r1"
        d.replica_joined(r2)
        d.replica_left(r1, "killed")
        assert t.sent[-1][0] == b"r2"
        d.replica_left(r2, "killed too")
        outcome = await fut
        assert not outcome.ok and "replica" in outcome.error and "killed too" in outcome.error
        assert reason_of(outcome) is DefaultReason.MODEL_ERROR

    asyncio.run(main())


def test_model_errors_and_bad_results_become_error_outcomes():
    async def main():
        d, t, _ = make()
        r = replica(b"r1")
        d.replica_joined(r)
        f1 = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        d.batch_done(r, t.sent[-1][1]["id"], p.ModelRaised("ValueError", "boom"))
        assert (await f1).error == "model m:1 raised ValueError: boom"
        assert reason_of(f1.result()) is DefaultReason.MODEL_ERROR
        f2 = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        answer(d, r, t.sent[-1][1], ["x", "y"])  # two outputs for one input
        assert "2 outputs for 1 inputs" in (await f2).error
        assert reason_of(f2.result()) is DefaultReason.MODEL_ERROR
        f3 = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        d.batch_done(r, t.sent[-1][1]["id"], p.BadResult("outputs frame is not a list"))
        assert (await f3).error == "m:1 returned a bad result: outputs frame is not a list"
        assert reason_of(f3.result()) is DefaultReason.MODEL_ERROR
        assert d.statistics()[0].errors == 3

    asyncio.run(main())


def test_a_batch_that_cannot_be_encoded_fails_its_queries_and_the_replica_goes_on():
    class Refusing(FakeTransport):
        def send_batch(self, replica, batch_id, inputs, time_limit_s=None, deadline_s=None):
            if any(isinstance(x, str) for x in inputs):
                raise TypeError("not a number")
            return super().send_batch(replica, batch_id, inputs, time_limit_s)

    async def main():
        d, _, _ = make()
        t = Refusing()
        d.set_transport(t)
        r = replica(b"r1")
        d.replica_joined(r)
        bad = d.submit(MODEL, "x", deadline=1e12)
        await asyncio.sleep(0)
        assert (await bad).error == "could not encode the batch: not a number"
        assert reason_of(bad.result()) is DefaultReason.OTHER
        good = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        answer(d, r, t.sent[-1][1], [1])
        assert (await good).output == 1 and not d.busy()

    asyncio.run(main())


def test_a_frame_sending_replica_and_raw_results_go_through_the_rpc_encoding():
    """A replica scripted without sockets (``FrameSender`` over a function that
    gets the frames): the RPC layer encodes the batch and decodes the result."""
    sent = []

    async def main():
        config = ModelConfig(FixedBatchSize(4), batch_time_limit_s=7.0)
        d = Dispatcher(configure=lambda _m: config, timers=FakeTimers())
        d.set_transport(
            FrameSender(lambda identity, frames: sent.append((identity, frames)) or True)
        )
        r = replica(b"r1")
        d.replica_joined(r)
        futures = [d.submit(MODEL, np.array([1.0, float(i)]), deadline=1e12) for i in range(2)]
        await asyncio.sleep(0)
        ((identity, frames),) = sent
        header = p.parse_header(frames[0])
        assert identity == b"r1" and header["type"] == p.BATCH and header["time_limit_s"] == 7.0
        inputs = p.decode_inputs(header, [bytes(f) for f in frames[1:]])
        assert inputs.shape == (2, 2) and inputs[1, 1] == 1.0  # one stacked array frame
        result = p.encode_result_ok(header["id"], ["a", "b"])
        d.batch_done(r, header["id"], p.decode_result(p.parse_header(result[0]), result[1:]))
        assert [(await f).output for f in futures] == ["a", "b"]

    asyncio.run(main())


def test_results_for_unknown_batches_are_ignored():
    async def main():
        d, _, _ = make()
        r = replica(b"r1")
        d.replica_joined(r)
        d.batch_done(r, 999, [1])
        assert d.statistics()[0].batches == 0

    asyncio.run(main())


def test_expired_tasks_answer_by_their_deadline_without_a_replica():
    async def main():
        d, t, timers = make()
        fut = d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.05)
        timers.advance(0.049)
        await asyncio.sleep(0)
        assert not fut.done()
        timers.advance(0.001)  # the deadline: the sweep answers it
        assert fut.done()
        outcome = fut.result()
        assert not outcome.ok and EXPIRED in outcome.error
        assert reason_of(outcome) is DefaultReason.SLO
        r = replica(b"r1")
        d.replica_joined(r)
        assert t.sent == []  # an expired task is never computed
        assert d.statistics()[0].queue.expired == 1

    asyncio.run(main())


def test_a_query_the_model_is_too_slow_for_says_so_and_a_later_one_is_computed():
    # One slow batch (a replica's first, loading its model) sets the latency
    # estimate: a query with less time left is answered at once, not computed,
    # and told why (not that it waited in the queue); the estimate halves each
    # time it alone holds a query back, so the model is soon tried again.
    async def main():
        d, t, timers = make()
        r = replica(b"r1")
        d.replica_joined(r)
        d._models[MODEL].members[b"r1"].estimate.latency = 0.4
        first = d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.1)
        await asyncio.sleep(0)
        assert first.done()  # at once, not at its deadline
        outcome = first.result()
        assert not outcome.ok and TOO_SLOW in outcome.error and EXPIRED not in outcome.error
        assert "about 400 ms" in outcome.error and "not computed" in outcome.error
        assert reason_of(outcome) is DefaultReason.SLO
        assert t.sent == []
        second = d.submit(MODEL, np.array([2.0]), deadline=timers.now() + 0.1)  # 0.2 s estimate
        await asyncio.sleep(0)
        assert second.done() and second.result().error.count(TOO_SLOW) == 1
        third = d.submit(MODEL, np.array([3.0]), deadline=timers.now() + 0.2)  # 0.1 s: it fits
        await asyncio.sleep(0)
        assert len(t.sent) == 1
        answer(d, r, t.sent[0][1], [3])
        assert (await third).output == 3

    asyncio.run(main())


def test_a_replicas_first_batch_does_not_set_the_latency_estimate():
    # The first batch of a replica loads the model (0.4 s here, four times the
    # SLO): counted, it would have the next queries refused uncomputed.
    async def main():
        d, t, timers = make(batch=1)
        r1 = replica(b"r1")
        d.replica_joined(r1)
        first = d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.1)
        await asyncio.sleep(0)
        timers.advance(0.4)
        answer(d, r1, t.sent[-1][1], [1])
        assert (await first).output == 1
        second = d.submit(MODEL, np.array([2.0]), deadline=timers.now() + 0.1)
        await asyncio.sleep(0)
        assert len(t.sent) == 2  # computed, not refused
        timers.advance(0.01)
        answer(d, r1, t.sent[-1][1], [2])
        assert (await second).output == 2
        members = d._models[MODEL].members
        assert members[b"r1"].estimate.latency == pytest.approx(0.01)
        # A replica added later (scaled up, restarted) loads too: same rule.
        r2 = replica(b"r2")
        d.replica_joined(r2)
        a = d.submit(MODEL, np.array([3.0]), deadline=timers.now() + 0.1)
        b = d.submit(MODEL, np.array([4.0]), deadline=timers.now() + 0.1)
        await asyncio.sleep(0)
        by_replica = {ident: header for ident, header, _ in t.sent[-2:]}
        timers.advance(0.01)
        answer(d, r1, by_replica[b"r1"], [0])
        timers.advance(0.49)
        answer(d, r2, by_replica[b"r2"], [0])  # 0.5 s, its first
        await asyncio.gather(a, b)
        assert members[b"r1"].estimate.latency == pytest.approx(0.01)
        assert members[b"r2"].estimate.latency == 0.0

    asyncio.run(main())


def test_a_full_queue_refuses_at_once():
    async def main():
        d, _, _ = make(capacity=2)
        futures = [d.submit(MODEL, np.array([float(i)]), deadline=1e12) for i in range(3)]
        refused = futures[2].result()
        assert refused.overloaded and refused.error == QUEUE_FULL
        assert reason_of(refused) is DefaultReason.OVERLOADED
        assert not futures[0].done()
        assert d.statistics()[0].queue.rejected == 1

    asyncio.run(main())


def test_identical_concurrent_queries_share_one_computation_and_fill_the_cache():
    async def main():
        cache = PredictionCache(1 << 20)
        d, t, _ = make(cache=cache)
        r = replica(b"r1")
        d.replica_joined(r)
        a = d.submit(MODEL, np.array([7.0]), deadline=1e12)
        b = d.submit(MODEL, np.array([7.0]), deadline=1e12)
        assert a is b and d.statistics()[0].coalesced == 1
        await asyncio.sleep(0)
        assert len(t.sent) == 1 and t.sent[0][1]["count"] == 1
        answer(d, r, t.sent[0][1], ["seven"])
        assert (await a).output == "seven"
        await asyncio.sleep(0)  # let the done-callbacks run
        hit = d.submit(MODEL, np.array([7.0]), deadline=1e12)
        assert hit.done() and hit.result().output == "seven"
        assert len(t.sent) == 1
        assert cache.statistics().hits == 1 and d.pending_entries() == 0
        # Another input, and the same input for another version, are misses.
        d.submit(MODEL, np.array([8.0]), deadline=1e12)
        d.submit(ModelId("m", "2"), np.array([7.0]), deadline=1e12)
        assert cache.statistics().hits == 1
        # Without the cache (an app that turned it off), nothing is shared.
        c = d.submit(MODEL, np.array([8.0]), deadline=1e12, use_cache=False)
        assert c is not d.submit(MODEL, np.array([8.0]), deadline=1e12, use_cache=False)

    asyncio.run(main())


def test_a_pending_entry_is_released_when_its_task_fails_or_expires():
    async def main():
        cache = PredictionCache(1 << 20)
        d, t, timers = make(cache=cache)
        # Expired without a replica: the next identical query starts afresh.
        first = d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.05)
        timers.advance(0.05)
        assert not first.result().ok
        await asyncio.sleep(0)
        assert d.pending_entries() == 0
        r = replica(b"r1")
        d.replica_joined(r)
        second = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        assert second is not first
        await asyncio.sleep(0)
        d.batch_done(r, t.sent[-1][1]["id"], p.ModelRaised("RuntimeError", "flaky"))
        assert not (await second).ok
        await asyncio.sleep(0)
        assert d.pending_entries() == 0
        assert len(cache) == 0  # errors are not cached
        third = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        answer(d, r, t.sent[-1][1], [1.0])
        assert (await third).output == 1.0

    asyncio.run(main())


def test_a_computation_past_its_deadline_does_not_capture_later_queries():
    async def main():
        d, _, timers = make(cache=PredictionCache(1 << 20))
        r = replica(b"r1")
        d.replica_joined(r)
        stuck = d.submit(MODEL, np.array([5.0]), deadline=timers.now() + 0.05)
        await asyncio.sleep(0)
        timers.advance(0.05)  # on the replica, past its deadline
        later = d.submit(MODEL, np.array([5.0]), deadline=timers.now() + 0.05)
        assert later is not stuck and d.statistics()[0].coalesced == 0

    asyncio.run(main())


def test_a_late_result_still_fills_the_cache():
    async def main():
        cache = PredictionCache(1 << 20)
        d, t, timers = make(cache=cache)
        r = replica(b"r1")
        d.replica_joined(r)
        fut = d.submit(MODEL, np.array([3.0]), deadline=timers.now() + 0.02)
        await asyncio.sleep(0)
        timers.advance(0.05)  # the caller gave up at its deadline
        assert not fut.done()  # on a replica: the caller applies the deadline
        answer(d, r, t.sent[-1][1], ["late"])
        assert fut.result().output == "late"
        await asyncio.sleep(0)
        assert d.submit(MODEL, np.array([3.0]), deadline=1e12).result().output == "late"

    asyncio.run(main())


def test_delayed_batching_waits_for_a_fuller_batch_up_to_the_bound():
    async def main():
        d, t, timers = make(batch=4, delay=0.2)
        r = replica(b"r1")
        d.replica_joined(r)
        d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        timers.advance(0.01)
        assert t.sent == []  # waiting for more
        for i in range(3):
            d.submit(MODEL, np.array([float(i)]), deadline=1e12)
        await asyncio.sleep(0)
        assert len(t.sent) == 1 and t.sent[0][1]["count"] == 4  # full: go at once
        answer(d, r, t.sent[0][1], [0, 1, 2, 3])
        lone = d.submit(MODEL, np.array([9.0]), deadline=1e12)
        await asyncio.sleep(0)
        timers.advance(0.15)
        assert len(t.sent) == 1  # within the bound: still waiting
        # The bound, timed from this query (the first wait's timer ended with
        # the full batch), then what there is.
        timers.advance(0.04)
        assert len(t.sent) == 1
        timers.advance(0.02)
        assert len(t.sent) == 2
        assert t.sent[1][1]["count"] == 1
        answer(d, r, t.sent[1][1], ["x"])
        assert (await lone).output == "x"

    asyncio.run(main())


def test_one_slow_batch_does_not_starve_the_model():
    """A batch slower than the SLO inflates the latency estimate; the tasks it
    holds back must not stop the model for good (the estimate decays)."""

    async def main():
        d, t, timers = make(batch=4)
        r = replica(b"r1")
        d.replica_joined(r)
        d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.1)
        await asyncio.sleep(0)
        timers.advance(5.0)  # that batch took 5 s: the estimate is now 5 s
        answer(d, r, t.sent[-1][1], [1])
        served = 0
        for i in range(20):  # fresh queries with 100 ms each: dropped at first...
            fut = d.submit(MODEL, np.array([float(i)]), deadline=timers.now() + 0.1)
            await asyncio.sleep(0)
            if len(t.sent) > 1 + served:
                answer(d, r, t.sent[-1][1], [i])
                served += 1
                assert (await fut).ok
            timers.advance(0.01)
        assert served > 0  # ...until the estimate decays and the model serves again

    asyncio.run(main())


def test_an_adaptive_controller_sends_singles_when_pairs_cost_more_per_query():
    """The dispatcher learns the batch cost curve from real results: a model
    whose pairs take 4x a single call gets singles when two tasks wait."""

    async def main():
        d, t, timers = make(controller=AIMDController(1.0, initial=8))
        r = replica(b"r1")
        d.replica_joined(r)
        cost = {1: 0.001, 2: 0.004}

        async def serve_round():
            deadline = timers.now() + 10
            futures = [d.submit(MODEL, np.array([1.0]), deadline=deadline) for _ in range(2)]
            await asyncio.sleep(0)
            while not all(f.done() for f in futures):
                header = t.sent[-1][1]
                timers.advance(cost[header["count"]])
                answer(d, r, header, [0] * header["count"])
                await asyncio.sleep(0)
            return [s[1]["count"] for s in t.sent]

        for _ in range(8):  # learn: pairs first, then singles (both explored)
            await serve_round()
        t.sent.clear()
        sizes = await serve_round()
        assert sizes == [1, 1]
        curve = d.statistics()[0].cost_per_query_ms
        assert curve["1"] < curve["2"]

    asyncio.run(main())


def test_a_fixed_batch_size_is_taken_as_given():
    async def main():
        d, t, _ = make(batch=2)
        r = replica(b"r1")
        d.replica_joined(r)
        for size in (1, 2, 1, 2, 1, 2, 1, 2):  # pairs look expensive...
            d._models[MODEL].members[b"r1"].curve.observe(size, 0.001 * size * size)
        futures = [d.submit(MODEL, np.array([1.0]), deadline=1e12) for _ in range(2)]
        await asyncio.sleep(0)
        assert t.sent[-1][1]["count"] == 2  # ...but a fixed size means what it says
        answer(d, r, t.sent[-1][1], [0, 0])
        outcomes = [await f for f in futures]
        assert all(o.ok for o in outcomes)

    asyncio.run(main())


def test_the_controller_hears_each_batch_with_the_tasks_left_waiting():
    class Recording(FixedBatchSize):
        def __init__(self, size):
            super().__init__(size)
            self.seen = []

        def observe(self, batch_size, latency_s, waiting=0):
            self.seen.append((batch_size, waiting))

    async def main():
        d, t, _ = make(controller=Recording(4))
        r = replica(b"r1")
        d.replica_joined(r)
        futures = [d.submit(MODEL, np.array([float(i)]), deadline=1e12) for i in range(7)]
        await asyncio.sleep(0)
        answer(d, r, t.sent[0][1], list("abcd"))  # 3 left waiting
        answer(d, r, t.sent[1][1], list("efg"))  # none
        await asyncio.gather(*futures)
        # Each replica has its own copy of the configured controller.
        assert d._models[MODEL].members[b"r1"].controller.seen == [(4, 3), (3, 0)]

    asyncio.run(main())


def two_replicas(controller=None):
    """A dispatcher on fake timers with a fast replica r1 and a slow one r2
    (batch latency estimates 5 ms and 50 ms)."""
    d, t, timers = make(controller=controller or FixedBatchSize(8))
    fast, slow = replica(b"r1"), replica(b"r2")
    d.replica_joined(fast)
    d.replica_joined(slow)
    members = d._models[MODEL].members
    for member, latency in ((members[b"r1"], 0.005), (members[b"r2"], 0.05)):
        member.estimate.answered, member.estimate.latency = True, latency
    return d, t, timers, fast, slow


async def keep_fast_busy(d, t, timers, seconds=10.0):
    """Send one task, which the fast replica (first in line) takes and keeps."""
    busy = d.submit(MODEL, np.array([0.0]), deadline=timers.now() + seconds)
    await asyncio.sleep(0)
    assert [ident for ident, _, _ in t.sent] == [b"r1"]
    return busy


def test_a_slow_replica_leaves_to_a_fast_one_what_it_cannot_finish_in_time():
    async def main():
        d, t, timers, fast, slow = two_replicas()
        busy = await keep_fast_busy(d, t, timers)
        # The fast replica is busy. 30 ms left: too little for the slow one
        # (50 ms), enough for the fast (5 ms): kept for it, neither sent nor
        # refused.
        urgent = d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.03)
        await asyncio.sleep(0)
        assert len(t.sent) == 1 and not urgent.done()
        # 200 ms left: the slow replica takes it (and only it).
        relaxed = d.submit(MODEL, np.array([2.0]), deadline=timers.now() + 0.2)
        await asyncio.sleep(0)
        assert len(t.sent) == 2 and t.sent[1][0] == b"r2" and t.sent[1][1]["count"] == 1
        # The fast one answers and takes the urgent task.
        timers.advance(0.005)
        answer(d, fast, t.sent[0][1], ["busy"])
        assert len(t.sent) == 3 and t.sent[2][0] == b"r1"
        timers.advance(0.005)
        answer(d, fast, t.sent[2][1], ["urgent"])
        timers.advance(0.04)  # 50 ms after it was sent
        answer(d, slow, t.sent[1][1], ["relaxed"])
        assert [(await f).output for f in (busy, urgent, relaxed)] == ["busy", "urgent", "relaxed"]
        # Each replica's estimate follows its own batches.
        members = d._models[MODEL].members
        assert members[b"r1"].estimate.latency == pytest.approx(0.005)
        assert members[b"r2"].estimate.latency == pytest.approx(0.05)

    asyncio.run(main())


def test_a_task_even_the_fastest_replica_cannot_finish_is_refused_not_kept():
    async def main():
        d, t, timers, _fast, _slow = two_replicas()
        await keep_fast_busy(d, t, timers)
        hopeless = d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.002)
        await asyncio.sleep(0)
        assert hopeless.done()  # at once, not at its deadline
        outcome = hopeless.result()
        assert not outcome.ok and TOO_SLOW in outcome.error
        assert "its fastest replica's recent batches took about 5 ms" in outcome.error
        assert len(t.sent) == 1
        # The fast replica is computing: its estimate is left as it is.
        assert d._models[MODEL].members[b"r1"].estimate.latency == pytest.approx(0.005)

    asyncio.run(main())


def test_a_slow_replica_idle_a_while_tries_one_task_and_its_estimate_starts_afresh():
    async def main():
        d, t, timers, _fast, slow = two_replicas()
        await keep_fast_busy(d, t, timers)
        first = d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.03)
        await asyncio.sleep(0)
        assert len(t.sent) == 1  # kept for the fast replica, which is busy
        timers.advance(PROBE_AFTER_S)
        urgent = [
            d.submit(MODEL, np.array([2.0 + i]), deadline=timers.now() + 0.03 + 0.001 * i)
            for i in (0, 2, 1)
        ]
        await asyncio.sleep(0)
        # Idle for PROBE_AFTER_S: it tries one task, the one with the most time
        # to spare (the urgent ones stay for the fast replica; the first task
        # expired meanwhile).
        assert EXPIRED in (await first).error
        assert len(t.sent) == 2 and t.sent[1][0] == b"r2" and t.sent[1][1]["count"] == 1
        timers.advance(0.004)  # it has become fast
        answer(d, slow, t.sent[1][1], ["probe"])
        assert (await urgent[1]).output == "probe"
        assert d._models[MODEL].members[b"r2"].estimate.latency == pytest.approx(0.004)
        # Now it takes the rest as a batch, earliest due first.
        assert len(t.sent) == 3 and t.sent[2][0] == b"r2" and t.sent[2][1]["count"] == 2
        answer(d, slow, t.sent[2][1], ["b", "c"])
        assert [(await urgent[i]).output for i in (0, 2)] == ["b", "c"]

    asyncio.run(main())


def test_a_replica_still_slow_after_a_try_waits_twice_as_long_for_the_next():
    async def main():
        d, t, timers, _fast, slow = two_replicas()
        await keep_fast_busy(d, t, timers, seconds=100)
        waits = []
        for _ in range(3):
            idle_from = timers.now()
            sent = len(t.sent)
            while len(t.sent) == sent:  # a task the slow replica should leave, every 0.25 s
                timers.advance(0.25)
                d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 0.03)
                await asyncio.sleep(0)
            waits.append(timers.now() - idle_from)
            assert t.sent[-1][0] == b"r2" and t.sent[-1][1]["count"] == 1
            timers.advance(0.05)  # still slow
            answer(d, slow, t.sent[-1][1], ["late"])
        assert waits == [
            pytest.approx(w) for w in (PROBE_AFTER_S, 2 * PROBE_AFTER_S, 4 * PROBE_AFTER_S)
        ]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_each_replica_has_its_own_batch_size_controller():
    async def main():
        d, t, timers, fast, slow = two_replicas(AIMDController(0.02, initial=4))
        members = d._models[MODEL].members
        answered: set[int] = set()

        def drain(rep, latency):
            """Answer every batch in flight on ``rep``, each ``latency`` after the last."""
            for ident, header, _ in list(t.sent):
                if ident == rep.identity and header["id"] not in answered:
                    answered.add(header["id"])
                    timers.advance(latency)
                    answer(d, rep, header, [0] * header["count"])

        first = [d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 10) for _ in range(8)]
        await asyncio.sleep(0)
        assert {ident for ident, _, _ in t.sent} == {b"r1", b"r2"}
        # While the slow replica computes its batch, the fast one serves rounds
        # of 8 queries, each batch within the 20 ms target: its size grows.
        for _ in range(6):
            deadline = timers.now() + 10
            futures = [d.submit(MODEL, np.array([1.0]), deadline=deadline) for _ in range(8)]
            await asyncio.sleep(0)
            while not all(f.done() for f in futures):
                drain(fast, 0.005)
                await asyncio.sleep(0)
        timers.advance(0.5)
        drain(slow, 0.0)  # half a second: a miss, for the slow replica only
        while not all(f.done() for f in first):
            drain(fast, 0.005)
            drain(slow, 0.05)
            await asyncio.sleep(0)
        assert members[b"r1"].controller.max_batch_size() > 4
        assert members[b"r2"].controller.max_batch_size() < 4
        stats = d.statistics()[0]
        by_replica = {r.replica: r for r in stats.by_replica}
        assert by_replica["r1"].max_batch_size == stats.max_batch_size
        assert by_replica["r2"].max_batch_size < stats.max_batch_size
        assert by_replica["r1"].batches > by_replica["r2"].batches >= 1
        assert stats.controller.observed_batches == stats.batches

    asyncio.run(asyncio.wait_for(main(), 30))


def test_reconfigure_keeps_what_each_replica_learned_or_replaces_its_controller():
    async def main():
        configs = {"now": ModelConfig(AIMDController(0.02, initial=4))}
        d = Dispatcher(configure=lambda _m: configs["now"], timers=FakeTimers())
        d.set_transport(FakeTransport())
        d.replica_joined(replica(b"r1"))
        d.replica_joined(replica(b"r2"))
        members = d._models[MODEL].members
        members[b"r1"].controller.observe(4, 0.001)  # a full, fast batch: grows
        grown = members[b"r1"].controller.max_batch_size()
        assert grown > 4 == members[b"r2"].controller.max_batch_size()
        # The same kind with a new target: each keeps its size, takes the target.
        configs["now"] = ModelConfig(AIMDController(0.05, initial=1))
        d.reconfigure()
        assert members[b"r1"].controller.max_batch_size() == grown
        assert members[b"r2"].controller.max_batch_size() == 4
        assert {m.controller.target_s for m in members.values()} == {0.05}
        # Another kind: each replica gets its own copy of the new controller.
        configs["now"] = ModelConfig(FixedBatchSize(16))
        d.reconfigure()
        controllers = [m.controller for m in members.values()]
        assert all(isinstance(c, FixedBatchSize) for c in controllers)
        assert controllers[0] is not controllers[1]
        assert d.statistics()[0].max_batch_size == 16

    asyncio.run(main())


def test_timers_are_cancelled_on_close():
    async def main():
        d, _, timers = make(delay=0.2)
        d.replica_joined(replica(b"r1"))
        d.submit(MODEL, np.array([1.0]), deadline=timers.now() + 1.0)
        await asyncio.sleep(0)
        assert len(timers.pending()) == 2  # the queue's sweep and the batching delay
        d.close()
        assert timers.pending() == []

    asyncio.run(main())
