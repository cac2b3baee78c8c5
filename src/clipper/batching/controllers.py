"""Batch-size controllers: how many queued tasks a replica takes at once.

Pure classes, no I/O and no clock: the dispatcher asks ``max_batch_size()``
before it takes a batch and reports each batch's size and latency to
``observe()``, with how many tasks were left waiting in the queue when the
batch came back. Three policies, as in the paper:

- ``FixedBatchSize``: a fixed maximum.
- ``AIMDController``: additive increase while batches finish well inside the
  latency target, multiplicative decrease when one misses it.
- ``QuantileRegressionController``: fits the p99 latency as a line in the
  batch size and picks the largest size whose predicted p99 fits.

None of them pads a batch: a batch is what the queue holds, up to the max.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ControllerStatistics:
    policy: str
    max_batch_size: int
    observed_batches: int


class BatchSizeController(Protocol):
    def max_batch_size(self) -> int: ...

    def observe(self, batch_size: int, latency_s: float, waiting: int = 0) -> None: ...

    def set_target(self, latency_s: float) -> None: ...

    def statistics(self) -> ControllerStatistics: ...


class FixedBatchSize:
    """A fixed maximum batch size."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        self.size = size
        self.observed = 0

    def max_batch_size(self) -> int:
        return self.size

    def observe(self, batch_size: int, latency_s: float, waiting: int = 0) -> None:
        self.observed += 1

    def set_target(self, latency_s: float) -> None:
        pass

    def statistics(self) -> ControllerStatistics:
        return ControllerStatistics("fixed", self.size, self.observed)


class AIMDController:
    """Additive-increase, multiplicative-decrease of the maximum batch size.

    The paper-era rule, with its defaults: a batch faster than ``band`` (90 %)
    of the target adds ``step`` (2); between 90 % and 100 % holds; slower than
    the target multiplies by ``backoff`` (0.9). The size stays within
    ``[1, ceiling]``. It only grows when a batch actually filled the current
    maximum, or when a full batch's worth of queries still waited as it came
    back (the cost curve may send fewer than the maximum, on a model whose
    small batches cost more per query than single calls; without this the
    maximum stayed at 2 for good after an overload backed it off, the curve
    sent batches of 1, and the heavy MLP's goodput fell to a third), so a
    light load does not inflate it without evidence.
    """

    def __init__(
        self,
        target_s: float,
        *,
        initial: int = 1,
        step: int = 2,
        band: float = 0.9,
        backoff: float = 0.9,
        ceiling: int = 1024,
    ) -> None:
        if not 0 < band <= 1 or not 0 < backoff < 1 or step < 1 or ceiling < 1:
            raise ValueError("AIMD needs 0 < band <= 1, 0 < backoff < 1, step >= 1, ceiling >= 1")
        self.target_s = target_s
        self.step = step
        self.band = band
        self.backoff = backoff
        self.ceiling = ceiling
        self.size = max(1, min(initial, ceiling))
        self.observed = 0

    def max_batch_size(self) -> int:
        return self.size

    def set_target(self, latency_s: float) -> None:
        self.target_s = latency_s

    def observe(self, batch_size: int, latency_s: float, waiting: int = 0) -> None:
        self.observed += 1
        if latency_s > self.target_s:
            self.size = max(1, min(self.size - 1, math.floor(self.size * self.backoff)))
        elif latency_s < self.band * self.target_s and (
            batch_size >= self.size or waiting >= self.size
        ):
            self.size = min(self.ceiling, self.size + self.step)

    def statistics(self) -> ControllerStatistics:
        return ControllerStatistics("aimd", self.size, self.observed)


