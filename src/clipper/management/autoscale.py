"""Autoscaling replicas with the traffic (pure policy, plus the loop that drives it).

For sporadic traffic (models busy a few hours a day), a model version may
carry ``min_replicas`` and ``max_replicas`` options. The policy reads the
abstraction layer's statistics and decides a replica count:

- up: from zero at once on the first query (a cold start; that query gets
  the default output if no replica is ready by its deadline, with an
  explanation saying the model was cold); otherwise one more replica when
  queries expire or are refused, or when more queries wait than there are
  replicas, at most once per ``up_cooldown_s``;
- down: one fewer after ``scale_down_after_s`` without any query, at most
  once per ``down_cooldown_s``, to the minimum (which may be 0).

The decision is pure, with an injected clock; ``Autoscaler`` applies it
every ``interval_s`` through the container manager (local or Ray), and logs
and counts every scale event. It reads the dispatcher's typed statistics
(anything shaped as :class:`ModelLoad`, one per model version, each naming
its ``ModelId``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..types import ModelId, ModelOptions

log = logging.getLogger("clipper.autoscale")


class QueueLoad(Protocol):
    """What the autoscaler reads of a model's queue statistics."""

    @property
    def depth(self) -> int: ...
    @property
    def enqueued(self) -> int: ...
    @property
    def expired(self) -> int: ...
    @property
    def rejected(self) -> int: ...


class ModelLoad(Protocol):
    """What the autoscaler reads of one model version's statistics (the
    dispatcher's ``ModelStatistics`` is one)."""

    @property
    def model(self) -> ModelId: ...
    @property
    def replicas(self) -> int: ...
    @property
    def in_flight_batches(self) -> int: ...
    @property
    def shed(self) -> int: ...
    @property
    def queue(self) -> QueueLoad: ...


@dataclass(frozen=True)
class Signals:
    """What the autoscaler sees of one model version at one moment."""

    live_replicas: int
    queue_depth: int
    in_flight_batches: int
    enqueued_total: int  # queries that arrived (queued, or shed at arrival), cumulative
    missed_total: int  # expired, rejected or shed at arrival, cumulative

    @classmethod
    def of(cls, load: ModelLoad) -> Signals:
        """The signals in a model version's statistics. A query shed at arrival
        (answered at once: the queue ahead of it was too long) is demand the
        replicas could not meet: it counts as arrived and as missed."""
        q = load.queue
        return cls(
            load.replicas,
            q.depth,
            load.in_flight_batches,
            q.enqueued + load.shed,
            q.expired + q.rejected + load.shed,
        )


@dataclass
class AutoscalePolicy:
    """Decides a replica count from successive ``Signals`` (no I/O)."""

    min_replicas: int
    max_replicas: int
    scale_down_after_s: float = 60.0
    up_cooldown_s: float = 2.0
    down_cooldown_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _last: Signals | None = field(default=None, repr=False)
    _last_busy: float = field(default=float("-inf"), repr=False)
    _last_up: float = field(default=float("-inf"), repr=False)
    _last_down: float = field(default=float("-inf"), repr=False)
    # Queries missed since the last step up while every replica was live: the
    # step up they call for waits out the cooldown, and is not forgotten in it.
    _missed_since_up: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("autoscaling needs 0 <= min_replicas <= max_replicas")
        self._last_busy = self.clock()

    def prime(self, s: Signals) -> None:
        """Take ``s`` as the baseline (for a policy created mid-run)."""
        self._last = s

    def decide(self, target: int, s: Signals) -> int:
        """The replica count to run now, given the current target and signals."""
        now = self.clock()
        # Counters are cumulative from zero; ``prime`` sets a later baseline.
        last = self._last or Signals(0, 0, 0, 0, 0)
        arrived = s.enqueued_total - last.enqueued_total
        missed = s.missed_total - last.missed_total
        self._last = s
        if arrived > 0 or s.queue_depth > 0 or s.in_flight_batches > 0:
            self._last_busy = now
        if s.live_replicas >= target:  # not a replica still starting: too few of them
            self._missed_since_up += missed
        new = target
        if target == 0 and (arrived > 0 or s.queue_depth > 0):
            new = 1  # a cold start: do not wait for a cooldown
        elif (
            self._missed_since_up > 0 or s.queue_depth > max(1, target)
        ) and now - self._last_up >= self.up_cooldown_s:
            new = target + 1
        elif (
            now - self._last_busy >= self.scale_down_after_s
            and now - self._last_down >= self.down_cooldown_s
        ):
            new = target - 1
        new = max(self.min_replicas, min(self.max_replicas, new))
        if new > target:
            self._last_up = now
            self._missed_since_up = 0
        elif new < target:
            self._last_down = now
        return new


