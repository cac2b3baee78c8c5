"""The dispatcher: per model version, a deadline queue that idle replicas pull from.

Replicas pull work: a replica that finishes a batch (or joins) takes the
next one, so a slow replica never holds work a free one could do. One batch
is in flight per replica; its size comes from that replica's own batch-size
controller (a copy of the model's), and with delayed batching an idle
replica waits up to a bound for a fuller batch. A task is refused uncomputed
when even the fastest replica's batch would end past its deadline, and left
queued for a faster replica when only this one's would (each replica's
latency estimate, and when a slow one tries anyway: ``estimate``). Expired
tasks are dropped, never sent: one timer per model sweeps the queue at its
earliest deadline. A replica that leaves with a batch in flight gets that
batch retried once on another replica.

In front of the queue sits the prediction cache (``cache.coalesce``): a hit
answers at once, and a query identical to one already pending attaches to
it instead of being computed twice. Below it, the RPC layer: the dispatcher
hands a replica a batch of inputs (``BatchTransport.send_batch``) and hears
back its outputs or a failure (``batch_done``); the wire encoding is the RPC
layer's. Timers come from a ``clipper.timers`` source that tests can move.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from ..cache.coalesce import Coalescer
from ..cache.prediction_cache import PredictionCache
from ..rpc import protocol as p
from ..rpc.server import BatchTransport, FrameSender, Replica
from ..timers import Timers, timers_for
from ..types import DefaultReason, Failure, ModelId, Outcome
from . import outcomes
from .controllers import FixedBatchSize
from .estimate import PROBE_AFTER_S as PROBE_AFTER_S
from .model_state import Member, ModelConfig, ModelState, ModelStatistics, ReplicaBatchStatistics
from .outcomes import EXPIRED as EXPIRED
from .outcomes import QUEUE_FULL as QUEUE_FULL
from .outcomes import TOO_SLOW as TOO_SLOW
from .outcomes import checked, outputs_or_error
from .queue import DeadlineQueue, Task

log = logging.getLogger("clipper.dispatcher")

# The longest ``deadline_s`` sent with a batch (a query without a real deadline).
MAX_DEADLINE_S = 3600.0


@dataclass(eq=False)
class _InFlight:
    replica: bytes
    tasks: list[Task]
    sent_at: float


class Dispatcher:
    """Queues tasks per model version and hands batches to idle replicas."""

    def __init__(
        self,
        *,
        configure: Callable[[ModelId], ModelConfig] | None = None,
        cache: PredictionCache | None = None,
        clock: Callable[[], float] | None = None,
        timers: Timers | None = None,
        shed_at_arrival: bool = True,
    ) -> None:
        # Refuse at once a query that the queue ahead of it would make late
        # (``ModelState.capacity_within``), rather than queue it to expire.
        self.shed_at_arrival = shed_at_arrival
        self._configure = configure or (lambda _m: ModelConfig(FixedBatchSize(64)))
        self.cache = cache
        self._timers = timers_for(clock, timers)
        self._clock = self._timers.now
        self._transport: BatchTransport = FrameSender(lambda _identity, _frames: False)  # unwired
        self._models: dict[ModelId, ModelState] = {}
        self._in_flight: dict[int, _InFlight] = {}
        # Cache lookups and pending computations (bench/soak_probe reads its length).
        self._pending = Coalescer(cache) if cache is not None else None
        self._batch_ids = itertools.count(1)
        # Told of every finished batch: (model version, size, latency in seconds).
        self.batch_listeners: list[Callable[[ModelId, int, float], None]] = []

    def set_transport(self, transport: BatchTransport) -> None:
        """Give the dispatcher what sends replicas their batches: the RPC server
        (or, for a replica scripted without sockets, ``rpc.server.FrameSender``)."""
        self._transport = transport

    def _state(self, model: ModelId) -> ModelState:
        state = self._models.get(model)
        if state is None:
            config = self._configure(model)
            state = ModelState(model, config, DeadlineQueue(config.queue_capacity))
            self._models[model] = state
        return state

    def reconfigure(self) -> None:
        """Re-read every model's configuration (after a management change).

        A controller of the same kind keeps what it learned and takes the new
        latency target; another kind replaces it.
        """
        for model, state in self._models.items():
            state.reconfigure(self._configure(model))

    # -- the query side ------------------------------------------------------

    def live_replicas(self, model: ModelId) -> int:
        state = self._models.get(model)
        return len(state.members) if state else 0

    def queued(self, model: ModelId) -> int:
        """Tasks waiting in a model version's queue (not yet on a replica)."""
        state = self._models.get(model)
        return len(state.queue) if state else 0

    def submit(
        self, model: ModelId, input: Any, deadline: float, *, use_cache: bool = True
    ) -> asyncio.Future[Outcome]:
        """Queue one input for a model version; the future resolves to an Outcome.

        ``deadline`` is on this dispatcher's clock. The future is never
        resolved with an exception. It resolves by the deadline at the latest
        (the task expires) unless the task is already on a replica, in which
        case the caller applies the deadline; a late result still lands in the
        cache.
        """
        loop = asyncio.get_running_loop()
        now = self._clock()
        coalescer = self._pending if use_cache else None
        if coalescer is not None:
            key, found = coalescer.find(model, input, now)
            if found is not None:
                return found
        future: asyncio.Future[Outcome] = loop.create_future()

        def sink(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        state = self._state(model)
        if self.shed_at_arrival and len(state.queue):
            capacity = state.capacity_within(deadline - now)
            if capacity is not None and len(state.queue) >= capacity:
                # Shed at arrival: the queries ahead of it take every batch its
                # replicas can finish by its deadline. Answered now, not at the
                # deadline, and never queued: the model's time goes to queries
                # it can still serve, and the frontend's to reading requests.
                state.shed += 1
                future.set_result(outcomes.shed(model, len(state.queue), deadline - now))
                return future
        task = Task(input, deadline, sink, now)
        if not state.queue.push(task):
            future.set_result(outcomes.queue_full())
            return future
        if coalescer is not None:
            coalescer.track(key, future, deadline)
        if deadline < state.sweep_at:
            self._schedule_sweep(state, deadline)
        if not state.pump_scheduled and state.idle:
            # Dispatch at the end of this loop iteration, so queries arriving
            # together go out as one batch.
            state.pump_scheduled = True
            loop.call_soon(self._pump_soon, state)
        return future

    def _schedule_sweep(self, state: ModelState, at: float) -> None:
        if state.sweep_timer is not None:
            state.sweep_timer.cancel()
        state.sweep_at = at
        state.sweep_timer = self._timers.call_at(at, self._sweep, state)

    def _sweep(self, state: ModelState) -> None:
        state.sweep_timer = None
        state.sweep_at = float("inf")
        now = self._clock()
        for task in state.queue.expire(now):
            task.finish(outcomes.expired(state.model))
        nxt = state.queue.earliest_deadline()
        if nxt is not None:
            self._schedule_sweep(state, nxt)

    def _pump_soon(self, state: ModelState) -> None:
        state.pump_scheduled = False
        self._pump(state)

    def _pump(self, state: ModelState, *, flush: bool = False) -> None:
        """Hand batches to idle replicas, in line, while tasks wait."""
        now = self._clock()
        passed: list[bytes] = []  # idle replicas that took nothing this time
        while state.idle and len(state.queue):
            member = state.members.get(state.idle[0])
            if member is None:
                state.idle.popleft()
                continue
            max_size = member.controller.max_batch_size()
            if not flush and self._waits_for_more(state, max_size, now):
                break
            state.idle.popleft()
            batch = state.take_batch(member, max_size, now, len(passed))
            if batch:
                if state.delay_timer is not None:
                    # The wait is over: a later one times itself from the queue then.
                    state.delay_timer.cancel()
                    state.delay_timer = None
                self._dispatch(state, member, batch, now)
            else:
                passed.append(member.replica.identity)
        # Replicas that took nothing stay first in line, in their order.
        state.idle.extendleft(reversed(passed))

    def _waits_for_more(self, state: ModelState, max_size: int, now: float) -> bool:
        """Delayed batching: whether to wait for a fuller batch (a timer ends the wait)."""
        until = state.fuller_batch_by(max_size, now)
        if until is None:
            return False
        if state.delay_timer is None:
            state.delay_timer = self._timers.call_at(until, self._delay_over, state)
        return True

    def _delay_over(self, state: ModelState) -> None:
        state.delay_timer = None
        self._pump(state, flush=True)  # the wait is over: take what is there, however few

    def _dispatch(self, state: ModelState, member: Member, batch: list[Task], now: float) -> None:
        replica = member.replica
        batch_id = next(self._batch_ids)
        self._in_flight[batch_id] = _InFlight(replica.identity, batch, now)
        inputs = [t.input for t in batch]
        # Until the last of its queries is answered anyway: how long the
        # replica may spend isolating an input the model fails on.
        last = max(t.deadline for t in batch)
        deadline_s = round(min(max(last - now, 0.0), MAX_DEADLINE_S), 6)
        try:
            sent = self._transport.send_batch(
                replica, batch_id, inputs, state.config.batch_time_limit_s, deadline_s=deadline_s
            )
        except Exception as exc:  # inputs were validated; this is a bug, not a client error
            del self._in_flight[batch_id]
            log.exception("could not encode a batch for %s", state.model)
            for task in batch:
                task.finish(outcomes.not_encoded(exc))
            state.make_idle(member, now)
            return
        if not sent:
            # The replica vanished under us: forget it; its batch is retried.
            self.replica_left(replica, "send failed")

    # -- the replica side (ReplicaListener) -----------------------------------

    def replica_joined(self, replica: Replica) -> None:
        state = self._state(replica.model)
        state.join(replica, self._clock())
        self._pump(state)

    def replica_left(self, replica: Replica, reason: str) -> None:
        """Forget a replica; its batch in flight is retried (once per task)."""
        state = self._models.get(replica.model)
        if state is None or not state.leave(replica.identity):
            return
        lost = [bid for bid, f in self._in_flight.items() if f.replica == replica.identity]
        for batch_id in lost:
            for task in self._in_flight.pop(batch_id).tasks:
                if task.retries == 0:
                    task.retries += 1
                    state.queue.requeue(task)
                else:
                    failure = outcomes.replica_lost(state.model, reason)
                    state.model_failed(failure.error or "")
                    task.finish(failure)
        if len(state.queue):
            nxt = state.queue.earliest_deadline()
            if nxt is not None and nxt < state.sweep_at:
                self._schedule_sweep(state, nxt)
        self._pump(state)

    def batch_done(self, replica: Replica, batch_id: int, result: p.BatchResult) -> None:
        """A replica answered a batch: its outputs, in order, or why there are none."""
        flight = self._in_flight.get(batch_id)
        state = self._models.get(replica.model)
        if flight is None or flight.replica != replica.identity or state is None:
            log.debug("ignoring result for unknown batch %s", batch_id)
            return
        del self._in_flight[batch_id]
        tasks = flight.tasks
        now = self._clock()
        latency = now - flight.sent_at
        state.record_batch(len(tasks), latency)
        member = state.members.get(replica.identity)
        if member is not None:
            member.observe(len(tasks), latency, len(state.queue))
        for listener in self.batch_listeners:
            listener(state.model, len(tasks), latency)
        partial = type(result) is p.PartialOutputs
        if member is not None and not partial and not isinstance(result, p.ModelRaised):
            # The model ran: its cost counts (not a batch it was split and
            # retried on to isolate a failing input: that took longer).
            member.curve.observe(len(tasks), latency)
        outputs = outputs_or_error(state.model, result, len(tasks))
        if isinstance(outputs, str):
            state.errors += 1
            state.model_failed(outputs, len(tasks))
            for task in tasks:
                task.finish(Failure(DefaultReason.MODEL_ERROR, outputs))
        elif partial:  # the model failed on some inputs only: theirs are errors
            state.errors += 1
            for task, output in zip(tasks, outputs, strict=True):
                outcome = checked(state.model, output)
                if isinstance(output, p.ModelRaised | p.BadResult):
                    state.model_failed(outcome.error or "")
                task.finish(outcome)
        else:
            for task, output in zip(tasks, outputs, strict=True):
                task.finish(checked(state.model, output))
        if member is not None:
            state.make_idle(member, now)
            self._pump(state)

    # -- introspection -------------------------------------------------------

    def statistics(self) -> list[ModelStatistics]:
        coalesced = self._pending.coalesced if self._pending is not None else {}
        return [
            state.statistics(
                in_flight=sum(1 for f in self._in_flight.values() if f.replica in state.members),
                coalesced=coalesced.get(model, 0),
            )
            for model, state in self._models.items()
        ]

    def forget(self, keep: Collection[ModelId]) -> list[ModelId]:
        """Drop the state of the model versions not in ``keep`` (deleted ones) once
        nothing of theirs is left: no replica and no query waiting (a batch in
        flight has its replica). Returns the versions dropped; one deployed again
        starts afresh."""
        gone = [
            model
            for model, state in self._models.items()
            if model not in keep and not state.members and not len(state.queue)
        ]
        for model in gone:
            state = self._models.pop(model)
            for timer in (state.sweep_timer, state.delay_timer):
                if timer is not None:
                    timer.cancel()
        return gone

    def replicas(self) -> list[Replica]:
        return [m.replica for s in self._models.values() for m in s.members.values()]

    def replica_batching(self) -> dict[tuple[ModelId, str], ReplicaBatchStatistics]:
        """How each live replica batches, by (model version, replica label)."""
        return {
            (model, m.replica.label): m.statistics()
            for model, s in self._models.items()
            for m in s.members.values()
        }

    def busy(self) -> bool:
        """Whether any query waits in a queue or runs on a replica."""
        return bool(self._in_flight) or any(len(s.queue) for s in self._models.values())

    def pending_entries(self) -> int:
        """How many cache entries are pending (a computation in progress)."""
        return len(self._pending) if self._pending is not None else 0

    def close(self) -> None:
        """Cancel timers (at shutdown)."""
        for state in self._models.values():
            for timer in (state.sweep_timer, state.delay_timer):
                if timer is not None:
                    timer.cancel()
