"""One log line when a model starts shedding load, and one when it stops (no I/O but logging).

Shedding at arrival (``ModelState.capacity_within``) answers at once a query
the queue ahead of it would make late; under a load spike that happens
thousands of times a second, so the log says it once per episode: a WARNING
when a model version starts (with the rate over the last sample), an INFO
when it has shed nothing for ``quiet_s`` (with the episode's length, total
and peak rate). The metrics sampler feeds it once a second.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from .types import ModelId

log = logging.getLogger("clipper.overload")

QUIET_S = 10.0  # shedding nothing this long ends an episode


@dataclass
class _Episode:
    started: float
    last_shed_at: float
    shed: int = 0
    peak_rate: float = 0.0


class ShedLog:
    """Tracks each model version's shed counter and logs episodes."""

    def __init__(self, quiet_s: float = QUIET_S) -> None:
        self.quiet_s = quiet_s
        self._seen: dict[ModelId, tuple[float, int]] = {}  # (time, shed counter)
        self._episodes: dict[ModelId, _Episode] = {}

    def shedding(self) -> list[ModelId]:
        """The model versions in an episode now."""
        return list(self._episodes)

    def observe(self, now: float, counters: Iterable[tuple[ModelId, int]]) -> None:
        """Each model version's cumulative shed count at ``now``."""
        present = set()
        for model, total in counters:
            present.add(model)
            then, before = self._seen.get(model, (now, total))
            self._seen[model] = (now, total)
            fresh = max(0, total - before)
            episode = self._episodes.get(model)
            if fresh:
                rate = fresh / (now - then) if now > then else float(fresh)
                if episode is None:
                    episode = self._episodes[model] = _Episode(now, now)
                    log.warning(
                        "overload: model %s is shedding load: %.0f queries/s answered at "
                        "arrival (the queries queued ahead of them fill what its replicas "
                        "can compute within the SLO)",
                        model,
                        rate,
                    )
                episode.shed += fresh
                episode.last_shed_at = now
                episode.peak_rate = max(episode.peak_rate, rate)
            elif episode is not None and now - episode.last_shed_at >= self.quiet_s:
                self._end(model, episode)
        for model in list(self._seen.keys() - present):  # a version deleted
            del self._seen[model]
            episode = self._episodes.get(model)
            if episode is not None:
                self._end(model, episode)

    def _end(self, model: ModelId, episode: _Episode) -> None:
        del self._episodes[model]
        log.info(
            "overload: model %s stopped shedding after %.0f s: %d queries shed, peak %.0f/s",
            model,
            episode.last_shed_at - episode.started,
            episode.shed,
            episode.peak_rate,
        )