def policy_from_options(
    options: ModelOptions, clock: Callable[[], float]
) -> AutoscalePolicy | None:
    """The policy a model's options ask for, or None when it is not autoscaled."""
    if options.max_replicas is None:
        return None
    return AutoscalePolicy(
        options.min_replicas,
        options.max_replicas,
        scale_down_after_s=float(options.scale_down_after_s),
        clock=clock,
    )


@dataclass
class ScaleEvent:
    at: float
    model: str
    old: int
    new: int


class Autoscaler:
    """Applies autoscaling policies to the models whose options ask for it."""

    def __init__(
        self,
        statistics: Callable[[], Iterable[ModelLoad]],
        options: Callable[[], Mapping[ModelId, ModelOptions]],
        apply: Callable[[], Awaitable[None]],
        *,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._statistics = statistics
        self._options = options
        self._apply = apply
        self.interval_s = interval_s
        self.clock = clock
        self._policies: dict[ModelId, tuple[ModelOptions, AutoscalePolicy]] = {}
        self.targets: dict[ModelId, int] = {}
        self.events: list[ScaleEvent] = []
        self._task: asyncio.Task[None] | None = None

    def _signals(self) -> dict[ModelId, Signals]:
        return {load.model: Signals.of(load) for load in self._statistics()}

    def target(self, model: ModelId, stored: int) -> int:
        """Replicas to run for a model: its autoscaled target, else the stored count."""
        if model in self._policies:
            return self.targets.get(model, self._policies[model][1].min_replicas)
        return stored

    def is_autoscaled(self, model: ModelId) -> bool:
        return model in self._policies

    def refresh(self) -> None:
        """Pick up models whose autoscaling options changed (after a management change)."""
        wanted = {m: o for m, o in self._options().items() if o.autoscaled}
        for model in list(self._policies):
            if model not in wanted:
                del self._policies[model]
                self.targets.pop(model, None)
        for model, opts in wanted.items():
            current = self._policies.get(model)
            if current is None or current[0] != opts:
                policy = policy_from_options(opts, self.clock)
                assert policy is not None
                seen = self._signals().get(model)
                if seen is not None:
                    policy.prime(seen)
                self._policies[model] = (opts, policy)
                old = self.targets.get(model, policy.min_replicas)
                self.targets[model] = max(policy.min_replicas, min(policy.max_replicas, old))

    async def tick(self) -> bool:
        """One decision round; True if any target changed (and was applied)."""
        signals = self._signals()
        changed = False
        for model, (_, policy) in self._policies.items():
            s = signals.get(model, Signals(0, 0, 0, 0, 0))
            old = self.targets.get(model, policy.min_replicas)
            new = policy.decide(old, s)
            if new != old:
                self.targets[model] = new
                self.events.append(ScaleEvent(self.clock(), str(model), old, new))
                del self.events[:-1000]
                log.info("autoscale %s: %d -> %d replicas", model, old, new)
                changed = True
        if changed:
            await self._apply()
        return changed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except Exception:  # a failed round must not end autoscaling
                log.exception("autoscaling round failed")
