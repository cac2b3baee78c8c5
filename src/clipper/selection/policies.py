"""Model-selection policies (the NSDI'17 Clipper paper, section 5).

Pure functions over plain data: no I/O, no asyncio, no clocks. A policy's
state is a JSON-serialisable dict (the selection layer keeps one per app
and user in the config store); randomness comes from an injected
``random.Random`` so runs are reproducible.

Feedback (``/update``) carries the true label for an input; the layer
passes the outputs that the linked models gave for that input (usually all
of them, from the prediction cache). That is full information, so the
weight-based policies update every observed model, not only the one that
served the query.

States tolerate the set of linked models changing between calls: a model
absent from the state starts from the policy's prior, and entries for
models that are no longer linked are ignored but kept (a model that is
re-linked picks up where it left off).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping
from typing import Any, Protocol

from . import ensemble
from .combine import (
    LOSS_SCALE,
    NumberParam,
    as_number,
    check_params,
    finite_float,
    loss,
)

POLICY_NAMES = ("single", "exp3", "exp4", "epsilon_greedy", "ucb1", "thompson")

# Below this a log-weight's exp() is ~1e-304: the model has no say anyway,
# and the floor keeps stored numbers bounded when `share` is 0.
_LOG_WEIGHT_FLOOR = -700.0

# How much an older observation counts after each new one (the counting
# policies' statistics and Exp4's per-model accuracies): ~200 feedbacks of memory.
DISCOUNT = NumberParam(0.995, 0.0, 1.0, low_open=True)

State = dict[str, Any]  # JSON-serialisable policy state
Params = dict[str, Any]  # validated policy parameters
Outputs = dict[str, Any]  # model name -> output, for the models that answered


class Policy(Protocol):
    """A selection policy: which models to query, how to combine, how to learn."""

    name: str
    combines: bool  # queries several models and combines them: answers carry "confidence"
    learns: bool  # feedback changes its state (so /update must score the models)

    def validate_params(self, params: Params) -> Params:
        """Normalised params with defaults filled in; ValueError naming a bad parameter."""
        ...

    def initial_state(self, params: Params) -> State:
        """The state before any feedback."""
        ...

    def select(
        self, state: State, models: list[str], params: Params, rng: random.Random
    ) -> list[str]:
        """The linked models (in link order) to query; non-empty when ``models`` is."""
        ...

    def combine(
        self, state: State, models: list[str], outputs: Outputs, params: Params
    ) -> tuple[Any, float]:
        """One answer and its confidence in [0, 1] from the outputs that arrived in time."""
        ...

    def observe(
        self, state: State, models: list[str], outputs: Outputs, label: Any, params: Params
    ) -> State:
        """The new state after feedback (the argument is not mutated)."""
        ...


class _Base:
    """What every policy shares: parameter handling, losses, single-output combine."""

    name: str = ""
    combines: bool = False
    learns: bool = True
    _params: Mapping[str, NumberParam] = {}

    def validate_params(self, params: Params) -> Params:
        """Normalised params with defaults filled in; ValueError naming a bad parameter."""
        return check_params(self.name, self._params, params)

    def _param(self, params: Mapping[str, Any], key: str) -> float:
        # Params should come from validate_params; fall back to the default
        # so a stored, never-validated empty dict still works.
        value = params.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return (LOSS_SCALE if key == "loss_scale" else self._params[key]).default

    def _loss(self, output: Any, label: Any, params: Mapping[str, Any]) -> float:
        kind = params.get("loss")
        kind = kind if isinstance(kind, str) else "zero_one"
        return loss(output, label, kind, self._param(params, "loss_scale"))

    def initial_state(self, params: Params) -> State:
        """The state before any feedback."""
        return {}

    def combine(
        self, state: State, models: list[str], outputs: Outputs, params: Params
    ) -> tuple[Any, float]:
        """The one queried model's output, with confidence 1.0.

        Given several outputs anyway, the first in link order wins (then
        the first given, for a model no longer linked).
        """
        if not outputs:
            raise ValueError(f"{self.name}: nothing to combine: no model answered")
        for model in models:
            if model in outputs:
                return outputs[model], 1.0
        return next(iter(outputs.values())), 1.0


class SinglePolicy(_Base):
    """Clipper's default: always the first linked model; feedback is ignored."""

    name = "single"
    learns = False

    def select(
        self, state: State, models: list[str], params: Params, rng: random.Random
    ) -> list[str]:
        """The first linked model."""
        return models[:1]

    def observe(
        self, state: State, models: list[str], outputs: Outputs, label: Any, params: Params
    ) -> State:
        """The state unchanged: the very same object, so callers may skip the write."""
        return state


