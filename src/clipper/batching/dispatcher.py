"""The dispatcher: per model version, a deadline queue that idle replicas pull from.

Replicas pull work: a replica that finishes a batch (or joins) takes the
next one, so a slow replica never holds work a free one could do. One batch
is in flight per replica. A replica that leaves with a batch in flight gets
that batch retried once on another replica; past that, its tasks answer
with an error. Expired tasks are dropped from the queue, never sent.

This module is the seam for the rest of the abstraction layer: the cache
sits in front of ``submit`` and the batch-size controller is injected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import RPCError
from ..rpc import protocol as p
from ..rpc.server import Replica
from ..types import ModelId, Outcome
from .controllers import BatchSizeController, FixedBatchSize
from .queue import DeadlineQueue, QueueStatistics, Task

log = logging.getLogger("clipper.dispatcher")

Send = Callable[[bytes, p.Frames], bool]
REPLICA_LOST = "the replica computing it was lost"


@dataclass(frozen=True)
class ModelStatistics:
    model: str
    replicas: int
    idle_replicas: int
    in_flight_batches: int
    batches: int
    errors: int
    max_batch_size: int
    mean_batch_size: float
    queue: QueueStatistics


@dataclass(eq=False)
class _InFlight:
    replica: bytes
    tasks: list[Task]
    sent_at: float


@dataclass(eq=False)
class _ModelState:
    model: ModelId
    input_type: str
    controller: BatchSizeController
    queue: DeadlineQueue = field(default_factory=DeadlineQueue)
    replicas: dict[bytes, Replica] = field(default_factory=dict)
    idle: deque[bytes] = field(default_factory=deque)
    pump_scheduled: bool = False
    batches: int = 0
    batched_tasks: int = 0
    errors: int = 0


class Dispatcher:
    """Queues tasks per model version and hands batches to idle replicas."""

    def __init__(
        self,
        *,
        controller_factory: Callable[[ModelId], BatchSizeController] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._controller_factory = controller_factory or (lambda _m: FixedBatchSize(64))
        self._clock = clock
        self._send: Send = lambda _ident, _frames: False
        self._models: dict[ModelId, _ModelState] = {}
        self._in_flight: dict[int, _InFlight] = {}
        self._batch_ids = itertools.count(1)

    def set_transport(self, send: Send) -> None:
        """Give the dispatcher the function that sends frames to a replica."""
        self._send = send

    def _state(self, model: ModelId, input_type: str = "doubles") -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = _ModelState(model, input_type, self._controller_factory(model))
            self._models[model] = state
        return state

    # -- the query side ------------------------------------------------------

    def live_replicas(self, model: ModelId) -> int:
        state = self._models.get(model)
        return len(state.replicas) if state else 0

    def submit(self, model: ModelId, input: Any, deadline: float) -> asyncio.Future[Outcome]:
        """Queue one input for a model version; the future resolves to an Outcome.

        ``deadline`` is on this dispatcher's clock. The future is never
        resolved with an exception, and stays pending if nothing answers:
        the caller applies the deadline.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def sink(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        state = self._state(model)
        state.queue.push(Task(input, deadline, sink))
        if not state.pump_scheduled and state.idle:
            # Dispatch at the end of this loop iteration, so queries arriving
            # together go out as one batch.
            state.pump_scheduled = True
            loop.call_soon(self._pump, state)
        return future

    def _pump(self, state: _ModelState) -> None:
        state.pump_scheduled = False
        now = self._clock()
        while state.idle and len(state.queue):
            identity = state.idle.popleft()
            replica = state.replicas.get(identity)
            if replica is None:
                continue
            batch = state.queue.pop_batch(state.controller.max_batch_size(), now)
            if not batch:
                state.idle.appendleft(identity)
                return
            self._dispatch(state, replica, batch, now)

    def _dispatch(
        self, state: _ModelState, replica: Replica, batch: list[Task], now: float
    ) -> None:
        batch_id = next(self._batch_ids)
        try:
            fields, frames = p.encode_inputs(replica.input_type, [t.input for t in batch])
        except Exception as exc:  # inputs were validated; this is a bug, not a client error
            log.exception("could not encode a batch for %s", state.model)
            for task in batch:
                task.finish(Outcome(error=f"could not encode the batch: {exc}"))
            state.idle.append(replica.identity)
            return
        header = p.make(p.BATCH, id=batch_id, input_type=replica.input_type, **fields)
        self._in_flight[batch_id] = _InFlight(replica.identity, batch, now)
        if not self._send(replica.identity, [header, *frames]):
            # The replica vanished under us: forget it; its batch is retried.
            self.replica_left(replica, "send failed")

    # -- the replica side (ReplicaListener) -----------------------------------

    def replica_joined(self, replica: Replica) -> None:
        state = self._state(replica.model, replica.input_type)
        state.input_type = replica.input_type
        state.replicas[replica.identity] = replica
        state.idle.append(replica.identity)
        self._pump(state)

    def replica_left(self, replica: Replica, reason: str) -> None:
        state = self._models.get(replica.model)
        if state is None or state.replicas.pop(replica.identity, None) is None:
            return
        if replica.identity in state.idle:
            state.idle.remove(replica.identity)
        lost = [bid for bid, f in self._in_flight.items() if f.replica == replica.identity]
        for batch_id in lost:
            for task in self._in_flight.pop(batch_id).tasks:
                if task.retries == 0:
                    task.retries += 1
                    state.queue.push(task)
                else:
                    task.finish(Outcome(error=f"{state.model}: {REPLICA_LOST} ({reason})"))
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
        state.batches += 1
        state.batched_tasks += len(tasks)
        state.controller.observe(len(tasks), now - flight.sent_at)
        if header.get("ok") is True:
            try:
                outputs = p.decode_outputs(frames, len(tasks))
            except RPCError as exc:
                self._fail(state, tasks, f"{state.model} returned a bad result: {exc}")
            else:
                for task, output in zip(tasks, outputs, strict=True):
                    task.finish(Outcome(output=output))
        else:
            etype = str(header.get("error_type", "Error"))
            emsg = str(header.get("error_message", ""))
            self._fail(state, tasks, f"model {state.model} raised {etype}: {emsg}")
        if replica.identity in state.replicas:
            state.idle.append(replica.identity)
            self._pump(state)

    def _fail(self, state: _ModelState, tasks: list[Task], message: str) -> None:
        state.errors += 1
        for task in tasks:
            task.finish(Outcome(error=message))

    # -- introspection -------------------------------------------------------

    def statistics(self) -> list[ModelStatistics]:
        out = []
        for model, s in self._models.items():
            in_flight = sum(1 for f in self._in_flight.values() if f.replica in s.replicas)
            out.append(
                ModelStatistics(
                    model=str(model),
                    replicas=len(s.replicas),
                    idle_replicas=len(s.idle),
                    in_flight_batches=in_flight,
                    batches=s.batches,
                    errors=s.errors,
                    max_batch_size=s.controller.max_batch_size(),
                    mean_batch_size=s.batched_tasks / s.batches if s.batches else 0.0,
                    queue=s.queue.statistics(),
                )
            )
        return out

    def replicas(self) -> list[Replica]:
        return [r for s in self._models.values() for r in s.replicas.values()]
