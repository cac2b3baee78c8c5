"""Exp4's experts and calibrated confidence (clipper.selection.ensemble), and how
every adaptive policy recovers when a model degrades, on fixed sequences."""

import math
import random

import pytest

from clipper.selection import ensemble
from clipper.selection.policies import Exp4Policy, get_policy

CLASSES = [str(i) for i in range(10)]


# --- the pure combiners -----------------------------------------------------


def test_accuracy_has_a_uniform_prior_and_discounts_old_observations():
    assert ensemble.accuracy_of(None) == 0.5
    assert ensemble.accuracy_of([3, 4]) == pytest.approx(4 / 6)
    record = None
    for _ in range(3):
        record = ensemble.discounted(record, 1.0, 0.5)
    assert record == [1.75, 1.75]  # 1 + 0.5 + 0.25
    assert ensemble.discounted(record, 0.0, 0.5) == [0.875, 1.875]
    assert ensemble.accuracy_of(["x", 2]) == 0.5  # malformed: the prior
    assert ensemble.accuracy_of([5, 2]) == 0.5  # right > seen is malformed too


def test_log_odds_weights_are_the_optimal_weighted_majority():
    # log(p (L - 1) / (1 - p)): 10 classes, p = 0.9 -> log(81)
    assert ensemble.log_odds_weight(0.9, 10) == pytest.approx(math.log(81))
    assert ensemble.log_odds_weight(0.5, 2) == 0.0
    assert ensemble.log_odds_weight(0.05, 10) == 0.0  # worse than chance: abstains
    assert ensemble.class_count(None) == 2
    assert ensemble.class_count(ensemble.remember_label([], "7")) == 2
    labels: list[str] = []
    for label in [*CLASSES, 3, "3"]:  # 3 and "3" are the same label
        labels = ensemble.remember_label(labels, label)
    assert ensemble.class_count(labels) == 10


def test_two_weak_models_that_agree_outvote_one_strong_only_when_they_should():
    # weights: log(0.9 * 9 / 0.1) = 4.39; two at 0.7: log(0.7 * 9 / 0.3) = 3.04 each
    accuracy = {"strong": [89, 98], "weak1": [69, 98], "weak2": [69, 98]}
    labels = CLASSES
    adv = ensemble.advice([("strong", "1"), ("weak1", "2"), ("weak2", "2")], accuracy, labels, 0.1)
    assert adv.experts["vote:plain"] == "2"
    assert adv.experts["vote:weighted"] == "2"  # 6.09 > 4.39
    accuracy["strong"] = [97.99, 98]  # p = 0.99990: log-odds 11.4 beats 6.09
    adv = ensemble.advice([("strong", "1"), ("weak1", "2"), ("weak2", "2")], accuracy, labels, 0.1)
    assert adv.experts["vote:plain"] == "2"
    assert adv.experts["vote:weighted"] == "1"


def test_posterior_of_independent_classifiers():
    # weights 2 for "a", 1 for "b", 3 classes: one unvoted class scores exp(0)
    p = ensemble.posterior(["a", "b"], [2.0, 1.0], "a", 3)
    assert p == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(1) + 1))
    assert ensemble.posterior(["a", "a"], [1.0, 1.0], "a", 2) == pytest.approx(
        math.exp(2) / (math.exp(2) + 1)
    )


def test_calibration_bins_learn_the_share_of_right_answers():
    bins = None
    assert ensemble.calibrated(bins, 0.93) == pytest.approx(0.93)  # no data: the raw score
    rng = random.Random(0)
    for _ in range(2000):  # answers with raw 0.95 are right 70 % of the time
        bins = ensemble.calibration_update(bins, 0.95, float(rng.random() < 0.7))
    assert ensemble.calibrated(bins, 0.97) == pytest.approx(0.7, abs=0.05)
    assert ensemble.calibrated(bins, 0.55) == pytest.approx(0.55)  # another bin: untouched
    assert ensemble.calibrated("junk", 0.3) == pytest.approx(0.3)


def test_expected_calibration_error():
    assert ensemble.expected_calibration_error([0.9] * 10, [1] * 9 + [0]) == pytest.approx(0.0)
    assert ensemble.expected_calibration_error([0.9] * 10, [1] * 5 + [0] * 5) == pytest.approx(0.4)
    assert math.isnan(ensemble.expected_calibration_error([], []))


# --- Exp4 on simulated classifiers -------------------------------------------


def outputs_for(rng, label, accuracies):
    """Independent classifiers: right with their accuracy, else a random wrong class."""
    out = {}
    for i, accuracy in enumerate(accuracies):
        wrong = [c for c in CLASSES if c != label]
        out[f"m{i}"] = label if rng.random() < accuracy else rng.choice(wrong)
    return out


def run_exp4(accuracies, rounds, seed=0, change=None):
    """Predict then feed back, ``rounds`` times; the error and (confidence, right) per round."""
    policy = Exp4Policy()
    params = policy.validate_params({})
    models = [f"m{i}" for i in range(len(accuracies))]
    rng = random.Random(seed)
    state = policy.initial_state(params)
    wrong, answers = [], []
    for t in range(rounds):
        now = change(t) if change else accuracies
        label = rng.choice(CLASSES)
        outputs = outputs_for(rng, label, now)
        answer, confidence = policy.combine(state, models, outputs, params)
        wrong.append(answer != label)
        answers.append((confidence, float(answer == label)))
        state = policy.observe(state, models, outputs, label, params)
    return wrong, answers, state