class QuantileRegressionController:
    """Largest batch size whose predicted p99 latency fits the target.

    Keeps a window of (batch size, latency) samples, takes the empirical
    ``quantile`` of latency per batch size, and fits ``latency = a + b·size``
    through those points by weighted least squares (refitted every
    ``refit_every`` batches, to keep the hot path cheap). Until one size has
    enough samples it explores upward by doubling; with one size measured it
    guesses latency proportional to size, but tries at least the next size
    while the measured one fits (a slope needs two). It grows at most
    ``explore`` per refit. Only a batch that misses the target cuts the size
    (at once); a refit never does: at a size whose p99 is over the target,
    the misses themselves cut it.

    A backlog (a full batch, and more tasks waiting when it came back than
    the size allows) grows the size by one per batch that meets the target,
    whatever the fit says: queries then wait a whole batch or more
    anyway, and only a larger batch drains the queue. Without it, a cold
    start under overload could stay small for good: when the frontend and
    the model share a core, the overload itself slows every small batch
    (the frontend's work runs in between), so their p99 missed the target
    and the fit never allowed more (on the benchmark's large MLP at 2,400
    queries/s: size 3 and 80 % of queries expired, where AIMD settled near
    30).
    """

    def __init__(
        self,
        target_s: float,
        *,
        quantile: float = 0.99,
        window: int = 2000,
        min_samples: int = 5,
        explore: int = 4,
        ceiling: int = 1024,
        refit_every: int = 10,
    ) -> None:
        self.target_s = target_s
        self.refit_every = refit_every
        self.quantile = quantile
        self.window = window
        self.samples: deque[tuple[int, float]] = deque()  # the window, oldest first
        # The window's latencies by batch size, and each size's quantile as of
        # the last fit (recomputed only for sizes whose samples changed since).
        self.by_size: dict[int, deque[float]] = {}
        self.quantiles: dict[int, float] = {}
        self.changed: set[int] = set()
        self.min_samples = min_samples
        self.explore = explore
        self.ceiling = ceiling
        self.size = 1
        self.observed = 0
        self.sizes_measured: list[int] = []  # with enough samples, at the last fit

    def max_batch_size(self) -> int:
        return self.size

    def set_target(self, latency_s: float) -> None:
        self.target_s = latency_s

    def fit(self) -> tuple[float, float] | None:
        """(intercept, slope) of the quantile line, or None without enough data.

        Cheap enough for the event loop: the samples are kept grouped by size
        as they come, and only sizes with new or evicted samples since the
        last fit have their quantile recomputed (a sort of a few hundred
        floats; ``numpy.quantile`` costs 30 µs a call in overhead alone, and
        the whole fit took 0.6 ms when it regrouped the window each time).
        """
        for size in self.changed:
            latencies = self.by_size.get(size)
            if latencies is None or len(latencies) < self.min_samples:
                self.quantiles.pop(size, None)
            else:
                self.quantiles[size] = _quantile(sorted(latencies), self.quantile)
        self.changed.clear()
        self.sizes_measured = sorted(self.quantiles)
        if not self.quantiles:
            return None
        if len(self.quantiles) == 1:
            # One size measured: assume latency proportional to size (cautious).
            ((size, p99),) = self.quantiles.items()
            return 0.0, p99 / size
        # Least squares, each size weighted by its number of samples.
        points = [(x, y, len(self.by_size[x])) for x, y in self.quantiles.items()]
        total = sum(w for _, _, w in points)
        mean_x = sum(w * x for x, _, w in points) / total
        mean_y = sum(w * y for _, y, w in points) / total
        sxx = sum(w * (x - mean_x) ** 2 for x, _, w in points)
        sxy = sum(w * (x - mean_x) * (y - mean_y) for x, y, w in points)
        slope = sxy / sxx if sxx > 0 else 0.0
        return mean_y - slope * mean_x, max(slope, 0.0)

    def observe(self, batch_size: int, latency_s: float, waiting: int = 0) -> None:
        self.observed += 1
        self.samples.append((batch_size, latency_s))
        self.by_size.setdefault(batch_size, deque()).append(latency_s)
        self.changed.add(batch_size)
        if len(self.samples) > self.window:
            old, _ = self.samples.popleft()
            evicted = self.by_size[old]
            evicted.popleft()  # the oldest of the window is the oldest of its size
            if not evicted:
                del self.by_size[old]
            self.changed.add(old)
        if latency_s > self.target_s:
            # A miss: back off now rather than wait for the next fit.
            self.size = max(1, min(self.size, math.floor(batch_size * 0.9)))
            return
        if waiting > self.size and batch_size >= self.size:
            # A backlog: grow now, whatever the fit says (see the docstring).
            self.size = min(self.ceiling, self.size + 1)
        if self.observed % self.refit_every:
            return
        line = self.fit()
        if line is None:
            if batch_size >= self.size:
                self.size = min(self.ceiling, self.size * 2)
            return
        intercept, slope = line
        best = self.ceiling if slope <= 0 else math.floor((self.target_s - intercept) / slope)
        if len(self.sizes_measured) == 1 and best >= self.sizes_measured[0]:
            # One size cannot show a slope, and the line through the origin is
            # only a guess: with a large fixed cost per batch (a random forest)
            # it says the next size would miss, and the size would stay put
            # for good. The measured size fits: try one more at least.
            best = max(best, self.sizes_measured[0] + 1)
        self.size = max(self.size, min(self.ceiling, best, self.size + self.explore))

    def statistics(self) -> ControllerStatistics:
        return ControllerStatistics("quantile", self.size, self.observed)


