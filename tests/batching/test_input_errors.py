"""The dispatcher settles a batch the model failed on in part: only the failed
inputs get a model error, each with its own explanation, counted apart from
SLO misses; each batch carries the time left until its last deadline."""

import asyncio

import numpy as np

from clipper.batching.controllers import FixedBatchSize
from clipper.batching.dispatcher import Dispatcher, ModelConfig
from clipper.rpc import protocol as p
from clipper.rpc.server import Replica
from clipper.timers import FakeTimers
from clipper.types import DefaultReason, ModelId, reason_of

MODEL = ModelId("m", "1")


class Transport:
    def __init__(self):
        self.sent = []

    def send_batch(self, replica, batch_id, inputs, time_limit_s=None, deadline_s=None):
        self.sent.append((batch_id, len(inputs), deadline_s))
        return True


def setup():
    timers = FakeTimers(100.0)
    config = ModelConfig(FixedBatchSize(8))
    d = Dispatcher(configure=lambda _m: config, timers=timers)
    t = Transport()
    d.set_transport(t)
    r = Replica(b"r1", MODEL, "doubles", None, "r1", 0.0, 0.0)
    d.replica_joined(r)
    return d, t, r


def test_only_the_inputs_the_model_failed_on_get_a_model_error():
    async def main():
        d, t, r = setup()
        futures = [d.submit(MODEL, np.array([float(i)]), deadline=100.5 + i) for i in range(4)]
        await asyncio.sleep(0)
        ((batch_id, size, deadline_s),) = t.sent
        assert size == 4 and deadline_s == 3.5  # until the last of the batch's deadlines
        result = p.PartialOutputs(
            [
                p.ModelRaised("ValueError", "negative first feature: -3.0"),
                "fine",
                p.BadResult("an output holding NaN, which JSON cannot carry"),
                "also fine",
            ]
        )
        result.failed = 2
        d.batch_done(r, batch_id, result)
        first, second, third, fourth = [await f for f in futures]
        assert first.error == "model m:1 raised ValueError: negative first feature: -3.0"
        assert reason_of(first) is DefaultReason.MODEL_ERROR
        assert second.ok and second.output == "fine" and fourth.output == "also fine"
        assert third.error == "model m:1 returned an output holding NaN, which JSON cannot carry"
        assert reason_of(third) is DefaultReason.MODEL_ERROR
        stats = d.statistics()[0]
        assert stats.errors == 1 and stats.model_errors == 2
        assert stats.last_model_error == third.error
        rendered = stats.to_json()
        assert rendered["model_errors"] == 2 and rendered["last_model_error"] == third.error

    asyncio.run(main())


def test_a_whole_batch_failure_counts_each_of_its_queries():
    async def main():
        d, t, r = setup()
        futures = [d.submit(MODEL, np.array([float(i)]), deadline=1e12) for i in range(3)]
        await asyncio.sleep(0)
        ((batch_id, _, deadline_s),) = t.sent
        assert deadline_s == 3600.0  # capped: a query without a real deadline
        d.batch_done(r, batch_id, p.ModelRaised("ValueError", "boom"))
        outcomes = [await f for f in futures]
        assert all(not o.ok for o in outcomes)
        stats = d.statistics()[0]
        assert stats.errors == 1 and stats.model_errors == 3
        assert stats.last_model_error == "model m:1 raised ValueError: boom"

    asyncio.run(main())
