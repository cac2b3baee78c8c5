"""Timer sources: the clock the serving layers read and the timers they set.

The dispatcher (queue sweeps, delayed batching), the query processor (each
query's deadline) and the RPC server (liveness checks) read the time and set
their timers through one small interface, so a test can run them on a clock
it moves by hand, as trio's ``MockClock`` allows, instead of sleeping:

- ``LoopTimers``: the real source. ``now`` is its clock (``time.monotonic``
  unless given another); timers run on the running asyncio loop.
- ``FakeTimers``: a clock that stands still until ``advance`` moves it,
  firing on the way every timer that falls due, in order, each at its time.

Only timers go through it: ``loop.call_soon`` (work for the next loop turn)
stays as it is, so a test still yields to the loop with ``asyncio.sleep(0)``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class TimerHandle(Protocol):
    """A timer that has been set: ``cancel`` stops it (no effect once it fired)."""

    def cancel(self) -> None: ...


class Timers(Protocol):
    """Where a component reads the time and sets timers (its clock's times)."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` once ``now()`` reaches ``when`` (soon, if it has)."""
        ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` ``delay`` seconds from now."""
        ...


class LoopTimers:
    """Timers on the running asyncio loop, measured on ``clock``.

    ``now`` is the clock itself (no wrapper on the hot path); a timer is the
    loop's ``call_later`` for the time left, so the clock need not be the
    loop's own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.now = clock

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        delay = max(0.0, when - self.now())
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


def timers_for(clock: Callable[[], float] | None, timers: Timers | None) -> Timers:
    """A component's timer source from its ``clock=`` or ``timers=`` argument
    (real timers on ``time.monotonic`` when neither is given)."""
    if timers is None:
        return LoopTimers(clock or time.monotonic)
    if clock is not None:
        raise ValueError("give a clock or timers, not both (the timers' now() is the clock)")
    return timers


class FakeTimer:
    """A timer of ``FakeTimers``."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """A clock for tests that moves only when told to, with its timers.

    ``advance(seconds)`` moves the clock forward and, on the way, calls each
    timer that falls due, in the order of their times (timers set for the
    same time in the order they were set), with ``now()`` at that timer's
    time; a timer set by a callback fires in the same call if it falls due
    by the end. A timer set for a time already passed waits for the next
    ``advance`` (``advance(0)`` fires it). Calls happen inside ``advance``,
    not on the event loop, so a test sees their effects when it returns.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    __call__ = now  # usable wherever a clock function is expected

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        return self.call_at(self._now + delay, callback, *args)

    def advance(self, seconds: float = 0.0) -> int:
        """Move the clock ``seconds`` forward, firing the timers due by then;
        returns how many fired."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        end = self._now + seconds
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= end:
            when, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            fired += 1
            timer.callback(*timer.args)
        self._now = end
        return fired

    def pending(self) -> list[float]:
        """The times of the timers still set, earliest first."""
        return sorted(when for when, _, timer in self._heap if not timer.cancelled)