class BatchCostCurve:
    """What a batch costs per query, by size; picks the cheapest size on offer.

    The controllers above bound the batch size by latency; they assume a
    bigger batch is never worse per query. It can be: with a large float32
    network on OpenBLAS a batch of 2 took four times a batch of 1 on our
    benchmark machine, and only batches of 8 and more beat single calls. With
    ``queued`` tasks waiting and a cap from the controller, ``choose`` returns
    the size (``queued`` itself, or a power of two below it) with the lowest
    measured time per query. A size class measured fewer than ``explore``
    times is tried first (the offered size, then smaller classes one by one),
    so the curve is learnt from real batches at the cost of a few of them.
    Sizes are grouped by powers of two (1, 2, 3-4, 5-8, ...); each group keeps
    an exponentially weighted mean, so the curve follows a model whose cost
    drifts.
    """

    def __init__(self, *, explore: int = 3, weight: float = 0.2) -> None:
        self.explore = explore
        self.weight = weight
        self.cost: dict[int, float] = {}  # size class -> seconds per query
        self.count: dict[int, int] = {}

    @staticmethod
    def size_class(size: int) -> int:
        return (size - 1).bit_length()  # 1 -> 0, 2 -> 1, 3-4 -> 2, 5-8 -> 3, ...

    def observe(self, batch_size: int, latency_s: float) -> None:
        if batch_size < 1 or latency_s < 0:
            return
        k = self.size_class(batch_size)
        per_query = latency_s / batch_size
        seen = self.count.get(k, 0)
        old = self.cost.get(k)
        self.cost[k] = per_query if old is None else old + self.weight * (per_query - old)
        self.count[k] = seen + 1

    def batch_latency(self, size: int) -> float | None:
        """What a batch of ``size`` takes by the curve (its size class's cost per
        query times ``size``), or None while that class is measured fewer than
        ``explore`` times."""
        k = self.size_class(size)
        if size < 1 or self.count.get(k, 0) < self.explore:
            return None
        return self.cost[k] * size

    def choose(self, queued: int, cap: int) -> int:
        """How many of ``queued`` tasks to send now, at most ``cap``."""
        offer = min(queued, cap)
        if offer <= 1:
            return max(offer, 1)
        top = self.size_class(offer)
        if self.count.get(top, 0) < self.explore:
            return offer  # not known yet: try it
        for k in range(top - 1, -1, -1):
            if self.count.get(k, 0) < self.explore:
                return 1 << k  # a smaller size not known yet: try it too
        best, best_cost = offer, self.cost[top]
        for k in range(top - 1, -1, -1):
            if self.cost[k] < best_cost:
                best, best_cost = 1 << k, self.cost[k]
        return best

    def curve(self) -> dict[str, float]:
        """Milliseconds per query by size class, e.g. ``{"3-4": 0.8}``."""
        out = {}
        for k in sorted(self.cost):
            low, high = (1 << (k - 1)) + 1 if k else 1, 1 << k
            out[str(high) if low == high else f"{low}-{high}"] = round(self.cost[k] * 1e3, 4)
        return out


def _quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, interpolated linearly between the two
    nearest (``numpy.quantile``'s default method)."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