def test_exp4_combines_complementary_models_and_beats_the_best_of_them():
    """Five independent 70 % models: their vote is right ~92 % of the time (measured:
    Exp4 errs 5.7 % over rounds 500-3000, the best model 30 %)."""
    wrong, _, state = run_exp4([0.7] * 5, 3000)
    assert sum(wrong[500:]) / 2500 < 0.8 * 0.3
    shares = Exp4Policy.__mro__[1].weight_shares(Exp4Policy(), state, ["m0", *ensemble.COMBINERS])
    assert shares[0] < 0.05  # the single model's own expert has no say left


def test_exp4_follows_a_model_that_dominates():
    """One 97 % model beside four 40 % ones: the answer is as good as it (measured 3.0 %)."""
    wrong, _, _ = run_exp4([0.97, 0.4, 0.4, 0.4, 0.4], 3000, seed=1)
    assert sum(wrong[500:]) / 2500 < 0.03 + 0.015


@pytest.mark.parametrize("seed", [0, 1])
def test_exp4_confidence_is_calibrated(seed):
    """Measured ECE over 3000 answers: 0.007-0.010 (the target is 0.05)."""
    _, answers, _ = run_exp4([0.8, 0.7, 0.6, 0.6, 0.5], 3000, seed=seed)
    conf = [c for c, _ in answers]
    right = [r for _, r in answers]
    assert ensemble.expected_calibration_error(conf, right) < 0.04
    assert all(0 <= c <= 1 for c in conf)


# --- degradation and recovery, every adaptive policy -------------------------


def rounds_to_recover(name, seed, degrade_at=1500, rounds=2500):
    """The good model (0.95) turns bad (0.1) at ``degrade_at`` after a long good run;
    the fair one answers 0.75. Rounds until a 100-round window of the policy's
    answers errs within 5 points of the fair model's 25 %."""
    policy = get_policy(name)
    params = policy.validate_params({})
    models = ["good", "fair", "poor"]
    rng, env = random.Random(seed), random.Random(seed + 1)
    state = policy.initial_state(params)
    wrong = []
    for t in range(rounds):
        accuracies = (0.95 if t < degrade_at else 0.1, 0.75, 0.5)
        label = env.choice(CLASSES)
        outputs = dict(zip(models, outputs_for(env, label, accuracies).values(), strict=True))
        chosen = policy.select(state, models, params, rng)
        answer, _ = policy.combine(state, chosen, {m: outputs[m] for m in chosen}, params)
        wrong.append(answer != label)
        state = policy.observe(state, models, outputs, label, params)
    for t in range(degrade_at, rounds - 100):
        if sum(wrong[t : t + 100]) / 100 <= 0.25 + 0.05:
            return t - degrade_at
    return math.inf


@pytest.mark.parametrize("name", ["exp3", "exp4", "epsilon_greedy", "ucb1", "thompson"])
def test_every_adaptive_policy_recovers_from_a_degraded_model(name):
    """Measured (seeds 0-2): exp3 65-99, exp4 9-31, epsilon-greedy 58-91, UCB1 45-64 and
    Thompson 51-68 rounds."""
    assert max(rounds_to_recover(name, seed) for seed in (0, 1)) < 300


@pytest.mark.parametrize("name", ["exp3", "exp4", "epsilon_greedy", "ucb1", "thompson"])
def test_a_model_that_recovers_is_found_again(name):
    """The good model is bad for 1,000 rounds, then good again: the policy's answers
    come back to its accuracy (its weight never fell out of reach)."""
    policy = get_policy(name)
    params = policy.validate_params({})
    models = ["good", "fair"]
    rng, env = random.Random(4), random.Random(5)
    state = policy.initial_state(params)
    wrong = []
    for t in range(2500):
        accuracies = (0.1 if 300 <= t < 1300 else 0.95, 0.7)
        label = env.choice(CLASSES)
        outputs = dict(zip(models, outputs_for(env, label, accuracies).values(), strict=True))
        chosen = policy.select(state, models, params, rng)
        answer, _ = policy.combine(state, chosen, {m: outputs[m] for m in chosen}, params)
        wrong.append(answer != label)
        state = policy.observe(state, models, outputs, label, params)
    # epsilon-greedy and Exp3 explore by design (10 % random picks): allow for it
    assert sum(wrong[1800:]) / 700 < 0.05 + 0.1 * 0.3 + 0.03


def test_a_stored_state_of_the_old_form_still_loads():
    """Before the experts, Exp4's state held the models' log-weights only: they
    carry over (a trusted model keeps its say) and the combiners start level."""
    policy = Exp4Policy()
    params = policy.validate_params({})
    old = {"log_weights": {"a": 0.0, "b": -20.0, "c": -20.0}}
    answer, confidence = policy.combine(
        old, ["a", "b", "c"], {"a": "x", "b": "y", "c": "y"}, params
    )
    assert answer == "y"  # a alone (weight 1) against b, c and both votes (3 level experts)
    assert confidence == pytest.approx(2 / 3)
    new = policy.observe(old, ["a", "b", "c"], {"a": "x", "b": "y", "c": "y"}, "x", params)
    assert set(new["log_weights"]) == {"a", "b", "c", *ensemble.COMBINERS}
    assert set(new["accuracy"]) == {"a", "b", "c"}
