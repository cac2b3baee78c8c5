"""The dispatcher: per model version, a deadline queue that idle replicas pull from.

Replicas pull work: a replica that finishes a batch (or joins) takes the
next one, so a slow replica never holds work a free one could do. One batch
is in flight per replica; its size comes from that replica's own batch-size
controller (a copy of the model's), and with delayed batching an idle
replica waits up to a bound for a fuller batch. A task is refused uncomputed
when even the fastest replica's batch would end past its deadline, and left
queued for a faster replica when only this one's would. Expired tasks are
dropped, never sent: one timer per model sweeps the queue at its earliest
deadline. A replica that leaves with a batch in flight gets that batch
retried once on another replica.

In front of the queue sits the prediction cache: a hit answers at once, and
a query identical to one already pending attaches to it instead of being
computed twice. A pending entry lives exactly as long as its task.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from typing import Any

import orjson

from ..cache.prediction_cache import CacheKey, PredictionCache, input_digest
from ..exceptions import RPCError
from ..rpc import protocol as p
from ..rpc.server import Replica
from ..types import DefaultReason, Failure, ModelId, Outcome, json_default
from .controllers import (
    BatchCostCurve,
    BatchSizeController,
    ControllerStatistics,
    FixedBatchSize,
)
from .queue import DeadlineQueue, QueueStatistics, Task

log = logging.getLogger("clipper.dispatcher")

Send = Callable[[bytes, p.Frames], bool]
REPLICA_LOST = "the replica computing it was lost"
EXPIRED = "the latency SLO passed while the query waited in the queue (every replica was busy)"
# A query not computed because its batch would end past the SLO, by the model's
# recent batch latency (the first batch of a replica may be slow: it loads).
TOO_SLOW = "the latency SLO would pass before a batch could finish"
QUEUE_FULL = "the model's queue is full (overloaded)"
# A replica that left every task to faster replicas (its latency estimate
# above their time left) takes one anyway once idle this long (the one due
# last); twice as long after each such try in a row, up to PROBE_MAX_S, until
# it takes a batch.
PROBE_AFTER_S = 1.0
PROBE_MAX_S = 60.0
# How many tasks a replica looks past, left for faster replicas, in one pump.
KEEP_SCAN_LIMIT = 256


@dataclass
class ModelConfig:
    """How one model version is batched and queued."""

    controller: BatchSizeController
    max_delay_s: float = 0.0
    queue_capacity: int = 10_000
    batch_time_limit_s: float | None = None  # a replica stuck longer restarts


@dataclass(frozen=True)
class ModelStatistics:
    """How one model version is queued and batched, at one moment (counters cumulative)."""

    model: ModelId
    replicas: int
    idle_replicas: int
    in_flight_batches: int
    batches: int
    errors: int
    max_batch_size: int
    mean_batch_size: float
    last_batch_size: int
    last_batch_latency_s: float
    max_delay_s: float
    coalesced: int
    controller: ControllerStatistics
    queue: QueueStatistics
    cost_per_query_ms: dict[str, float] = field(default_factory=dict)
    by_replica: list[ReplicaBatchStatistics] = field(default_factory=list)
    predictions: int = 0  # queries computed, in finished batches (not in the JSON)

    def to_json(self) -> dict[str, Any]:
        """As ``/admin/status`` reports it (``models``): the model as ``"name:version"``."""
        out = asdict(self)
        out["model"] = str(self.model)
        del out["predictions"]
        return out


@dataclass(frozen=True)
class ReplicaBatchStatistics:
    """How one replica of a model batches (each has its own controller)."""

    replica: str  # its label
    max_batch_size: int
    batches: int
    mean_batch_size: float
    latency_estimate_ms: float  # 0 until its second batch
    cost_per_query_ms: dict[str, float]


@dataclass(eq=False)
class _Member:
    """A replica of a model and how it batches.

    Replicas of one model may run on different hardware (another machine, a
    GPU beside a CPU), so each has its own batch-size controller, cost curve
    and latency estimate: a slow replica neither shrinks a fast one's batches
    nor makes it refuse queries it could answer in time, and it leaves the
    queries it cannot finish by their deadline to the others.
    """

    replica: Replica
    controller: BatchSizeController
    curve: BatchCostCurve = field(default_factory=BatchCostCurve)
    # Batch latency, exponentially weighted; 0 until it has answered twice:
    # a replica's first batch is left out, as it often loads the model (an
    # ONNX Runtime session, a JIT warm-up), and an estimate seeded by it would
    # refuse the next queries until it had halved enough times.
    latency: float = 0.0
    answered: bool = False
    idle_since: float = 0.0
    probing: bool = False  # its batch in flight was taken despite its estimate
    probe_wait: float = PROBE_AFTER_S
    batches: int = 0
    tasks: int = 0

    def statistics(self) -> ReplicaBatchStatistics:
        return ReplicaBatchStatistics(
            replica=self.replica.label,
            max_batch_size=self.controller.max_batch_size(),
            batches=self.batches,
            mean_batch_size=self.tasks / self.batches if self.batches else 0.0,
            latency_estimate_ms=self.latency * 1000,
            cost_per_query_ms=self.curve.curve(),
        )


@dataclass(eq=False)
class _InFlight:
    replica: bytes
    tasks: list[Task]
    sent_at: float


@dataclass(eq=False)
class _ModelState:
    model: ModelId
    config: ModelConfig  # its controller is the prototype each replica copies
    queue: DeadlineQueue
    members: dict[bytes, _Member] = field(default_factory=dict)
    idle: deque[bytes] = field(default_factory=deque)
    pump_scheduled: bool = False
    delay_timer: asyncio.TimerHandle | None = None
    sweep_timer: asyncio.TimerHandle | None = None
    sweep_at: float = float("inf")
    batches: int = 0
    batched_tasks: int = 0
    errors: int = 0
    coalesced: int = 0
    last_batch_size: int = 0
    last_batch_latency: float = 0.0


_PLAIN = frozenset({int, float, str, bool, type(None)})


def _checked(model: ModelId, output: Any) -> Outcome:
    """The output as an Outcome, or an error if JSON cannot carry it (that query
    only: it must neither break the response nor enter the cache)."""
    if type(output) in _PLAIN:  # the common case: no trial encoding on the hot path
        return Outcome(output=output)
    try:
        orjson.dumps(output, default=json_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        # Counted as "other", as the metrics always have (not as a model error).
        return Failure(
            DefaultReason.OTHER, f"model {model} returned an output JSON cannot carry: {exc}"
        )
    return Outcome(output=output)


class Dispatcher:
    """Queues tasks per model version and hands batches to idle replicas."""

    def __init__(
        self,
        *,
        configure: Callable[[ModelId], ModelConfig] | None = None,
        cache: PredictionCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configure = configure or (lambda _m: ModelConfig(FixedBatchSize(64)))
        self.cache = cache
        self._clock = clock
        self._send: Send = lambda _ident, _frames: False
        self._models: dict[ModelId, _ModelState] = {}
        self._in_flight: dict[int, _InFlight] = {}
        self._pending: dict[CacheKey, tuple[asyncio.Future[Outcome], Task]] = {}
        self._batch_ids = itertools.count(1)
        # Told of every finished batch: (model version, size, latency in seconds).
        self.batch_listeners: list[Callable[[ModelId, int, float], None]] = []

    def set_transport(self, send: Send) -> None:
        """Give the dispatcher the function that sends frames to a replica."""
        self._send = send

    def _state(self, model: ModelId) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            config = self._configure(model)
            state = _ModelState(model, config, DeadlineQueue(config.queue_capacity))
            self._models[model] = state
        return state

    def reconfigure(self) -> None:
        """Re-read every model's configuration (after a management change).

        A controller of the same kind keeps what it learned and takes the new
        latency target; another kind replaces it.
        """
        for model, state in self._models.items():
            new = self._configure(model)
            for member in state.members.values():
                old = member.controller
                if type(new.controller) is type(old) and not isinstance(old, FixedBatchSize):
                    target = getattr(new.controller, "target_s", None)
                    if target is not None:
                        old.set_target(target)
                else:
                    member.controller = copy.deepcopy(new.controller)
            state.config = new
            state.queue.capacity = new.queue_capacity

    # -- the query side ------------------------------------------------------

    def live_replicas(self, model: ModelId) -> int:
        state = self._models.get(model)
        return len(state.members) if state else 0

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
        key: CacheKey | None = None
        if use_cache and self.cache is not None:
            key = (model.name, model.version, input_digest(input))
            hit, output = self.cache.get(key)
            if hit:
                done: asyncio.Future[Outcome] = loop.create_future()
                done.set_result(Outcome(output=output))
                return done
            pending = self._pending.get(key)
            # Attach only while the pending task can still answer in time: a
            # computation stuck past its deadline must not capture later queries.
            if pending is not None and pending[1].deadline > self._clock():
                self._state(model).coalesced += 1
                return pending[0]
        future: asyncio.Future[Outcome] = loop.create_future()

        def sink(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        state = self._state(model)
        now = self._clock()
        task = Task(input, deadline, sink, now)
        if not state.queue.push(task):
            refused = Failure(DefaultReason.OVERLOADED, QUEUE_FULL, True)  # True: overloaded
            future.set_result(refused)
            return future
        if key is not None:
            self._pending[key] = (future, task)
            future.add_done_callback(functools.partial(self._settle, key))
        if deadline < state.sweep_at:
            self._schedule_sweep(state, deadline, now)
        if not state.pump_scheduled and state.idle:
            # Dispatch at the end of this loop iteration, so queries arriving
            # together go out as one batch.
            state.pump_scheduled = True
            loop.call_soon(self._pump_soon, state)
        return future

    def _settle(self, key: CacheKey, future: asyncio.Future[Outcome]) -> None:
        pending = self._pending.get(key)
        if pending is not None and pending[0] is future:
            del self._pending[key]
        outcome = future.result()
        if outcome.ok and self.cache is not None:
            self.cache.put(key, outcome.output)

    def _schedule_sweep(self, state: _ModelState, at: float, now: float) -> None:
        if state.sweep_timer is not None:
            state.sweep_timer.cancel()
        state.sweep_at = at
        loop = asyncio.get_running_loop()
        state.sweep_timer = loop.call_later(max(0.0, at - now), self._sweep, state)

    def _sweep(self, state: _ModelState) -> None:
        state.sweep_timer = None
        state.sweep_at = float("inf")
        now = self._clock()
        for task in state.queue.expire(now):
            task.finish(Failure(DefaultReason.SLO, f"{state.model}: {EXPIRED}"))
        nxt = state.queue.earliest_deadline()
        if nxt is not None:
            self._schedule_sweep(state, nxt, now)

    def _pump_soon(self, state: _ModelState) -> None:
        state.pump_scheduled = False
        self._pump(state)

    def _pump(self, state: _ModelState, *, flush: bool = False) -> None:
        now = self._clock()
        config = state.config
        passed: list[bytes] = []  # idle replicas that took nothing this time
        while state.idle and len(state.queue):
            member = state.members.get(state.idle[0])
            if member is None:
                state.idle.popleft()
                continue
            controller = member.controller
            max_size = controller.max_batch_size()
            if config.max_delay_s > 0 and not flush and len(state.queue) < max_size:
                oldest = state.queue.oldest_enqueued_at()
                if oldest is not None and now < oldest + config.max_delay_s:
                    self._wait_for_fuller_batch(state, oldest + config.max_delay_s - now)
                    break
            state.idle.popleft()
            take = max_size
            if not isinstance(controller, FixedBatchSize):
                take = member.curve.choose(len(state.queue), max_size)
            # A task due before a batch could finish on the fastest replica is
            # answered now, not computed; one that only a faster replica could
            # finish in time is left to it.
            fastest = member
            if len(state.members) > 1:
                fastest = min(state.members.values(), key=attrgetter("latency"))
            batch, expired = state.queue.pop_batch(
                take,
                now,
                now + fastest.latency,
                keep_before=now + member.latency,
                scan_limit=KEEP_SCAN_LIMIT,
            )
            if (
                not batch
                and len(state.queue)
                and member.latency > fastest.latency
                and now - member.idle_since >= member.probe_wait
            ):
                # It has left everything to faster replicas for a while: it may
                # have become faster, and only a batch can tell. One task, the
                # one with the most time to spare; its estimate starts afresh
                # from that batch.
                probe = state.queue.pop_latest(now + fastest.latency)
                batch = [probe] if probe is not None else []
                member.probing = bool(batch)
                if batch:
                    member.probe_wait = min(2 * member.probe_wait, PROBE_MAX_S)
            elif batch:
                member.probe_wait = PROBE_AFTER_S
            for task in expired:
                if task.deadline <= now:
                    task.finish(Failure(DefaultReason.SLO, f"{state.model}: {EXPIRED}"))
                else:
                    left_ms = (task.deadline - now) * 1000
                    estimate_ms = fastest.latency * 1000
                    whose = "its" if len(state.members) == 1 else "its fastest replica's"
                    why = (
                        f"{state.model}: {TOO_SLOW} ({whose} recent batches took "
                        f"about {estimate_ms:.0f} ms, {left_ms:.0f} ms were left); not computed"
                    )
                    task.finish(Failure(DefaultReason.SLO, why))
            if not batch:
                busy = len(state.members) - len(state.idle) - len(passed) - 1
                if expired and fastest.latency > 0 and busy == 0:
                    # An estimate only moves when a batch finishes: if it alone
                    # holds every task back while no replica computes, shrink it,
                    # or the model would starve (a single slow batch must not
                    # stop a model for good).
                    fastest.latency /= 2
                passed.append(member.replica.identity)
                continue
            self._dispatch(state, member, batch, now)
        # Replicas that took nothing stay first in line, in their order.
        state.idle.extendleft(reversed(passed))

    def _wait_for_fuller_batch(self, state: _ModelState, delay: float) -> None:
        if state.delay_timer is None:
            loop = asyncio.get_running_loop()

            def fire() -> None:
                state.delay_timer = None
                # The wait is over: take what is there, however few.
                self._pump(state, flush=True)

            state.delay_timer = loop.call_later(delay, fire)

    def _dispatch(self, state: _ModelState, member: _Member, batch: list[Task], now: float) -> None:
        replica = member.replica
        batch_id = next(self._batch_ids)
        try:
            fields, frames = p.encode_inputs(replica.input_type, [t.input for t in batch])
        except Exception as exc:  # inputs were validated; this is a bug, not a client error
            log.exception("could not encode a batch for %s", state.model)
            for task in batch:
                task.finish(Failure(DefaultReason.OTHER, f"could not encode the batch: {exc}"))
            self._idle(state, member, now)
            return
        limit = state.config.batch_time_limit_s
        if limit is not None:
            fields["time_limit_s"] = limit
        header = p.make(p.BATCH, id=batch_id, input_type=replica.input_type, **fields)
        self._in_flight[batch_id] = _InFlight(replica.identity, batch, now)
        if not self._send(replica.identity, [header, *frames]):
            # The replica vanished under us: forget it; its batch is retried.
            self.replica_left(replica, "send failed")

    @staticmethod
    def _idle(state: _ModelState, member: _Member, now: float) -> None:
        member.idle_since = now
        state.idle.append(member.replica.identity)

    # -- the replica side (ReplicaListener) -----------------------------------

    def replica_joined(self, replica: Replica) -> None:
        state = self._state(replica.model)
        member = _Member(replica, copy.deepcopy(state.config.controller))
        state.members[replica.identity] = member
        self._idle(state, member, self._clock())
        self._pump(state)

    def replica_left(self, replica: Replica, reason: str) -> None:
        state = self._models.get(replica.model)
        if state is None or state.members.pop(replica.identity, None) is None:
            return
        if replica.identity in state.idle:
            state.idle.remove(replica.identity)
        lost = [bid for bid, f in self._in_flight.items() if f.replica == replica.identity]
        for batch_id in lost:
            for task in self._in_flight.pop(batch_id).tasks:
                if task.retries == 0:
                    task.retries += 1
                    state.queue.requeue(task)
                else:
                    why = f"{state.model}: {REPLICA_LOST} ({reason})"
                    task.finish(Failure(DefaultReason.MODEL_ERROR, why))
        if len(state.queue):
            nxt = state.queue.earliest_deadline()
            if nxt is not None and nxt < state.sweep_at:
                self._schedule_sweep(state, nxt, self._clock())
        self._pump(state)

    def batch_result(
        self, replica: Replica, batch_id: int, header: dict[str, Any], frames: list[bytes]
    ) -> None:
        flight = self._in_flight.get(batch_id)
        state = self._models.get(replica.model)
        if flight is None or flight.replica != replica.identity or state is None:
            log.debug("ignoring result for unknown batch %s", batch_id)
            return
        del self._in_flight[batch_id]
        tasks = flight.tasks
        now = self._clock()
        latency = now - flight.sent_at
        state.batches += 1
        state.batched_tasks += len(tasks)
        state.last_batch_size = len(tasks)
        state.last_batch_latency = latency
        member = state.members.get(replica.identity)
        if member is not None:
            member.batches += 1
            member.tasks += len(tasks)
            if not member.answered:
                member.answered = True
            elif member.latency == 0.0 or member.probing:
                member.latency = latency
            else:
                member.latency = 0.8 * member.latency + 0.2 * latency
            member.probing = False
            member.controller.observe(len(tasks), latency, len(state.queue))
        for listener in self.batch_listeners:
            listener(state.model, len(tasks), latency)
        if header.get("ok") is True:
            if member is not None:
                member.curve.observe(len(tasks), latency)
            try:
                outputs = p.decode_outputs(frames, len(tasks))
            except RPCError as exc:
                self._fail(state, tasks, f"{state.model} returned a bad result: {exc}")
            else:
                for task, output in zip(tasks, outputs, strict=True):
                    task.finish(_checked(state.model, output))
        else:
            etype = str(header.get("error_type", "Error"))
            emsg = str(header.get("error_message", ""))
            self._fail(state, tasks, f"model {state.model} raised {etype}: {emsg}")
        if member is not None:
            self._idle(state, member, now)
            self._pump(state)

    def _fail(self, state: _ModelState, tasks: list[Task], message: str) -> None:
        """The model raised or returned a bad result: its batch's queries get ``message``."""
        state.errors += 1
        reason = DefaultReason.MODEL_ERROR
        for task in tasks:
            task.finish(Failure(reason, message))

    # -- introspection -------------------------------------------------------

    def statistics(self) -> list[ModelStatistics]:
        out = []
        for model, s in self._models.items():
            in_flight = sum(1 for f in self._in_flight.values() if f.replica in s.members)
            members = list(s.members.values())
            by_replica = [m.statistics() for m in members]
            prototype = s.config.controller.statistics()
            # The model's figures: the largest batch any replica may take, and
            # the cost curve of the replica that ran the most batches.
            busiest = max(members, key=lambda m: m.batches, default=None)
            max_size = max((r.max_batch_size for r in by_replica), default=prototype.max_batch_size)
            controller = ControllerStatistics(
                policy=prototype.policy,
                max_batch_size=max_size,
                observed_batches=sum(m.controller.statistics().observed_batches for m in members),
            )
            out.append(
                ModelStatistics(
                    model=model,
                    replicas=len(s.members),
                    idle_replicas=len(s.idle),
                    in_flight_batches=in_flight,
                    batches=s.batches,
                    errors=s.errors,
                    max_batch_size=max_size,
                    mean_batch_size=s.batched_tasks / s.batches if s.batches else 0.0,
                    last_batch_size=s.last_batch_size,
                    last_batch_latency_s=s.last_batch_latency,
                    max_delay_s=s.config.max_delay_s,
                    coalesced=s.coalesced,
                    controller=controller,
                    queue=s.queue.statistics(),
                    cost_per_query_ms=busiest.curve.curve() if busiest is not None else {},
                    by_replica=by_replica,
                    predictions=s.batched_tasks,
                )
            )
        return out

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
        return len(self._pending)

    def close(self) -> None:
        """Cancel timers (at shutdown)."""
        for state in self._models.values():
            for timer in (state.sweep_timer, state.delay_timer):
                if timer is not None:
                    timer.cancel()
