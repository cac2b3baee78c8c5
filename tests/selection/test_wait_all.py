"""``when_all`` and ``wait_all``: the wait for a query's futures, bounded by its deadline."""

import asyncio
import time

from clipper.selection.processor import wait_all, when_all
from clipper.timers import FakeTimers


def test_returns_as_soon_as_every_future_is_done_even_when_one_is_listed_twice():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = loop.create_future(), loop.create_future()
        loop.call_later(0.01, a.set_result, 1)
        loop.call_later(0.02, b.set_result, 2)
        started = time.monotonic()
        await wait_all([a, b, a], 30.0)
        return time.monotonic() - started, a.done() and b.done()

    took, done = asyncio.run(main())
    assert done and took < 10.0


def test_returns_at_the_timeout_and_leaves_the_laggards_alone():
    async def main():
        loop = asyncio.get_running_loop()
        late = loop.create_future()
        started = time.monotonic()
        await wait_all([late], 0.05)
        took = time.monotonic() - started
        # Not cancelled: another query may share it; it can still complete.
        assert not late.cancelled()
        late.set_result(3)
        return took

    assert asyncio.run(main()) >= 0.04


def test_cancelling_the_waiter_does_not_cancel_the_futures():
    async def main():
        loop = asyncio.get_running_loop()
        shared = loop.create_future()
        waiting = asyncio.ensure_future(wait_all([shared], 30.0))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        return shared.cancelled(), waiting.cancelled()

    assert asyncio.run(main()) == (False, True)


def test_when_all_calls_back_once_when_the_last_future_is_done():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = loop.create_future(), loop.create_future()
        calls = []
        when_all([a, b, a], 30.0, lambda: calls.append(loop.time()))
        a.set_result(1)
        await asyncio.sleep(0.01)
        before = list(calls)
        b.set_result(2)
        await asyncio.sleep(0.01)
        return before, calls

    before, calls = asyncio.run(main())
    assert before == [] and len(calls) == 1


def test_when_all_calls_back_once_at_the_timeout_and_not_again_when_the_laggard_lands():
    async def main():
        loop = asyncio.get_running_loop()
        late = loop.create_future()
        calls = []
        started = loop.time()
        when_all([late], 0.05, lambda: calls.append(loop.time() - started))
        while not calls:
            await asyncio.sleep(0.01)
        late.set_result(3)  # not cancelled: it may be shared
        await asyncio.sleep(0.05)
        return calls

    calls = asyncio.run(main())
    assert len(calls) == 1 and calls[0] >= 0.04


def test_when_all_on_fake_timers_fires_at_the_timeout_and_cancels_its_timer_when_done():
    async def main():
        loop = asyncio.get_running_loop()
        timers = FakeTimers()
        late, early = loop.create_future(), loop.create_future()
        calls = []
        when_all([late], 0.05, lambda: calls.append(timers.now()), timers)
        timers.advance(0.049)
        assert calls == []
        timers.advance(0.001)
        assert calls == [0.05]
        late.set_result(3)  # not cancelled: it may be shared
        await asyncio.sleep(0)
        assert calls == [0.05]  # once
        when_all([early], 30.0, lambda: calls.append("done"), timers)
        early.set_result(1)
        await asyncio.sleep(0)
        assert calls[-1] == "done" and timers.pending() == []  # its timer is gone
        waiting = asyncio.ensure_future(wait_all([loop.create_future()], 1.0, timers))
        await asyncio.sleep(0)
        timers.advance(1.0)
        await asyncio.wait_for(waiting, 10)

    asyncio.run(main())