class _HedgePolicy(_Base):
    """Multiplicative weights shared by Exp3 and Exp4.

    State: ``{"log_weights": {model: float}}``. Log-weights are shifted after
    each update so the largest among the linked models is 0, so they neither
    overflow nor underflow; a model new to the state starts at 0, level with
    the leader, so it gets a fair trial. Each feedback also mixes a small
    ``share`` of the total weight back uniformly (Herbster & Warmuth's fixed
    share, as in Exp3.S): without it a long-time leader that degrades keeps
    its lead for about as many rounds as it took to build it, and the paper
    wants the selection layer to recover from a degrading model quickly.
    """

    def initial_state(self, params: Params) -> State:
        """No weights yet: every model starts level."""
        return {"log_weights": {}}

    @staticmethod
    def _log_weights(state: Mapping[str, Any]) -> dict[str, float]:
        raw = state.get("log_weights") if isinstance(state, Mapping) else None
        if not isinstance(raw, Mapping):
            return {}
        numbers = {model: finite_float(value) for model, value in raw.items()}
        return {model: x for model, x in numbers.items() if x is not None}

    def weight_shares(self, state: State, models: list[str]) -> list[float]:
        """Each linked model's share of the total weight, in link order (sums to 1)."""
        if not models:
            return []
        stored = self._log_weights(state)
        logs = [stored.get(m, 0.0) for m in models]
        top = max(logs)
        weights = [math.exp(x - top) for x in logs]
        total = sum(weights)
        return [w / total for w in weights]

    def observe(
        self, state: State, models: list[str], outputs: Outputs, label: Any, params: Params
    ) -> State:
        """Hedge update ``w_i *= exp(-eta * loss_i)`` for every model with an output."""
        new_state = copy.deepcopy(state) if isinstance(state, Mapping) else {}
        losses = {m: self._loss(output, label, params) for m, output in outputs.items()}
        new_state["log_weights"] = hedge_update(
            self._log_weights(new_state),
            models,
            losses,
            self._param(params, "eta"),
            self._param(params, "share"),
        )
        return new_state


def hedge_update(
    logs: dict[str, float],
    experts: list[str],
    losses: Mapping[str, float],
    eta: float,
    share: float,
) -> dict[str, float]:
    """Log-weights after one round of Hedge with fixed share (mutates and returns ``logs``).

    ``experts`` are the ones in play (linked), ``losses`` those that gave advice;
    an expert new to ``logs`` starts level with the leader. Fixed share mixes
    ``share`` of the total weight back evenly, so no expert in play falls below
    ``share / len(experts)`` of the total and one that recovers is found again.
    """
    touched = list(dict.fromkeys([*experts, *losses]))
    for expert in touched:
        logs.setdefault(expert, 0.0)
    for expert, value in losses.items():
        logs[expert] -= eta * value
    if share > 0 and len(experts) > 1:
        top = max(logs[e] for e in experts)
        weights = {e: math.exp(logs[e] - top) for e in experts}
        spread = share * sum(weights.values()) / len(experts)
        for e in experts:
            logs[e] = top + math.log((1 - share) * weights[e] + spread)
    if touched:  # shift so the leader in play sits at 0 (entries for others keep theirs)
        top = max(logs[e] for e in (experts or touched))
        for expert in touched:
            logs[expert] = max(_LOG_WEIGHT_FLOOR, logs[expert] - top)
    return logs


class Exp3Policy(_HedgePolicy):
    """Exp3 (Auer et al.): pick one model at random by its weight, with exploration.

    Probabilities ``p_i = (1 - gamma) * w_i / sum(w) + gamma / K`` with
    ``gamma = eta``. Because feedback brings every model's output, the update
    is full-information Hedge rather than Exp3's importance-weighted
    estimate; Hedge has the better regret. With feedback for only some
    models, only those are updated (a model that never answers is never
    penalised).
    """

    name = "exp3"
    _params = {
        "eta": NumberParam(0.1, 0.0, 1.0, low_open=True),
        "share": NumberParam(0.001, 0.0, 1.0, high_open=True),
    }

    def probabilities(self, state: State, models: list[str], params: Params) -> list[float]:
        """Each linked model's chance of being picked, in link order."""
        gamma = self._param(params, "eta")
        shares = self.weight_shares(state, models)
        return [(1 - gamma) * s + gamma / len(models) for s in shares]

    def select(
        self, state: State, models: list[str], params: Params, rng: random.Random
    ) -> list[str]:
        """One model, drawn by :meth:`probabilities`."""
        if not models:
            return []
        draw = rng.random()
        for model, p in zip(models, self.probabilities(state, models, params), strict=True):
            draw -= p
            if draw < 0:
                return [model]
        return [models[-1]]  # rounding left the draw just above the total


