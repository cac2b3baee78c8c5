"""What the dispatcher keeps per model version and per replica, and the statistics of it.

No I/O, no clock, no timers (the caller passes the time): a model version's
configuration, queue, replicas (idle ones in line) and counters; each
replica's batch-size controller, cost curve and latency estimate; which
batch an idle replica takes; and the typed statistics ``/admin/status``,
the metrics and the autoscaler read.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter
from typing import Any

from ..rpc.server import Replica
from ..timers import TimerHandle
from ..types import ModelId
from . import outcomes
from .controllers import BatchCostCurve, BatchSizeController, ControllerStatistics, FixedBatchSize
from .estimate import LatencyEstimate
from .queue import DeadlineQueue, QueueStatistics, Task

# How many tasks a replica looks past, left for faster replicas, in one pump.
KEEP_SCAN_LIMIT = 256
_BY_LATENCY = attrgetter("estimate.latency")


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
    # Queries the model failed (it raised on them, gave an unusable output, or
    # its replica was lost with them), apart from SLO misses; and the last one's
    # explanation ("" before any).
    model_errors: int = 0
    last_model_error: str = ""
    # Queries refused at arrival: the queue ahead of them could not be computed
    # in time by the replicas' latency estimates (answered at once, not queued).
    shed: int = 0

    def to_json(self) -> dict[str, Any]:
        """As ``/admin/status`` reports it (``models``): the model as ``"name:version"``."""
        out = asdict(self)
        out["model"] = str(self.model)
        del out["predictions"]
        return out


# Counters and gauges that add up over worker processes (``--workers``).
_SUMMED = (
    "in_flight_batches",
    "batches",
    "errors",
    "coalesced",
    "predictions",
    "model_errors",
    "shed",
)
_QUEUE_SUMMED = ("depth", "capacity", "enqueued", "dispatched", "expired", "rejected")


def merge_statistics(
    own: list[ModelStatistics], others: list[list[ModelStatistics]]
) -> list[ModelStatistics]:
    """One process's statistics with its sibling workers' (``--workers``): counters,
    queue depths and in-flight batches summed, the mean batch size weighted by
    batches; the replica and batch-size figures are ``own``'s (every worker
    batches for the same replicas, each with its own controllers)."""
    merged = {m.model: m for m in own}
    for stats in others:
        for m in stats:
            mine = merged.get(m.model)
            if mine is None:
                merged[m.model] = m
                continue
            batches = mine.batches + m.batches
            mean = (
                (mine.mean_batch_size * mine.batches + m.mean_batch_size * m.batches) / batches
                if batches
                else 0.0
            )
            queue = QueueStatistics(
                **{k: getattr(mine.queue, k) + getattr(m.queue, k) for k in _QUEUE_SUMMED}
            )
            merged[m.model] = replace(
                mine,
                **{k: getattr(mine, k) + getattr(m, k) for k in _SUMMED},
                mean_batch_size=mean,
                queue=queue,
                last_model_error=mine.last_model_error or m.last_model_error,
            )
    return list(merged.values())


def retire_statistics(
    past: list[ModelStatistics], last: list[ModelStatistics]
) -> list[ModelStatistics]:
    """The counters of worker processes that exited (``past``) with one more's last
    statistics added, its gauges (replicas, queue depth, batches in flight) left
    out: what the supervisor keeps adding to the sums, so that a worker started
    again from zero does not set them back."""
    gone = [
        replace(
            m,
            replicas=0,
            idle_replicas=0,
            in_flight_batches=0,
            queue=replace(m.queue, depth=0, capacity=0),
            by_replica=[],
        )
        for m in last
    ]
    return merge_statistics(past, [gone])


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
class Member:
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
    estimate: LatencyEstimate = field(default_factory=LatencyEstimate)
    batches: int = 0
    tasks: int = 0

    def observe(self, size: int, latency: float, waiting: int) -> None:
        """One of its batches came back (``waiting``: tasks left in the queue)."""
        self.batches += 1
        self.tasks += size
        self.estimate.observe(latency)
        self.controller.observe(size, latency, waiting)

    def latency_for(self, size: int) -> float:
        """How long a batch of ``size`` should take on this replica, for refusing
        tasks that would finish late: its latency estimate (a recent batch's,
        whatever its size), or less when its cost curve says a batch this size
        is quicker. A small batch on a model with a large cost per batch (a
        lone query on the heavy MLP: about 2 ms where its usual batches took
        6) would otherwise refuse queries it could still answer in time;
        never more, as a refused query is lost for good."""
        latency = self.estimate.latency
        by_size = self.curve.batch_latency(size)
        return latency if by_size is None else min(latency, by_size)

    def statistics(self) -> ReplicaBatchStatistics:
        return ReplicaBatchStatistics(
            replica=self.replica.label,
            max_batch_size=self.controller.max_batch_size(),
            batches=self.batches,
            mean_batch_size=self.tasks / self.batches if self.batches else 0.0,
            latency_estimate_ms=self.estimate.latency * 1000,
            cost_per_query_ms=self.curve.curve(),
        )


@dataclass(eq=False)
class ModelState:
    """One model version: its queue, its replicas (idle ones in line) and timers."""

    model: ModelId
    config: ModelConfig  # its controller is the prototype each replica copies
    queue: DeadlineQueue
    members: dict[bytes, Member] = field(default_factory=dict)
    idle: deque[bytes] = field(default_factory=deque)
    pump_scheduled: bool = False
    delay_timer: TimerHandle | None = None
    sweep_timer: TimerHandle | None = None
    sweep_at: float = float("inf")
    batches: int = 0
    batched_tasks: int = 0
    errors: int = 0  # batches the model failed on, in whole or in part
    model_errors: int = 0  # queries the model failed
    last_model_error: str = ""
    last_batch_size: int = 0
    last_batch_latency: float = 0.0
    shed: int = 0  # queries refused at arrival: they could not be computed in time

    def reconfigure(self, new: ModelConfig) -> None:
        """Take a new configuration (after a management change).

        A replica's controller of the same kind keeps what it learned and
        takes the new latency target; another kind is replaced by a copy of
        the new one.
        """
        for member in self.members.values():
            old = member.controller
            if type(new.controller) is type(old) and not isinstance(old, FixedBatchSize):
                target = getattr(new.controller, "target_s", None)
                if target is not None:
                    old.set_target(target)
            else:
                member.controller = copy.deepcopy(new.controller)
        self.config = new
        self.queue.capacity = new.queue_capacity

    def join(self, replica: Replica, now: float) -> None:
        """A replica joined: idle, with its own copy of the model's controller."""
        member = Member(replica, copy.deepcopy(self.config.controller))
        self.members[replica.identity] = member
        self.make_idle(member, now)

    def leave(self, identity: bytes) -> bool:
        """Forget a replica; False if it was not a member."""
        if self.members.pop(identity, None) is None:
            return False
        if identity in self.idle:
            self.idle.remove(identity)
        return True

    def fuller_batch_by(self, max_size: int, now: float) -> float | None:
        """Delayed batching: until when to wait for a fuller batch than the
        queue holds (the model's bound after the oldest task arrived), or
        None to take what is there now."""
        delay = self.config.max_delay_s
        if delay <= 0 or len(self.queue) >= max_size:
            return None
        oldest = self.queue.oldest_enqueued_at()
        if oldest is None or now >= oldest + delay:
            return None
        return oldest + delay

    def take_batch(self, member: Member, max_size: int, now: float, passed: int) -> list[Task]:
        """The batch an idle ``member`` takes now, maybe none (``passed``: idle
        replicas that took none before it in this pump).

        A task due before a batch could finish on the fastest replica is
        answered now, not computed; one that only a faster replica could
        finish in time is left to it, unless this replica probes.
        """
        queue, estimate = self.queue, member.estimate
        take = max_size
        if not isinstance(member.controller, FixedBatchSize):
            take = member.curve.choose(len(queue), max_size)
        fastest = member
        if len(self.members) > 1:
            fastest = min(self.members.values(), key=_BY_LATENCY)
        fast = fastest.estimate
        fast_latency = fastest.latency_for(take)
        batch, expired = queue.pop_batch(
            take,
            now,
            now + fast_latency,
            # Left for a faster replica: due before this one's batch could end.
            keep_before=now + (fast_latency if fastest is member else member.latency_for(take)),
            scan_limit=KEEP_SCAN_LIMIT,
        )
        if not batch and len(queue) and estimate.may_probe(now, fast.latency):
            # It has left everything to faster replicas for a while: one task,
            # the one with the most time to spare, tells whether it is faster now.
            probe = queue.pop_latest(now + fast.latency)
            batch = [probe] if probe is not None else []
            estimate.probed(bool(batch))
        elif batch:
            estimate.took_batch()
        if expired:
            replicas = len(self.members)
            for task in expired:
                task.finish(
                    outcomes.refused(self.model, task.deadline, now, replicas, fast_latency)
                )
            busy = len(self.members) - len(self.idle) - passed - 1
            if not batch and fast.latency > 0 and busy == 0:
                fast.shrink()  # it alone holds every task back: the model must not starve
        return batch

    def make_idle(self, member: Member, now: float) -> None:
        """``member`` waits for a batch, last in line."""
        member.estimate.idle(now)
        self.idle.append(member.replica.identity)

    def capacity_within(self, budget_s: float) -> float | None:
        """About how many queued queries the replicas can compute within
        ``budget_s``, by their latency estimates; None while any replica has
        no estimate yet (or none is live): then nothing is refused on it.

        Shedding at arrival asks this before a query is queued: the queue is
        earliest deadline first and every query in it is due before one
        arriving now, so the new one can be computed in time only if it fits
        behind them. The estimate leans optimistic (each replica computes its
        controller's largest batch per estimated batch latency, the batch in
        flight and the new query's own batch not counted): a query it lets in
        that turns out late is still refused uncomputed at dispatch, before
        its deadline, while one it sheds is lost to the model for good.
        """
        if not self.members:
            return None
        total = 0.0
        for member in self.members.values():
            latency = member.estimate.latency
            if latency <= 0.0:
                return None
            total += member.controller.max_batch_size() * budget_s / latency
        return total

    def model_failed(self, explanation: str, queries: int = 1) -> None:
        """``queries`` of this model's queries got a model error."""
        self.model_errors += queries
        self.last_model_error = explanation

    def record_batch(self, size: int, latency: float) -> None:
        self.batches += 1
        self.batched_tasks += size
        self.last_batch_size = size
        self.last_batch_latency = latency

    def statistics(self, in_flight: int, coalesced: int) -> ModelStatistics:
        """The model's figures: the largest batch any replica may take, and
        the cost curve of the replica that ran the most batches."""
        members = list(self.members.values())
        by_replica = [m.statistics() for m in members]
        prototype = self.config.controller.statistics()
        busiest = max(members, key=lambda m: m.batches, default=None)
        max_size = max((r.max_batch_size for r in by_replica), default=prototype.max_batch_size)
        controller = ControllerStatistics(
            policy=prototype.policy,
            max_batch_size=max_size,
            observed_batches=sum(m.controller.statistics().observed_batches for m in members),
        )
        return ModelStatistics(
            model=self.model,
            replicas=len(self.members),
            idle_replicas=len(self.idle),
            in_flight_batches=in_flight,
            batches=self.batches,
            errors=self.errors,
            max_batch_size=max_size,
            mean_batch_size=self.batched_tasks / self.batches if self.batches else 0.0,
            last_batch_size=self.last_batch_size,
            last_batch_latency_s=self.last_batch_latency,
            max_delay_s=self.config.max_delay_s,
            coalesced=coalesced,
            controller=controller,
            queue=self.queue.statistics(),
            shed=self.shed,
            cost_per_query_ms=busiest.curve.curve() if busiest is not None else {},
            by_replica=by_replica,
            predictions=self.batched_tasks,
            model_errors=self.model_errors,
            last_model_error=self.last_model_error,
        )
