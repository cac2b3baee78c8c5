"""Coalescing in front of the cache: identical concurrent queries share one computation."""

import asyncio

import numpy as np

from clipper.cache import Coalescer, PredictionCache
from clipper.types import DefaultReason, Failure, ModelId, Outcome

MODEL = ModelId("m", "1")


def test_a_pending_computation_is_shared_while_it_can_answer_in_time_then_cached():
    async def main():
        coalescer = Coalescer(PredictionCache(1 << 20))
        key, found = coalescer.find(MODEL, np.array([1.0]), now=0.0)
        assert found is None and len(coalescer) == 0
        future = asyncio.get_running_loop().create_future()
        coalescer.track(key, future, deadline=1.0)
        assert coalescer.find(MODEL, np.array([1.0]), now=0.5) == (key, future)
        assert coalescer.coalesced == {MODEL: 1}
        # Past its deadline (stuck on a replica), it captures no later query.
        assert coalescer.find(MODEL, np.array([1.0]), now=1.0)[1] is None
        # Another version or input is another key.
        assert coalescer.find(ModelId("m", "2"), np.array([1.0]), now=0.5)[1] is None
        assert coalescer.find(MODEL, np.array([2.0]), now=0.5)[1] is None
        future.set_result(Outcome(output="one"))
        await asyncio.sleep(0)  # its done-callback settles it
        assert len(coalescer) == 0
        _, hit = coalescer.find(MODEL, np.array([1.0]), now=5.0)
        assert hit is not None and hit.done() and hit.result().output == "one"
        assert coalescer.coalesced == {MODEL: 1}  # a hit is not a coalesced query

    asyncio.run(main())


def test_a_failure_is_not_cached_and_releases_the_entry():
    async def main():
        cache = PredictionCache(1 << 20)
        coalescer = Coalescer(cache)
        key, _ = coalescer.find(MODEL, "x", now=0.0)
        future = asyncio.get_running_loop().create_future()
        coalescer.track(key, future, deadline=1.0)
        future.set_result(Failure(DefaultReason.MODEL_ERROR, "boom"))
        await asyncio.sleep(0)
        assert len(coalescer) == 0 and len(cache) == 0
        assert coalescer.find(MODEL, "x", now=0.1)[1] is None

    asyncio.run(main())


def test_a_newer_computation_for_the_same_key_keeps_its_entry_when_an_older_one_ends():
    async def main():
        coalescer = Coalescer(PredictionCache(1 << 20))
        key, _ = coalescer.find(MODEL, "x", now=0.0)
        loop = asyncio.get_running_loop()
        old, new = loop.create_future(), loop.create_future()
        coalescer.track(key, old, deadline=1.0)
        coalescer.track(key, new, deadline=3.0)  # the old one was past its deadline
        old.set_result(Outcome(output="late"))
        await asyncio.sleep(0)
        assert coalescer.find(MODEL, "y", now=2.0)[1] is None
        assert len(coalescer) == 1  # the new one is still pending
        # (the old one's output was cached: a hit now)
        assert coalescer.find(MODEL, "x", now=2.0)[1].result().output == "late"

    asyncio.run(main())
