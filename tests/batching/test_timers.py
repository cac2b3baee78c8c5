"""The timer sources (clipper.timers): fake timers that tests move, real ones on the loop."""

import asyncio

import pytest

from clipper.timers import FakeTimers, LoopTimers, timers_for


def test_advance_fires_due_timers_in_order_each_at_its_time():
    timers = FakeTimers(10.0)
    seen = []
    timers.call_at(10.3, lambda: seen.append(("c", timers.now())))
    timers.call_later(0.1, lambda: seen.append(("a", timers.now())))
    timers.call_at(10.1, lambda: seen.append(("a2", timers.now())))  # same time: in order set
    cancelled = timers.call_at(10.2, lambda: seen.append(("x", timers.now())))
    cancelled.cancel()
    assert timers.advance(0.25) == 2
    assert seen == [("a", 10.1), ("a2", 10.1)] and timers.now() == 10.25
    assert timers.pending() == [10.3]
    assert timers.advance(1.0) == 1 and seen[-1] == ("c", 10.3) and timers.now() == 11.25


def test_a_timer_set_by_a_callback_fires_in_the_same_advance_if_due():
    timers = FakeTimers()
    ticks = []

    def tick():
        ticks.append(timers.now())
        timers.call_later(1.0, tick)

    timers.call_later(1.0, tick)
    timers.advance(3.5)
    assert ticks == [1.0, 2.0, 3.0] and timers.pending() == [4.0]


def test_a_timer_for_a_time_passed_waits_for_the_next_advance():
    timers = FakeTimers(5.0)
    fired = []
    timers.call_at(4.0, fired.append, "late")
    assert fired == []
    timers.advance(0)
    assert fired == ["late"] and timers.now() == 5.0
    with pytest.raises(ValueError):
        timers.advance(-1)


def test_fake_timers_are_a_clock_too():
    timers = FakeTimers(3.0)
    assert timers() == timers.now() == 3.0


def test_loop_timers_run_on_the_loop_measured_on_their_clock():
    now = [1000.0]
    timers = LoopTimers(lambda: now[0])
    assert timers.now() == 1000.0

    async def main():
        fired = asyncio.Event()
        timers.call_at(999.0, fired.set)  # already due on its clock: at once
        await asyncio.wait_for(fired.wait(), 10)
        handle = timers.call_later(3600, fired.clear)
        handle.cancel()

    asyncio.run(main())


def test_a_component_takes_a_clock_or_timers_not_both():
    fake = FakeTimers()
    assert timers_for(None, fake) is fake
    assert isinstance(timers_for(None, None), LoopTimers)
    assert timers_for(fake, None).now is fake
    with pytest.raises(ValueError, match="not both"):
        timers_for(fake, fake)
