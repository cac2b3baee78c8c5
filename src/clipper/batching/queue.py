"""An earliest-deadline-first queue of query tasks (pure, no I/O)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Task:
    """One query waiting for one model version."""

    __slots__ = ("deadline", "done", "enqueued_at", "input", "retries", "sink")

    def __init__(
        self, input: Any, deadline: float, sink: Callable[[Any], None], enqueued_at: float = 0.0
    ) -> None:
        self.input = input
        self.deadline = deadline
        self.sink = sink  # called once with the Outcome
        self.enqueued_at = enqueued_at
        self.retries = 0
        self.done = False

    def finish(self, outcome: Any) -> None:
        if not self.done:
            self.done = True
            self.sink(outcome)


@dataclass(frozen=True)
class QueueStatistics:
    depth: int
    capacity: int
    enqueued: int
    dispatched: int
    expired: int
    rejected: int


class DeadlineQueue:
    """Tasks ordered by deadline; finished or expired tasks are never handed out.

    Bounded: ``push`` refuses a task once ``capacity`` tasks wait.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self.enqueued = 0
        self.dispatched = 0
        self.expired = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, task: Task) -> bool:
        """Queue a task; False (and counted as rejected) when the queue is full."""
        if len(self._heap) >= self.capacity:
            self.rejected += 1
            return False
        heapq.heappush(self._heap, (task.deadline, next(self._seq), task))
        self.enqueued += 1
        return True

    def requeue(self, task: Task) -> None:
        """Put back a task that was dispatched (a retry); ignores the bound."""
        heapq.heappush(self._heap, (task.deadline, next(self._seq), task))

    def earliest_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def oldest_enqueued_at(self) -> float | None:
        """When the longest-waiting live task arrived (for delayed batching)."""
        live = [t.enqueued_at for _, _, t in self._heap if not t.done]
        return min(live) if live else None

    def pop_batch(
        self,
        max_size: int,
        now: float,
        horizon: float | None = None,
        *,
        keep_before: float | None = None,
        scan_limit: int | None = None,
    ) -> tuple[list[Task], list[Task]]:
        """Up to ``max_size`` live tasks, earliest deadline first, and the expired
        tasks met on the way (for the caller to answer).

        Tasks already answered or due before ``horizon`` (default ``now``; the
        caller passes now plus the expected batch latency) are dropped here, so
        no model computes a query whose answer would come too late. Under
        overload this keeps the model's time for queries it can still serve.
        Tasks due before ``keep_before`` (but after ``horizon``) stay queued,
        for a faster replica; at most ``scan_limit`` of them are looked at.
        """
        cutoff = now if horizon is None else horizon
        batch: list[Task] = []
        expired: list[Task] = []
        heap = self._heap
        if keep_before is None or keep_before <= cutoff:
            while heap and len(batch) < max_size:
                _, _, task = heapq.heappop(heap)
                if task.done:
                    continue
                if task.deadline <= cutoff:
                    self.expired += 1
                    expired.append(task)
                    continue
                batch.append(task)
        else:
            limit = len(heap) if scan_limit is None else scan_limit
            kept: list[tuple[float, int, Task]] = []
            while heap and len(batch) < max_size:
                entry = heapq.heappop(heap)
                task = entry[2]
                if task.done:
                    continue
                if task.deadline <= cutoff:
                    self.expired += 1
                    expired.append(task)
                elif task.deadline <= keep_before:
                    kept.append(entry)
                    if len(kept) >= limit:
                        break
                else:
                    batch.append(task)
            for entry in kept:
                heapq.heappush(heap, entry)
        self.dispatched += len(batch)
        return batch, expired

    def pop_latest(self, horizon: float) -> Task | None:
        """The live task due last, removed from the queue, if it is due after
        ``horizon``; else None (and the queue is left as it is).

        For a replica that tries whether it has become faster: it takes the
        query with the most time to spare, and leaves the urgent ones to the
        replicas known to be fast. A scan of the whole queue (it happens at
        most once a second per such replica).
        """
        heap = self._heap
        best = -1
        for i, (deadline, _, task) in enumerate(heap):
            if not task.done and deadline > horizon and (best < 0 or heap[i] > heap[best]):
                best = i
        if best < 0:
            return None
        task = heap[best][2]
        last = heap.pop()
        if best < len(heap):
            heap[best] = last
            heapq.heapify(heap)
        self.dispatched += 1
        return task

    def expire(self, now: float) -> list[Task]:
        """Remove and return the tasks whose deadline has passed."""
        out = []
        heap = self._heap
        while heap and (heap[0][0] <= now or heap[0][2].done):
            _, _, task = heapq.heappop(heap)
            if not task.done:
                self.expired += 1
                out.append(task)
        return out

    def drain(self) -> list[Task]:
        tasks = [t for _, _, t in self._heap]
        self._heap.clear()
        return tasks

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            len(self._heap),
            self.capacity,
            self.enqueued,
            self.dispatched,
            self.expired,
            self.rejected,
        )
