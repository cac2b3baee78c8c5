"""The dispatcher against a fake transport (the real one is tested end to end)."""

import asyncio

import numpy as np

from clipper.batching.controllers import FixedBatchSize
from clipper.batching.dispatcher import Dispatcher
from clipper.rpc import protocol as p
from clipper.rpc.server import Replica
from clipper.types import ModelId

MODEL = ModelId("m", "1")


class FakeTransport:
    def __init__(self):
        self.sent: list[tuple[bytes, dict, list]] = []
        self.fail_for: set[bytes] = set()

    def __call__(self, identity, frames):
        if identity in self.fail_for:
            return False
        header = p.parse_header(frames[0])
        self.sent.append((identity, header, [bytes(f) for f in frames[1:]]))
        return True


def replica(name: bytes) -> Replica:
    return Replica(name, MODEL, "doubles", None, name.decode(), 0.0, 0.0)


def make(batch=4):
    d = Dispatcher(controller_factory=lambda _m: FixedBatchSize(batch))
    t = FakeTransport()
    d.set_transport(t)
    return d, t


def answer(d, rep, header, outputs):
    frames = p.encode_result_ok(header["id"], outputs)
    d.batch_result(rep, header["id"], p.parse_header(frames[0]), frames[1:])


def test_idle_replica_pulls_a_batch_of_queued_tasks():
    async def main():
        d, t = make(batch=4)
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

    asyncio.run(main())


def test_batch_of_a_lost_replica_is_retried_once_on_another():
    async def main():
        d, t = make()
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

    asyncio.run(main())


def test_model_errors_and_bad_results_become_error_outcomes():
    async def main():
        d, t = make()
        r = replica(b"r1")
        d.replica_joined(r)
        f1 = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        bid = t.sent[-1][1]["id"]
        frames = p.encode_result_error(bid, "ValueError", "boom")
        d.batch_result(r, bid, p.parse_header(frames[0]), [])
        assert (await f1).error == "model m:1 raised ValueError: boom"
        f2 = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        answer(d, r, t.sent[-1][1], ["x", "y"])  # two outputs for one input
        assert "2 outputs for 1 inputs" in (await f2).error

    asyncio.run(main())


def test_a_failed_send_drops_the_replica_and_requeues():
    async def main():
        d, t = make()
        r1 = replica(b"r1")
        t.fail_for.add(b"r1")
        d.replica_joined(r1)
        fut = d.submit(MODEL, np.array([1.0]), deadline=1e12)
        await asyncio.sleep(0)
        assert d.live_replicas(MODEL) == 0 and not fut.done()
        r2 = replica(b"r2")
        d.replica_joined(r2)
        answer(d, r2, t.sent[-1][1], [42])
        assert (await fut).output == 42

    asyncio.run(main())


def test_results_for_unknown_batches_are_ignored():
    async def main():
        d, _ = make()
        r = replica(b"r1")
        d.replica_joined(r)
        frames = p.encode_result_ok(999, [1])
        d.batch_result(r, 999, p.parse_header(frames[0]), frames[1:])
        assert d.statistics()[0].batches == 0

    asyncio.run(main())