class Exp4Policy(_HedgePolicy):
    """Exp4: query every linked model; Hedge over experts decides how to combine them.

    The experts are the linked models and two combinations of them (see
    :mod:`.ensemble`): their plain vote and a vote weighted by each model's
    learned accuracy. Feedback moves Hedge's weights over the experts, and the
    answer is the advice of the expert with the highest weight (the lowest
    discounted loss: follow the leader), so it follows whichever advice has
    been best: one model when it dominates, a combination when that is better.
    (A weighted vote over the experts erred more than its best expert when
    several were nearly as good: bench/selection.py, docs/howto/selection-policy.md.)

    State: ``log_weights`` (per expert), ``accuracy`` (per model, discounted
    ``[right, seen]``), ``labels`` (distinct labels seen, to count the classes)
    and ``calibration`` (per confidence bin, discounted ``[right, seen]``).
    """

    name = "exp4"
    combines = True
    _params = {
        "eta": NumberParam(0.5, 0.0, 10.0, low_open=True),
        "share": NumberParam(0.001, 0.0, 1.0, high_open=True),
        "tolerance": NumberParam(0.1, 0.0),
        "discount": DISCOUNT,
    }

    def select(
        self, state: State, models: list[str], params: Params, rng: random.Random
    ) -> list[str]:
        """All linked models."""
        return list(models)

    def _advice(
        self, state: Mapping[str, Any], models: list[str], outputs: Outputs, params: Params
    ) -> tuple[ensemble.Advice, Any, float]:
        """The experts' advice, the answer (the leading expert's advice) and its raw score."""
        order = [m for m in models if m in outputs] + [m for m in outputs if m not in models]
        accuracy = state.get("accuracy") if isinstance(state, Mapping) else None
        labels = state.get("labels") if isinstance(state, Mapping) else None
        tolerance = self._param(params, "tolerance")
        adv = ensemble.advice(
            [(m, outputs[m]) for m in order],
            accuracy if isinstance(accuracy, Mapping) else {},
            labels,
            tolerance,
        )
        stored = self._log_weights(state)
        # Ties (every expert level before feedback) go to the weighted vote, then
        # the plain vote, then the models in link order.
        ranked = [*ensemble.COMBINERS[::-1], *order]
        leader = max(ranked, key=lambda e: (stored.get(e, 0.0), -ranked.index(e)))
        answer = adv.experts[leader]
        logs = [stored.get(e, 0.0) for e in adv.experts]
        top = max(logs)
        weights = [math.exp(x - top) for x in logs]
        agreement = ensemble.agreement(
            list(adv.experts.values()), weights, answer, tolerance, adv.real
        )
        return adv, answer, adv.raw_confidence(answer, agreement)

    def combine(
        self, state: State, models: list[str], outputs: Outputs, params: Params
    ) -> tuple[Any, float]:
        """The leading expert's advice, with a calibrated confidence.

        Models missing from ``outputs`` are left out (and so are from the votes).
        """
        if not outputs:
            raise ValueError(f"{self.name}: nothing to combine: no model answered")
        _, answer, raw = self._advice(state, models, outputs, params)
        bins = state.get("calibration") if isinstance(state, Mapping) else None
        return answer, ensemble.calibrated(bins, raw)

    def _right(self, answer: Any, label: Any, params: Params) -> float:
        """1 when an answer counts as right for calibration: a zero loss for labels,
        within ``tolerance`` (relative; absolute at 0) of the label for real values."""
        if params.get("loss", "zero_one") == "zero_one":
            return 1.0 - self._loss(answer, label, params)
        truth, guess = as_number(label), as_number(answer)
        if truth is None or guess is None:
            return 0.0
        tolerance = self._param(params, "tolerance")
        return float(abs(guess - truth) <= (tolerance * abs(truth) if truth else tolerance))

    def observe(
        self, state: State, models: list[str], outputs: Outputs, label: Any, params: Params
    ) -> State:
        """Score every expert's advice and the answer; update Hedge, the models'
        accuracies, the calibration bins and the labels seen."""
        new_state = copy.deepcopy(state) if isinstance(state, Mapping) else {}
        if not outputs:
            return new_state
        adv, answer, raw = self._advice(new_state, models, outputs, params)
        experts = [*models, *ensemble.COMBINERS]
        losses = {e: self._loss(value, label, params) for e, value in adv.experts.items()}
        new_state["log_weights"] = hedge_update(
            self._log_weights(new_state),
            experts,
            losses,
            self._param(params, "eta"),
            self._param(params, "share"),
        )
        discount = self._param(params, "discount")
        accuracy = new_state.get("accuracy")
        accuracy = dict(accuracy) if isinstance(accuracy, Mapping) else {}
        for model in outputs:
            accuracy[model] = ensemble.discounted(accuracy.get(model), 1 - losses[model], discount)
        new_state["accuracy"] = accuracy
        new_state["calibration"] = ensemble.calibration_update(
            new_state.get("calibration"), raw, self._right(answer, label, params)
        )
        if not adv.real:
            new_state["labels"] = ensemble.remember_label(new_state.get("labels"), label)
        return new_state

    def weight_shares(self, state: State, models: list[str]) -> list[float]:
        """Each linked model's share of the trust, in link order (sums to 1):
        its own expert's share of the weight, plus its part of each vote's share
        (an equal part of the plain vote, its vote weight's part of the weighted one)."""
        if not models:
            return []
        experts = [*models, *ensemble.COMBINERS]
        shares = dict(zip(experts, super().weight_shares(state, experts), strict=True))
        accuracy = state.get("accuracy") if isinstance(state, Mapping) else None
        accuracy = accuracy if isinstance(accuracy, Mapping) else {}
        classes = ensemble.class_count(state.get("labels") if isinstance(state, Mapping) else None)
        votes = [
            ensemble.log_odds_weight(ensemble.accuracy_of(accuracy.get(m)), classes) for m in models
        ]
        total = sum(votes)
        votes = [v / total for v in votes] if total > 0 else [1 / len(models)] * len(models)
        return [
            shares[m] + shares[ensemble.VOTE] / len(models) + shares[ensemble.WEIGHTED_VOTE] * v
            for m, v in zip(models, votes, strict=True)
        ]


