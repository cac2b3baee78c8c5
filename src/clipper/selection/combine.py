"""Pure helpers for the selection policies: comparing an output with a label
(losses), checking policy parameters, and combining several models'
outputs into one answer with a confidence.

Outputs are whatever models return (any JSON value); labels arrive through
``/update`` and are often strings even when the models answer numbers, so
comparisons normalise lightly (``"3"`` equals ``3``).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LOSS_KINDS = ("zero_one", "squared", "absolute")


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number or a numeric string, else None.

    Bools are not numbers here: a label ``true`` must not equal an output ``1``.
    """
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, numbers.Real):  # also numpy scalars
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    except (ValueError, OverflowError):
        return None
    return None


def finite_float(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool or a
    string), else None: for reading numbers back from stored state."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "false"):
            return text == "true"
    return None


def outputs_equal(a: Any, b: Any) -> bool:
    """Whether an output matches a label, after light normalisation.

    Numbers are equal when ``float(a) == float(b)``; a numeric string counts
    as its number when compared with a number; two strings compare exactly;
    bools equal bools or the strings ``"true"``/``"false"``; lists and dicts
    compare element by element with the same rules.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        left, right = _as_bool(a), _as_bool(b)
        return left is not None and left == right
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, str | numbers.Real) or isinstance(b, str | numbers.Real):
        x, y = as_number(a), as_number(b)
        return x is not None and y is not None and x == y
    if isinstance(a, Sequence) and isinstance(b, Sequence):
        return len(a) == len(b) and all(outputs_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(outputs_equal(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # e.g. numpy arrays, whose == is elementwise
        return False


def canonical_key(value: Any) -> str:
    """A key under which equal outputs (including lists and dicts) vote together."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):  # e.g. dict keys of mixed types
        return repr(value)


def is_real_valued(values: Sequence[Any]) -> bool:
    """True when every output is a finite number and at least one is a float.

    Integers alone are class labels (voted on); ints mixed with floats are
    regression outputs that happen to be whole (averaged).
    """
    has_float = False
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if not isinstance(value, numbers.Integral):
            has_float = True
        number = as_number(value)
        if number is None or not math.isfinite(number):
            return False
    return has_float


def combine_weighted(
    candidates: Sequence[tuple[Any, float]], tolerance: float
) -> tuple[Any, float]:
    """Combine ``(output, weight)`` pairs, given in link order, into ``(output, confidence)``.

    Real values: the weighted mean, and the confidence is the weight share
    of the outputs within ``tolerance`` relative distance of it (absolute
    distance when the mean is 0). Anything else: a weighted majority vote,
    ties going to the answer whose first supporter comes first in link
    order; the confidence is the winning answer's weight share.
    """
    if not candidates:
        raise ValueError("nothing to combine: no model answered")
    weights = [max(0.0, float(w)) for _, w in candidates]
    total = sum(weights)
    if not total > 0:  # all weights zero (or NaN): every answer counts the same
        weights = [1.0] * len(candidates)
        total = float(len(candidates))
    values = [output for output, _ in candidates]
    if is_real_valued(values):
        numbers_ = [float(v) for v in values]
        mean = sum(w * x for w, x in zip(weights, numbers_, strict=True)) / total
        radius = tolerance * abs(mean) if mean != 0 else tolerance
        agree = sum(w for w, x in zip(weights, numbers_, strict=True) if abs(x - mean) <= radius)
        return mean, min(1.0, agree / total)
    tally: dict[str, float] = {}
    first: dict[str, Any] = {}
    for value, weight in zip(values, weights, strict=True):
        key = canonical_key(value)
        if key not in tally:
            tally[key] = 0.0
            first[key] = value
        tally[key] += weight
    best: str | None = None
    for key, weight in tally.items():  # insertion order is link order of first supporters
        if best is None or weight > tally[best]:
            best = key
    assert best is not None
    return first[best], min(1.0, tally[best] / total)


def loss(output: Any, label: Any, kind: str = "zero_one", scale: float = 1.0) -> float:
    """The loss in [0, 1] of ``output`` against the true ``label``.

    ``zero_one``: 0 when they match after light normalisation (see
    :func:`~clipper.selection.combine.outputs_equal`), else 1. ``absolute``
    and ``squared``: ``min(1, |output - label| / scale)`` and
    ``min(1, (output - label)**2 / scale)``; numeric strings count as numbers,
    and an output that is not a finite number scores the maximum loss 1. A
    label that is not a finite number is the caller's error (ValueError).
    """
    if kind == "zero_one":
        return 0.0 if outputs_equal(output, label) else 1.0
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; known: {', '.join(LOSS_KINDS)}")
    if isinstance(scale, bool) or not (isinstance(scale, int | float) and 0 < scale < math.inf):
        raise ValueError(f"loss scale must be a finite number > 0, got {scale!r}")
    truth = as_number(label)
    if truth is None or not math.isfinite(truth):
        raise ValueError(f"a {kind} loss needs a numeric label, got {label!r}")
    guess = as_number(output)
    if guess is None or not math.isfinite(guess):
        return 1.0
    error = abs(guess - truth)
    if kind == "squared":
        error = error * error  # may overflow to inf, which min() caps at 1
    return min(1.0, error / scale)


@dataclass(frozen=True, slots=True)
class NumberParam:
    """A numeric policy parameter: its default and its allowed interval."""

    default: float
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The interval in words, for error messages."""
        if self.high == math.inf:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a number in {left}{self.low:g}, {self.high:g}{right}"

    def accepts(self, value: float) -> bool:
        """Whether ``value`` is finite and inside the interval."""
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


LOSS_SCALE = NumberParam(1.0, 0.0, low_open=True)
# Robust prediction: an answer whose confidence falls below this is replaced
# by the app's default output (the query processor applies it).
MIN_CONFIDENCE = NumberParam(0.0, 0.0, 1.0)


def check_params(policy: str, specs: Mapping[str, NumberParam], params: Any) -> dict[str, Any]:
    """``params`` validated against a policy's numeric ``specs`` plus the common
    ``loss``, ``loss_scale`` and ``min_confidence``, with defaults filled in.

    Raises ValueError naming the policy and the bad or unknown parameter.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{policy}: parameters must be an object, got {params!r}")
    specs = {"loss_scale": LOSS_SCALE, "min_confidence": MIN_CONFIDENCE, **specs}
    known = ["loss", *specs]
    for key in params:
        if key not in known:
            raise ValueError(
                f"{policy}: unknown parameter {key!r} (known: {', '.join(sorted(known))})"
            )
    kind = params.get("loss", "zero_one")
    if not isinstance(kind, str) or kind not in LOSS_KINDS:
        raise ValueError(
            f"{policy}: parameter 'loss' must be one of {', '.join(LOSS_KINDS)}, got {kind!r}"
        )
    normalised: dict[str, Any] = {"loss": kind}
    for key, spec in specs.items():
        value = params.get(key, spec.default)
        number = None if isinstance(value, bool) else as_number(value)
        if isinstance(value, str) or number is None or not spec.accepts(number):
            raise ValueError(
                f"{policy}: parameter {key!r} must be {spec.describe()}, got {value!r}"
            )
        normalised[key] = number
    return normalised
