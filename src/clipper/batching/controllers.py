"""Batch-size controllers: how many queued tasks a replica takes at once.

Pure classes, no I/O: the dispatcher asks ``max_batch_size()`` before it
takes a batch and reports each batch's size and latency to ``observe()``.
Adaptive controllers (AIMD, quantile regression) implement the same
interface.
"""

from __future__ import annotations

from typing import Protocol


class BatchSizeController(Protocol):
    def max_batch_size(self) -> int: ...

    def observe(self, batch_size: int, latency_s: float) -> None: ...


class FixedBatchSize:
    """A fixed maximum batch size."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        self.size = size

    def max_batch_size(self) -> int:
        return self.size

    def observe(self, batch_size: int, latency_s: float) -> None:
        pass
