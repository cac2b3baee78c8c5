"""The prediction cache in front of a model's queue, with request coalescing.

A query whose output is cached is answered at once. A query identical to one
already being computed (same model version, same input) attaches to that
computation's future instead of being computed twice, as long as that
computation can still answer in time: one stuck past its deadline must not
capture later queries. A pending entry lives exactly as long as its future;
when the future resolves with an output (late or not) the output enters the
cache, and an error never does. The futures are the caller's (the
dispatcher's); they resolve to an ``Outcome`` and never to an exception.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from typing import Any

from ..types import ModelId, Outcome
from .prediction_cache import CacheKey, PredictionCache, input_digest


class Coalescer:
    """The cache's lookups and the computations in progress, by cache key."""

    def __init__(self, cache: PredictionCache) -> None:
        self.cache = cache
        self._pending: dict[CacheKey, tuple[asyncio.Future[Outcome], float]] = {}
        # Queries attached to a pending computation, per model version.
        self.coalesced: Counter[ModelId] = Counter()

    def __len__(self) -> int:
        """How many computations are pending."""
        return len(self._pending)

    def find(
        self, model: ModelId, input: Any, now: float
    ) -> tuple[CacheKey, asyncio.Future[Outcome] | None]:
        """The input's key, and a future that answers it without a new
        computation: a resolved one on a cache hit, a pending computation's
        when one due after ``now`` exists; else None."""
        key = (model.name, model.version, input_digest(input))
        hit, output = self.cache.get(key)
        if hit:
            done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            done.set_result(Outcome(output=output))
            return key, done
        pending = self._pending.get(key)
        if pending is not None and pending[1] > now:
            self.coalesced[model] += 1
            return key, pending[0]
        return key, None

    def track(self, key: CacheKey, future: asyncio.Future[Outcome], deadline: float) -> None:
        """A new computation for ``key``, due by ``deadline``: later identical
        queries attach to it until it resolves, and its output is cached."""
        self._pending[key] = (future, deadline)
        future.add_done_callback(functools.partial(self._settle, key))

    def _settle(self, key: CacheKey, future: asyncio.Future[Outcome]) -> None:
        pending = self._pending.get(key)
        if pending is not None and pending[0] is future:
            del self._pending[key]
        outcome = future.result()
        if outcome.ok:
            self.cache.put(key, outcome.output)
