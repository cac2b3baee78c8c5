"""Rollouts' pure logic: which version answers a query, and when the judge decides.

No I/O, no asyncio, no clocks: times and random sources are arguments, and
the evidence is plain data that round-trips through JSON (the runtime,
:mod:`clipper.selection.rollouts`, saves it in the config store every few
seconds so the judge's figures survive a restart).

Who sees the new version
  * ``canary``: a query with a ``uid`` goes to the new version when the uid's
    stable bucket (blake2b of model and uid, never Python's salted ``hash()``)
    falls below the share in force (``fraction``, then the ``steps``), so one
    user sees one version, and raising the share only adds users. A query
    without a uid draws at random.
  * ``bandit``: the same assignment, but the share moves with the evidence:
    ``fraction`` until each version has :data:`ALLOCATION_MIN_FEEDBACK` labels,
    then P(new better) (probability matching, as Thompson sampling does),
    held between ``fraction`` and one half. Half is where a two-arm test
    decides fastest; more would expose users to an unproven version for no
    faster decision. A worse new version sinks back to ``fraction``.
  * ``shadow``: the base version answers every query; ``fraction`` of them
    are also sent to the new version, after the answer (the runtime's rule).

The judge (what a bandit rollout acts on; the other modes report it)
  Each feedback label scores the version that answered that query: accuracy
  ``1 - loss`` per version (the app's policy's loss, in [0, 1]). The test is
  a mixture sequential probability ratio test (mSPRT; Johari, Pekelis and
  Walsh, "Always valid inference", 2017) on the difference of the two
  accuracies, with the normal approximation and plug-in variances: its
  likelihood ratio against "no difference" is, with ``V`` the variance of the
  observed difference ``d`` and ``tau`` the mixing scale,
  ``sqrt(V / (V + tau²)) * exp(d² tau² / (2 V (V + tau²)))``,
  and it decides once that reaches ``1 / (1 - confidence)``. The point of this
  test: it may be checked after every label, for ever, and the chance that it
  ever decides between two equal versions stays at most ``1 - confidence``
  (5 % by default; a posterior checked after every label would not hold
  that). It promotes when the new version is better, and rolls back when
  it is worse by more than ``max_loss_increase``. It needs ``min_feedback``
  labels per version first. ``bench/rollout.py`` measures how many labels a
  decision takes and how often it is wrong (docs/benchmarks.md).

  Guards that do not wait for labels roll back when the new version's error
  rate or SLO-miss rate is above its limit with the same confidence (the
  lower end of the Wilson interval above the limit).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from ..types import RolloutSpec

# A bandit rollout's limits when the user gives none (docs/howto/rollout.md).
LIMIT_DEFAULTS: dict[str, float] = {
    "confidence": 0.95,  # 1 - the chance of ever deciding between equal versions
    "max_error_rate": 0.05,  # of the new version's queries
    "max_slo_miss_rate": 0.05,
    "max_loss_increase": 0.0,  # roll back when worse by more than this (accuracy points / 100)
    "min_feedback": 100.0,  # labels per version before the test may decide
}
# The mSPRT's mixing scale: the size of difference it is tuned to find fastest
# (two accuracy points; smaller and larger ones are found too, a little later).
MIXING_SCALE = 0.02
# Labels per version before a bandit's share follows the evidence.
ALLOCATION_MIN_FEEDBACK = 20
# Latencies kept per version for percentiles (the most recent ones).
LATENCY_WINDOW = 512
# Queries the guards (error, SLO-miss rates) need before they may act.
GUARD_MIN_QUERIES = 20

_NORMAL = NormalDist()


def limits_of(spec: RolloutSpec) -> dict[str, float]:
    """The spec's limits with the defaults filled in."""
    return {**LIMIT_DEFAULTS, **{k: float(v) for k, v in spec.limits.items()}}


# -- who sees the new version -------------------------------------------------------


