"""An earliest-deadline-first queue of query tasks (pure, no I/O)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Task:
    """One query waiting for one model version."""

    __slots__ = ("deadline", "done", "input", "retries", "sink")

    def __init__(self, input: Any, deadline: float, sink: Callable[[Any], None]) -> None:
        self.input = input
        self.deadline = deadline
        self.sink = sink  # called once with the Outcome
        self.retries = 0
        self.done = False

    def finish(self, outcome: Any) -> None:
        if not self.done:
            self.done = True
            self.sink(outcome)


@dataclass(frozen=True)
class QueueStatistics:
    depth: int
    enqueued: int
    dispatched: int
    expired: int


class DeadlineQueue:
    """Tasks ordered by deadline; finished or expired tasks are never handed out."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self.enqueued = 0
        self.dispatched = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, task: Task) -> None:
        heapq.heappush(self._heap, (task.deadline, next(self._seq), task))
        self.enqueued += 1

    def pop_batch(self, max_size: int, now: float) -> list[Task]:
        """Up to ``max_size`` live tasks, earliest deadline first.

        Tasks already answered (by the deadline path) or past their deadline
        are dropped here, so no model ever computes an expired query.
        """
        batch: list[Task] = []
        heap = self._heap
        while heap and len(batch) < max_size:
            _, _, task = heapq.heappop(heap)
            if task.done or task.deadline <= now:
                self.expired += 1
                continue
            batch.append(task)
        self.dispatched += len(batch)
        return batch

    def drain(self) -> list[Task]:
        tasks = [t for _, _, t in self._heap]
        self._heap.clear()
        return tasks

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(len(self._heap), self.enqueued, self.dispatched, self.expired)
