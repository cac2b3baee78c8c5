"""Brownout: shed predict requests before their body is read while the frontend runs late.

Shedding at arrival (the dispatcher's ``capacity_within``) keeps a *model's*
queue to what it can compute in time; it cannot help when the *frontend* is
what is saturated: past what one event loop can parse and answer, requests
wait in the kernel's socket buffers, unseen, and every answer (defaults
included) leaves late. The light MLP on a core shared with its replica got
there at twice its goodput: p99 over half a second.

A probe timer measures how late the event loop runs (every ``interval_s``).
While it runs later than ``high_s`` for ``streak`` probes in a row, with at
least ``min_requests`` predict requests read per probe and ``min_inflight``
of them being answered at the probe, the share of predict requests answered
at once, without parsing their body, grows by ``up``; once the loop is back
under ``low_s`` (or the traffic is gone) it shrinks by ``down`` per probe.
Those conditions tell a saturated frontend from a stall: a deploy, a
collection, a busy machine with little traffic, or one client sending back
to back, however fast (it waits for each answer, so nothing of it queues
unread), sheds nothing. One late probe is enough to start, and the share
comes back slowly: three late probes to start and a fast way back made the
share swing, and the unread queue built up between swings.

Such an answer is the app's default output from bytes made once per app (or
a 503 for an app that asks for one): about 25 µs of the frontend's CPU
instead of 85 µs for a no-op model's whole query path (one core, closed
loop: 35,000-40,000 answers/s against 9,000/s), which frees the loop for
the rest. Every query read while
the loop runs late, shedding or not, gets its SLO less the lag as its budget
(:meth:`budget_s`): it waited about that long, unread, before the server saw
it, and its deadline timer will fire about that late too.

The settings were chosen on one core shared by the server and its replica
(docs/benchmarks.md, Overload). Light MLP at 7,500/s: 0.1 per probe with
the lag taken off only while shedding gave a p99 of 32-34 ms (4,830-6,620/s
computed); 0.2 per probe with the lag off every late query's budget, 26 ms
(5,370-5,450/s). Starting at 2 ms of lag instead of 3 gave 17-23 ms, but
shed half the heavy MLP's goodput at 2,400/s (840-1,090/s computed, against
2,030-2,130/s), where the replica, not the frontend, takes the core. Pure logic
except :meth:`Brownout.start`, which runs the probe on the event loop, and
:meth:`Brownout.answering`, which counts requests until their future is done.

The probe runs every ``interval_s`` only while the frontend could be near
saturation (predict requests at half the busy rate or more, a late loop, or
shedding); otherwise every ``idle_interval_s``. Two hundred wake-ups a second
kept an idle frontend at about 2 % of a core (0.04-0.07 s of CPU in 6.5 s
with the slow probe, 0.12-0.14 s with the fast one, on the benchmark
machine), time a core shared with a replica gives the model; a saturating
load is still seen within one idle interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

log = logging.getLogger("clipper.overload")
QUIET_S = 10.0  # no brownout this long ends an episode (one log line each way)

BROWNOUT = (
    "overloaded: the query frontend is saturated (its event loop runs late), "
    "so this request was answered before it was read"
)


class Brownout:
    """The share of predict requests answered unread, steered by event-loop lag."""

    def __init__(
        self,
        *,
        interval_s: float = 0.005,
        idle_interval_s: float = 0.05,
        high_s: float = 0.003,
        low_s: float = 0.001,
        up: float = 0.2,
        down: float = 0.01,
        streak: int = 1,
        min_requests: int = 8,
        min_inflight: int = 4,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.interval_s = interval_s
        self.idle_interval_s = max(interval_s, idle_interval_s)
        self._window = interval_s  # what the probe due next measures
        self._warm = True  # traffic near the busy rate at the last probe
        self.high_s = high_s
        self.low_s = low_s
        self.up = up
        self.down = down
        self.rng = rng
        self.streak = streak
        self.min_requests = min_requests
        self.requests = 0  # predict requests read since the last probe (``seen``)
        self.min_inflight = min_inflight
        self.inflight = 0  # predict requests read and not yet answered (``answering``)
        self._late = 0  # probes in a row late while busy
        self.share = 0.0
        # How late the loop runs now: a peak follower (up at once, down slowly).
        # A request read now has waited about this long in the socket already.
        self.lag_s = 0.0
        self.shed = 0  # requests answered unread, in all
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._episode: tuple[float, int] | None = None  # (last active at, shed at its start)

    def observe_lag(self, lag_s: float, now: float = 0.0, window_s: float | None = None) -> None:
        """One probe at ``now``: the loop ran its timer ``lag_s`` late, the
        requests counted over ``window_s`` (default ``interval_s``)."""
        self.lag_s = lag_s if lag_s > self.lag_s else 0.7 * self.lag_s + 0.3 * lag_s
        # Busy: min_requests per interval_s, whatever the window.
        needed = self.min_requests * (window_s or self.interval_s) / self.interval_s
        busy = self.requests >= needed and self.inflight >= self.min_inflight
        self._warm = self.requests >= needed / 2
        self.requests = 0
        self._late = self._late + 1 if lag_s > self.high_s and busy else 0
        if self._late >= self.streak:
            self.share = min(1.0, self.share + self.up)
        elif (lag_s < self.low_s or not busy) and self.share > 0.0:
            self.share = max(0.0, self.share - self.down)
        if self.share > 0.0:
            if self._episode is None:
                log.warning(
                    "overload: the query frontend is saturated (its event loop ran %.1f ms "
                    "late): answering a share of predict requests unread, with the default",
                    lag_s * 1000,
                )
                self._episode = (now, self.shed)
            else:
                self._episode = (now, self._episode[1])
        elif self._episode is not None and now - self._episode[0] >= QUIET_S:
            log.info(
                "overload: the query frontend caught up: %d requests answered unread",
                self.shed - self._episode[1],
            )
            self._episode = None

    def next_interval(self) -> float:
        """When to probe next: soon while the frontend could be saturating (busy
        traffic's half or more, a late loop, a streak under way, shedding),
        else after ``idle_interval_s``."""
        if self._warm or self.share > 0.0 or self._late or self.lag_s > self.low_s:
            return self.interval_s
        return self.idle_interval_s

    def budget_s(self, slo_s: float) -> float | None:
        """A query's time left while the loop runs late: its SLO less the lag
        (it waited about that long before it was read), or None while punctual."""
        if self.lag_s < self.low_s:
            return None
        return max(0.0, slo_s - self.lag_s)

    def sheds(self) -> bool:
        """Whether to answer this predict request unread (counted when True);
        called once per predict request."""
        self.requests += 1
        if self.share <= 0.0 or self.rng() >= self.share:
            return False
        self.shed += 1
        return True

    def answering(self, pending: asyncio.Future[Any]) -> None:
        """A predict request read and not shed is being answered until ``pending`` is done."""
        self.inflight += 1
        pending.add_done_callback(self._answered)

    def _answered(self, _: asyncio.Future[Any]) -> None:
        self.inflight -= 1

    # -- the probe ---------------------------------------------------------------------

    def start(self) -> None:
        """Probe the running loop every ``interval_s`` until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        self._window = self.interval_s
        self._due = loop.time() + self._window
        self._timer = loop.call_at(self._due, self._probe, loop)

    def _probe(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.observe_lag(now - self._due, now, self._window)
        self._window = self.next_interval()
        self._due = now + self._window
        self._timer = loop.call_at(self._due, self._probe, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