def bucket(model: str, uid: str) -> float:
    """A uid's stable place in [0, 1) for ``model``: the same on every frontend, in
    every run (blake2b; a different model shuffles users afresh)."""
    digest = hashlib.blake2b(f"{model}\x00{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def new_share(spec: RolloutSpec, evidence: Evidence | None, unix_now: float) -> float:
    """The share of queries the new version answers now (0 for shadow)."""
    if spec.mode == "shadow":
        return 0.0
    if spec.mode == "canary":
        return spec.fraction_at(unix_now)
    if evidence is None or min(evidence.base.feedback, evidence.new.feedback) < (
        ALLOCATION_MIN_FEEDBACK
    ):
        return spec.fraction
    floor = min(spec.fraction, 0.5)
    return min(0.5, max(floor, p_new_better(evidence.base, evidence.new)))


def answers_with_new(share: float, model: str, uid: str | None, rng: random.Random) -> bool:
    """Whether a query (of user ``uid``, if any) is answered by the new version."""
    if share <= 0.0:
        return False
    if uid:
        return bucket(model, uid) < share
    return rng.random() < share


def mirrored(spec: RolloutSpec, rng: random.Random) -> bool:
    """Whether a shadow rollout copies this query to the new version."""
    return spec.fraction >= 1.0 or rng.random() < spec.fraction


# -- evidence -------------------------------------------------------------------------


@dataclass(slots=True)
class VersionFigures:
    """What one version of a rollout did: queries, failures, latencies, labels."""

    queries: int = 0  # answered (or, for shadow's new version, sent a copy)
    errors: int = 0  # the model failed (raised, bad result, replica lost)
    slo_misses: int = 0  # no output by the deadline
    feedback: int = 0  # labels scored against its output
    loss_sum: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def observe(self, latency_s: float | None, *, error: bool = False) -> None:
        """One query's fate: its latency when it had an output, None for an SLO miss."""
        self.queries += 1
        if error:
            self.errors += 1
        elif latency_s is None:
            self.slo_misses += 1
        else:
            self.latencies.append(latency_s)

    def observe_loss(self, loss: float) -> None:
        self.feedback += 1
        self.loss_sum += min(1.0, max(0.0, loss))

    @property
    def accuracy(self) -> float | None:
        return 1.0 - self.loss_sum / self.feedback if self.feedback else None

    def rate(self, count: int) -> float | None:
        return count / self.queries if self.queries else None

    def latency_quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def to_record(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "errors": self.errors,
            "slo_misses": self.slo_misses,
            "feedback": self.feedback,
            "loss_sum": self.loss_sum,
            "latencies": [round(x, 6) for x in self.latencies],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> VersionFigures:
        return cls(
            int(record.get("queries", 0)),
            int(record.get("errors", 0)),
            int(record.get("slo_misses", 0)),
            int(record.get("feedback", 0)),
            float(record.get("loss_sum", 0.0)),
            deque((float(x) for x in record.get("latencies", ())), maxlen=LATENCY_WINDOW),
        )

    def figures(self) -> dict[str, Any]:
        """What a person reads (``rollout_report``, ``clipper rollouts``)."""
        p50, p99 = self.latency_quantile(0.5), self.latency_quantile(0.99)
        return {
            "queries": self.queries,
            "errors": self.errors,
            "error_rate": self.rate(self.errors),
            "slo_misses": self.slo_misses,
            "slo_miss_rate": self.rate(self.slo_misses),
            "feedback": self.feedback,
            "accuracy": self.accuracy,
            "mean_loss": None if not self.feedback else self.loss_sum / self.feedback,
            "latency_p50_ms": None if p50 is None else round(p50 * 1e3, 3),
            "latency_p99_ms": None if p99 is None else round(p99 * 1e3, 3),
        }


@dataclass(slots=True)
class Evidence:
    """Everything a rollout has seen: per version, and (shadow) side by side."""

    base: VersionFigures = field(default_factory=VersionFigures)
    new: VersionFigures = field(default_factory=VersionFigures)
    shadow_dropped: int = 0  # copies not sent: the new version was busy
    compared: int = 0  # shadow copies whose two outputs were both there
    agreed: int = 0  # ... and equal
    paired: int = 0  # labels with both versions' outputs (shadow)
    paired_loss_base: float = 0.0
    paired_loss_new: float = 0.0

    def observe_pair(self, base_loss: float, new_loss: float) -> None:
        """One label scored against both versions' outputs for the same input."""
        self.paired += 1
        self.paired_loss_base += min(1.0, max(0.0, base_loss))
        self.paired_loss_new += min(1.0, max(0.0, new_loss))

    def to_record(self) -> dict[str, Any]:
        return {
            "base": self.base.to_record(),
            "new": self.new.to_record(),
            "shadow_dropped": self.shadow_dropped,
            "compared": self.compared,
            "agreed": self.agreed,
            "paired": self.paired,
            "paired_loss_base": self.paired_loss_base,
            "paired_loss_new": self.paired_loss_new,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Evidence:
        """Evidence from what the store kept (a malformed record: ValueError,
        KeyError or TypeError; the runtime then starts afresh)."""
        return cls(
            VersionFigures.from_record(record.get("base") or {}),
            VersionFigures.from_record(record.get("new") or {}),
            int(record.get("shadow_dropped", 0)),
            int(record.get("compared", 0)),
            int(record.get("agreed", 0)),
            int(record.get("paired", 0)),
            float(record.get("paired_loss_base", 0.0)),
            float(record.get("paired_loss_new", 0.0)),
        )


# -- the judge ------------------------------------------------------------------------


def _beta_moments(v: VersionFigures) -> tuple[float, float]:
    """Mean and variance of the accuracy's Beta(1 + hits, 1 + misses) posterior."""
    a = 1.0 + v.feedback - v.loss_sum
    b = 1.0 + v.loss_sum
    n = a + b
    return a / n, a * b / (n * n * (n + 1.0))


def p_new_better(base: VersionFigures, new: VersionFigures) -> float:
    """P(the new version's accuracy > the base's), from Beta posteriors (uniform
    priors) in the normal approximation: a figure for people and the bandit's
    share, not a decision rule (see :func:`judge`)."""
    mb, vb = _beta_moments(base)
    mn, vn = _beta_moments(new)
    return _NORMAL.cdf((mn - mb) / math.sqrt(vb + vn))


def _difference(base: VersionFigures, new: VersionFigures) -> tuple[float, float]:
    """The observed accuracy difference (new - base) and its variance."""
    pb = 1.0 - base.loss_sum / base.feedback
    pn = 1.0 - new.loss_sum / new.feedback
    # Plug-in Bernoulli variances, kept off zero so a perfect run still has spread.
    var = max(pb * (1 - pb), 0.0025) / base.feedback + max(pn * (1 - pn), 0.0025) / new.feedback
    return pn - pb, var


def log_likelihood_ratio(difference: float, variance: float, tau: float = MIXING_SCALE) -> float:
    """The mSPRT's log likelihood ratio for an observed difference (see the module)."""
    t2 = tau * tau
    return 0.5 * math.log(variance / (variance + t2)) + (
        difference * difference * t2 / (2.0 * variance * (variance + t2))
    )


def wilson_lower(count: int, n: int, z: float) -> float:
    """The lower end of the Wilson score interval for a rate of ``count`` in ``n``."""
    if n == 0:
        return 0.0
    p = count / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


@dataclass(frozen=True, slots=True)
class Decision:
    """The judge's verdict: promote (the new version becomes current) or roll back."""

    promote: bool
    reason: str  # one line with the figures behind it, for the log and the store
    figures: dict[str, float]


def judge(spec: RolloutSpec, evidence: Evidence) -> Decision | None:
    """Promote, roll back, or None (keep watching). Pure: the caller acts."""
    limits = limits_of(spec)
    confidence = limits["confidence"]
    new, base = evidence.new, evidence.base
    z = _NORMAL.inv_cdf(confidence)
    for count, limit, what in (
        (new.errors, limits["max_error_rate"], "error rate"),
        (new.slo_misses, limits["max_slo_miss_rate"], "SLO-miss rate"),
    ):
        if new.queries >= GUARD_MIN_QUERIES and wilson_lower(count, new.queries, z) > limit:
            rate = count / new.queries
            figures = {"rate": rate, "limit": limit, "queries": float(new.queries)}
            return Decision(
                False,
                f"the new version's {what} {rate:.3f} ({count} of {new.queries} queries) "
                f"is above the limit {limit:g} with confidence {confidence:g}",
                figures,
            )
    least = max(1, int(limits["min_feedback"]))
    if base.feedback < least or new.feedback < least:
        return None
    diff, var = _difference(base, new)
    threshold = math.log(1.0 / (1.0 - confidence))
    figures = {
        "accuracy_base": 1.0 - base.loss_sum / base.feedback,
        "accuracy_new": 1.0 - new.loss_sum / new.feedback,
        "feedback_base": float(base.feedback),
        "feedback_new": float(new.feedback),
        "p_new_better": p_new_better(base, new),
        "threshold": threshold,
    }
    said = (
        f"accuracy new {figures['accuracy_new']:.4f} vs base {figures['accuracy_base']:.4f} "
        f"over {new.feedback} + {base.feedback} labels, P(new better) "
        f"{figures['p_new_better']:.3f}"
    )
    promote_llr = log_likelihood_ratio(diff, var)
    if diff > 0 and promote_llr >= threshold:
        figures["log_likelihood_ratio"] = promote_llr
        return Decision(
            True,
            f"the new version is better: {said}; sequential test log-LR {promote_llr:.2f} "
            f">= {threshold:.2f} (confidence {confidence:g})",
            figures,
        )
    shifted = diff + limits["max_loss_increase"]
    rollback_llr = log_likelihood_ratio(shifted, var)
    if shifted < 0 and rollback_llr >= threshold:
        figures["log_likelihood_ratio"] = rollback_llr
        return Decision(
            False,
            f"the new version is worse by more than {limits['max_loss_increase']:g}: {said}; "
            f"sequential test log-LR {rollback_llr:.2f} >= {threshold:.2f} "
            f"(confidence {confidence:g})",
            figures,
        )
    return None


def report(spec: RolloutSpec, evidence: Evidence, share: float) -> dict[str, Any]:
    """The live figures of a rollout (``service.rollout_report``)."""
    out: dict[str, Any] = {
        "mode": spec.mode,
        "new_share": share,
        "base": {"version": spec.base_version, **evidence.base.figures()},
        "new": {"version": spec.new_version, **evidence.new.figures()},
    }
    if spec.mode == "shadow":
        out["shadow"] = {
            "compared": evidence.compared,
            "agreement": evidence.agreed / evidence.compared if evidence.compared else None,
            "dropped": evidence.shadow_dropped,
            "paired_feedback": evidence.paired,
            "paired_loss_base": (
                evidence.paired_loss_base / evidence.paired if evidence.paired else None
            ),
            "paired_loss_new": (
                evidence.paired_loss_new / evidence.paired if evidence.paired else None
            ),
        }
    else:
        both = evidence.base.feedback and evidence.new.feedback
        out["p_new_better"] = p_new_better(evidence.base, evidence.new) if both else None
        if spec.mode == "bandit":
            out["limits"] = limits_of(spec)
    return out
