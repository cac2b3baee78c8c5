"""A replica's batch latency estimate, and when it tries a batch it looks too slow for (pure).

The dispatcher keeps one per replica: replicas of a model may run on
different hardware, so a slow one must neither make a fast one refuse
queries it could answer in time nor take queries only a faster one can
finish by their deadline.

- The estimate is the batch latency, exponentially weighted (0.8 old, 0.2
  new), and 0 until the replica has answered twice: its first batch is left
  out, as it often loads the model (an ONNX Runtime session, a JIT warm-up),
  and an estimate seeded by it would refuse the next queries until it had
  halved enough times.
- A replica that left every task to faster replicas (its estimate above
  theirs) takes one anyway once idle ``PROBE_AFTER_S`` (a probe: only a
  batch can tell whether it has become faster), and its estimate starts
  afresh from that batch. Each probe in a row doubles the wait, up to
  ``PROBE_MAX_S``; a batch taken on its merits resets it.
- ``shrink`` halves the estimate: the dispatcher calls it when the estimate
  alone holds every task back while no replica computes (an estimate only
  moves when a batch finishes, and one slow batch must not stop a model for
  good).

No clock: the caller passes the times.
"""

from __future__ import annotations

PROBE_AFTER_S = 1.0
PROBE_MAX_S = 60.0


class LatencyEstimate:
    """One replica's batch latency (seconds) and its probing state."""

    __slots__ = ("answered", "idle_since", "latency", "probe_wait", "probing")

    def __init__(self) -> None:
        self.latency = 0.0  # 0 until the replica has answered twice
        self.answered = False
        self.idle_since = 0.0
        self.probing = False  # its batch in flight was taken despite its estimate
        self.probe_wait = PROBE_AFTER_S

    def observe(self, latency_s: float) -> None:
        """A batch of this replica's came back after ``latency_s``."""
        if not self.answered:
            self.answered = True  # the first: it may have loaded the model
        elif self.latency == 0.0 or self.probing:
            self.latency = latency_s
        else:
            self.latency = 0.8 * self.latency + 0.2 * latency_s
        self.probing = False

    def idle(self, now: float) -> None:
        """The replica has no batch since ``now``."""
        self.idle_since = now

    def may_probe(self, now: float, fastest_s: float) -> bool:
        """Whether this replica, slower than the fastest (``fastest_s``), has
        waited long enough to try a batch anyway."""
        return self.latency > fastest_s and now - self.idle_since >= self.probe_wait

    def probed(self, took: bool) -> None:
        """It tried (``took``: it found a task to probe with)."""
        self.probing = took
        if took:
            self.probe_wait = min(2 * self.probe_wait, PROBE_MAX_S)

    def took_batch(self) -> None:
        """It took a batch on its merits: the next probe waits the least."""
        self.probe_wait = PROBE_AFTER_S

    def shrink(self) -> None:
        self.latency /= 2