class _CountingPolicy(_Base):
    """Per-model reward counts shared by epsilon-greedy, UCB1 and Thompson sampling.

    State: ``{"stats": {model: {"count": float, "mean": float}}}`` where the
    reward is ``1 - loss``. Both are discounted: each observation multiplies the
    older ones' weight by ``discount`` (Garivier & Moulines' discounted UCB),
    so a model that degrades after a long good run loses its lead within about
    ``1 / (1 - discount)`` feedbacks, and one that recovers is found again.
    ``discount`` 1 keeps all-time means.
    """

    def initial_state(self, params: Params) -> State:
        """No observations yet."""
        return {"stats": {}}

    @staticmethod
    def _stats(state: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
        raw = state.get("stats") if isinstance(state, Mapping) else None
        if not isinstance(raw, Mapping):
            return {}
        valid = {}
        for model, entry in raw.items():
            if isinstance(entry, Mapping):
                count, mean = finite_float(entry.get("count")), finite_float(entry.get("mean"))
                if count is not None and count >= 0 and mean is not None:
                    valid[model] = (count, mean)
        return valid

    @staticmethod
    def _untried(stats: Mapping[str, tuple[float, float]], models: list[str]) -> str | None:
        return next((m for m in models if stats.get(m, (0, 0.0))[0] == 0), None)

    @staticmethod
    def _argmax(models: list[str], scores: list[float]) -> str:
        best = 0
        for i, score in enumerate(scores):
            if score > scores[best]:  # strict: ties go to the first in link order
                best = i
        return models[best]

    def observe(
        self, state: State, models: list[str], outputs: Outputs, label: Any, params: Params
    ) -> State:
        """Add one reward observation for every model with an output, the older
        ones discounted."""
        new_state = copy.deepcopy(state) if isinstance(state, Mapping) else {}
        stats = self._stats(new_state)  # malformed entries are dropped
        discount = self._param(params, "discount")
        for model, output in outputs.items():
            count, mean = stats.get(model, (0.0, 0.0))
            reward = 1.0 - self._loss(output, label, params)
            count = count * discount + 1.0
            stats[model] = (count, mean + (reward - mean) / count)
        new_state["stats"] = {m: {"count": n, "mean": mean} for m, (n, mean) in stats.items()}
        return new_state


class EpsilonGreedyPolicy(_CountingPolicy):
    """With probability ``epsilon`` a uniformly random model, else the best mean reward."""

    name = "epsilon_greedy"
    _params = {"epsilon": NumberParam(0.1, 0.0, 1.0), "discount": DISCOUNT}

    def greedy(self, state: State, models: list[str]) -> str:
        """The exploiting choice: the first untried model, else the best mean reward."""
        stats = self._stats(state)
        untried = self._untried(stats, models)
        if untried is not None:
            return untried
        return self._argmax(models, [stats[m][1] for m in models])

    def select(
        self, state: State, models: list[str], params: Params, rng: random.Random
    ) -> list[str]:
        """One model: explore with probability epsilon, else :meth:`greedy`."""
        if not models:
            return []
        if rng.random() < self._param(params, "epsilon"):
            return [models[rng.randrange(len(models))]]
        return [self.greedy(state, models)]


class UCB1Policy(_CountingPolicy):
    """UCB1 (Auer et al.): the first untried model, else the best optimistic bound.

    Bound: ``mean_i + c * sqrt(2 ln N / n_i)``, N the observations of all
    linked models. Deterministic between feedbacks: with delayed feedback,
    every query until the next update goes to the same model.
    """

    name = "ucb1"
    _params = {"c": NumberParam(1.0, 0.0), "discount": DISCOUNT}

    def select(
        self, state: State, models: list[str], params: Params, rng: random.Random
    ) -> list[str]:
        """One model: untried first, else the highest upper confidence bound."""
        if not models:
            return []
        stats = self._stats(state)
        untried = self._untried(stats, models)
        if untried is not None:
            return [untried]
        c = self._param(params, "c")
        log_total = math.log(max(1.0, sum(stats[m][0] for m in models)))
        scores = [stats[m][1] + c * math.sqrt(2 * log_total / stats[m][0]) for m in models]
        return [self._argmax(models, scores)]


# The Gaussian model for real-valued rewards: a prior on a model's mean
# reward (rewards lie in [0, 1], so 0.5 with a wide variance), and 0.25, the
# largest variance a [0, 1] reward can have, as the default known noise.
_PRIOR_MEAN = 0.5
_PRIOR_VARIANCE = 1.0


class ThompsonPolicy(_CountingPolicy):
    """Thompson sampling: sample each model's posterior mean reward, pick the best.

    Zero-one loss: a Beta(prior_alpha + successes, prior_beta + failures)
    posterior. Real losses: a Gaussian posterior with known noise variance
    ``noise`` and prior N(0.5, 1.0). Randomised, so it spreads queries
    sensibly even when feedback is delayed.
    """

    name = "thompson"
    _params = {
        "prior_alpha": NumberParam(1.0, 0.0, low_open=True),
        "prior_beta": NumberParam(1.0, 0.0, low_open=True),
        "noise": NumberParam(0.25, 0.0, low_open=True),
        "discount": DISCOUNT,
    }

    def select(
        self, state: State, models: list[str], params: Params, rng: random.Random
    ) -> list[str]:
        """One model: the argmax of one posterior sample per linked model."""
        if not models:
            return []
        stats = self._stats(state)
        samples = []
        if params.get("loss", "zero_one") == "zero_one":
            alpha, beta = self._param(params, "prior_alpha"), self._param(params, "prior_beta")
            for m in models:
                count, mean = stats.get(m, (0, 0.0))
                successes = min(count, max(0.0, count * mean))  # keep both Beta shapes > 0
                samples.append(rng.betavariate(alpha + successes, beta + count - successes))
        else:
            noise = self._param(params, "noise")
            for m in models:
                count, mean = stats.get(m, (0, 0.0))
                precision = 1 / _PRIOR_VARIANCE + count / noise
                centre = (_PRIOR_MEAN / _PRIOR_VARIANCE + count * mean / noise) / precision
                samples.append(rng.gauss(centre, math.sqrt(1 / precision)))
        return [self._argmax(models, samples)]


_POLICIES: dict[str, Policy] = {
    policy.name: policy
    for policy in (
        SinglePolicy(),
        Exp3Policy(),
        Exp4Policy(),
        EpsilonGreedyPolicy(),
        UCB1Policy(),
        ThompsonPolicy(),
    )
}


def get_policy(name: str) -> Policy:
    """The policy called ``name``; ValueError naming the known policies otherwise."""
    try:
        return _POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown selection policy {name!r}; known: {', '.join(POLICY_NAMES)}"
        ) from None
