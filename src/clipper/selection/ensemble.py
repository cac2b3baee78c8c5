"""Exp4's ensemble: the experts whose advice it weighs, and a confidence that is
calibrated from feedback. Pure functions over plain data, like the policies.

The paper's Exp4 weighs *experts*, each giving advice for every query. With
the single models as the only experts the multiplicative weights concentrate
on the best model and the weighted vote becomes that model: the combination
that should beat it never happens. So the experts here are the single models
plus two combinations of them:

- ``vote:plain``: the plain majority vote of the models that answered, ties
  to the more accurate model (the mean for real-valued outputs);
- ``vote:weighted``: a vote weighted by each model's learned accuracy, with
  log-odds weights ``log(p (L - 1) / (1 - p))`` for ``L`` classes, which is the
  optimal weighted majority for independent classifiers (Nitzan & Paroush);
  inverse-loss weights for real-valued outputs.

Hedge's weights over those experts follow their losses, and Exp4 answers
with the leading expert's advice: one model when it dominates, a
combination when that is better.

The confidence an answer carries is calibrated by online histogram binning:
a raw score in [0, 1] (for labels, the posterior probability of the answer
under the log-odds model; for real values, the share of the experts' weight
whose advice is within ``tolerance`` of the answer; before any feedback, the share of the models
that gave the answer) picks one of ``CALIBRATION_BINS`` bins, and the
bin's discounted record of how often such answers were right, shrunk toward
the raw score while it has few observations, is the confidence reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .combine import as_number, canonical_key, combine_weighted, finite_float, is_real_valued

# Model names are lowercase letters, digits, "-", "_" and "." (types.validate_name),
# so a name with a ":" never collides with a model.
VOTE = "vote:plain"
WEIGHTED_VOTE = "vote:weighted"
COMBINERS = (VOTE, WEIGHTED_VOTE)

CALIBRATION_BINS = 10
CALIBRATION_PRIOR = 2.0  # pseudo-observations at the raw score, per bin
CALIBRATION_DISCOUNT = 0.999  # per feedback in a bin: ~1,000 answers of memory
MAX_LABELS = 64  # distinct labels remembered to count the classes, L
_ACCURACY_PRIOR = (1.0, 2.0)  # (right, seen) before any feedback: p = 1/2


def accuracy_of(record: Any) -> float:
    """A model's estimated accuracy (mean reward) from its ``[right, seen]`` record,
    with a uniform prior: ``(right + 1) / (seen + 2)``, always in (0, 1)."""
    right, seen = _pair(record)
    return (right + _ACCURACY_PRIOR[0]) / (seen + _ACCURACY_PRIOR[1])


def _pair(record: Any) -> tuple[float, float]:
    """``[right, seen]`` read back from stored state; (0, 0) when malformed."""
    if isinstance(record, Sequence) and not isinstance(record, str) and len(record) == 2:
        right, seen = finite_float(record[0]), finite_float(record[1])
        if right is not None and seen is not None and 0 <= right <= seen:
            return right, seen
    return 0.0, 0.0


def discounted(record: Any, reward: float, discount: float) -> list[float]:
    """``record`` after one more observation, older ones discounted by ``discount``."""
    right, seen = _pair(record)
    return [right * discount + reward, seen * discount + 1.0]


def class_count(labels: Any) -> int:
    """L, the number of classes, from the distinct labels seen (at least 2)."""
    return max(2, len(labels) if isinstance(labels, list) else 0)


def log_odds_weight(accuracy: float, classes: int) -> float:
    """A model's vote weight: ``log(p (L - 1) / (1 - p))``, floored at 0 (a model
    no better than chance abstains)."""
    return max(0.0, math.log(accuracy * (classes - 1) / (1.0 - accuracy)))


def inverse_loss_weight(accuracy: float) -> float:
    """A real-valued model's weight in the weighted mean: 1 / (mean loss + 0.01)."""
    return 1.0 / (1.0 - accuracy + 0.01)


@dataclass(frozen=True, slots=True)
class Advice:
    """Every expert's advice for one query, from the models that answered."""

    experts: dict[str, Any]  # expert name -> its advice (models in link order, then combiners)
    values: list[Any]  # the models' outputs, in link order
    weights: list[float]  # the weighted vote's weight of each
    real: bool  # real-valued outputs: means, not votes
    classes: int  # L, for the posterior
    informed: bool  # some answering model has feedback behind its accuracy

    def raw_confidence(self, answer: Any, agreement: float) -> float:
        """The raw score of ``answer`` for calibration: for labels, its posterior
        under the independent-classifier model; for real values, ``agreement``
        (the share of the experts' weight within tolerance of it). Before any
        feedback the posterior knows nothing, so labels get the share of the
        answering models that gave ``answer`` instead."""
        if self.real:
            return agreement
        if not self.informed:
            key = canonical_key(answer)
            return sum(canonical_key(v) == key for v in self.values) / len(self.values)
        return posterior(self.values, self.weights, answer, self.classes)


def advice(
    outputs: Sequence[tuple[str, Any]],
    accuracy: Mapping[str, Any],
    labels: Any,
    tolerance: float,
) -> Advice:
    """The experts' advice from ``(model, output)`` pairs in link order: each
    model's output, their plain vote and their accuracy-weighted vote."""
    if not outputs:
        raise ValueError("nothing to combine: no model answered")
    experts: dict[str, Any] = dict(outputs)
    values = [value for _, value in outputs]
    real = is_real_valued(values)
    classes = class_count(labels)
    # Ties go to the more accurate model (link order among equals): with five
    # models and ten classes a 2-2-1 split is common, and the first linked model
    # may be the weakest.
    ranked = sorted(outputs, key=lambda pair: -accuracy_of(accuracy.get(pair[0])))
    experts[VOTE] = combine_weighted([(v, 1.0) for _, v in ranked], tolerance)[0]
    if real:
        weights = [inverse_loss_weight(accuracy_of(accuracy.get(n))) for n, _ in outputs]
    else:
        weights = [log_odds_weight(accuracy_of(accuracy.get(n)), classes) for n, _ in outputs]
    experts[WEIGHTED_VOTE] = combine_weighted(list(zip(values, weights, strict=True)), tolerance)[0]
    informed = any(_pair(accuracy.get(n))[1] > 0 for n, _ in outputs)
    return Advice(experts, values, weights, real, classes, informed)


def agreement(
    values: Sequence[Any], weights: Sequence[float], answer: Any, tolerance: float, real: bool
) -> float:
    """The share of ``weights`` whose value agrees with ``answer``: for real
    values, within ``tolerance`` of it (relatively; absolutely at 0); else equal."""
    total = sum(weights)
    if not total > 0:
        return 0.0
    target = as_number(answer) if real else None
    if target is None:
        key = canonical_key(answer)
        agree = sum(w for v, w in zip(values, weights, strict=True) if canonical_key(v) == key)
    else:
        radius = tolerance * abs(target) if target else tolerance
        numbers = [as_number(v) for v in values]
        agree = sum(
            w
            for x, w in zip(numbers, weights, strict=True)
            if x is not None and abs(x - target) <= radius
        )
    return min(1.0, agree / total)


def posterior(values: Sequence[Any], weights: Sequence[float], answer: Any, classes: int) -> float:
    """P(answer is right | the votes) for independent classifiers with log-odds
    weights: ``exp(S_answer) / (sum over voted classes of exp(S_c) + unvoted)``,
    where ``S_c`` sums the weights of the models voting ``c`` and each of the
    ``L`` classes nobody voted for scores ``exp(0)``."""
    scores: dict[str, float] = {}
    for value, weight in zip(values, weights, strict=True):
        key = canonical_key(value)
        scores[key] = scores.get(key, 0.0) + weight
    top = max(scores.values())
    unvoted = max(0, classes - len(scores))
    total = sum(math.exp(s - top) for s in scores.values()) + unvoted * math.exp(-top)
    return math.exp(scores.get(canonical_key(answer), 0.0) - top) / total


def remember_label(labels: Any, label: Any) -> list[str]:
    """The distinct labels seen, with ``label`` added (at most ``MAX_LABELS``)."""
    seen = [x for x in labels if isinstance(x, str)] if isinstance(labels, list) else []
    number = as_number(label)  # "3" and 3 are one label, as the loss compares them
    key = canonical_key(label if number is None else number)
    if key not in seen and len(seen) < MAX_LABELS:
        seen.append(key)
    return seen


def calibration_bin(raw: float) -> int:
    """The bin of a raw score in [0, 1]."""
    return min(CALIBRATION_BINS - 1, max(0, int(raw * CALIBRATION_BINS)))


def calibrated(bins: Any, raw: float) -> float:
    """The confidence to report for a raw score: its bin's discounted share of
    right answers, shrunk toward ``raw`` by ``CALIBRATION_PRIOR`` pseudo-observations."""
    raw = min(1.0, max(0.0, raw))
    record = (
        bins[calibration_bin(raw)]
        if isinstance(bins, list) and len(bins) == CALIBRATION_BINS
        else None
    )
    right, seen = _pair(record)
    return (right + CALIBRATION_PRIOR * raw) / (seen + CALIBRATION_PRIOR)


def calibration_update(bins: Any, raw: float, reward: float) -> list[list[float]]:
    """The bins after one answer with raw score ``raw`` was scored ``reward`` (1 right)."""
    if isinstance(bins, list) and len(bins) == CALIBRATION_BINS:
        new = [list(_pair(b)) for b in bins]
    else:
        new = [[0.0, 0.0] for _ in range(CALIBRATION_BINS)]
    i = calibration_bin(min(1.0, max(0.0, raw)))
    new[i] = discounted(new[i], reward, CALIBRATION_DISCOUNT)
    return new


def expected_calibration_error(
    confidences: Sequence[float], rewards: Sequence[float], bins: int = 10
) -> float:
    """ECE: over equal-width confidence bins, the answer-weighted mean of
    |share right - mean confidence|. For the benchmark and the tests."""
    if not confidences:
        return float("nan")
    sums: dict[int, list[float]] = {}
    for c, r in zip(confidences, rewards, strict=True):
        i = min(bins - 1, max(0, int(c * bins)))
        entry = sums.setdefault(i, [0.0, 0.0, 0.0])
        entry[0] += c
        entry[1] += r
        entry[2] += 1
    n = len(confidences)
    return sum(abs(c - r) / k * (k / n) for c, r, k in sums.values())
