"""Selection policies: the contract every policy meets, then each policy's own rules."""

import copy
import json
import math
import random

import pytest

from clipper.selection.policies import (
    POLICY_NAMES,
    EpsilonGreedyPolicy,
    Exp3Policy,
    Exp4Policy,
    get_policy,
)

MODELS = ["a", "b", "c"]

# policy -> (its own params with their defaults, a bad value for each)
OWN_PARAMS = {
    "single": {},
    "exp3": {"eta": (0.1, 1.5), "share": (0.001, 1.0)},
    "exp4": {
        "eta": (0.5, 0.0),
        "share": (0.001, -0.1),
        "tolerance": (0.1, -1),
        "discount": (0.995, 0.0),
    },
    "epsilon_greedy": {"epsilon": (0.1, 1.01), "discount": (0.995, 1.5)},
    "ucb1": {"c": (1.0, -0.5), "discount": (0.995, 0.0)},
    "thompson": {
        "prior_alpha": (1.0, 0),
        "prior_beta": (1.0, -2.0),
        "noise": (0.25, 0.0),
        "discount": (0.995, -1.0),
    },
}


def feedback_rounds(policy, params, rounds, rng, models_of=lambda t: MODELS, real=False):
    """Drive a policy with random feedback; the linked models may change each round."""
    state = policy.initial_state(params)
    for t in range(rounds):
        models = models_of(t)
        chosen = policy.select(state, models, params, rng)
        assert chosen, f"{policy.name} selected nothing from {models}"
        assert set(chosen) <= set(models)
        label = rng.random() if real else rng.choice(["0", "1"])
        outputs = {m: (rng.random() if real else rng.randint(0, 1)) for m in models}
        state = policy.observe(state, models, outputs, label, params)
    return state


# --- the contract ----------------------------------------------------------


def test_get_policy_names_every_policy_and_rejects_others():
    for name in POLICY_NAMES:
        assert get_policy(name).name == name
    with pytest.raises(ValueError, match="unknown selection policy 'exp5'") as info:
        get_policy("exp5")
    for name in POLICY_NAMES:
        assert name in str(info.value)


def test_only_exp4_combines():
    assert [n for n in POLICY_NAMES if get_policy(n).combines] == ["exp4"]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_defaults_are_filled_in(name):
    params = get_policy(name).validate_params({})
    own = {key: default for key, (default, _) in OWN_PARAMS[name].items()}
    assert params == {"loss": "zero_one", "loss_scale": 1.0, "min_confidence": 0.0, **own}
    assert json.loads(json.dumps(params)) == params
    # validating again is a no-op, and integers are normalised to floats
    assert get_policy(name).validate_params(params) == params
    assert get_policy(name).validate_params({"loss_scale": 2})["loss_scale"] == 2.0
    with pytest.raises(ValueError, match="min_confidence"):
        get_policy(name).validate_params({"min_confidence": 1.5})


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_bad_params_are_rejected_by_name(name):
    policy = get_policy(name)
    bad_values = {key: bad for key, (_, bad) in OWN_PARAMS[name].items()}
    bad_values["loss_scale"] = 0
    for key, bad in bad_values.items():
        for value in (bad, "0.5", True, None, math.nan, math.inf, [1]):
            with pytest.raises(ValueError, match=rf"^{name}: parameter '{key}' must be a number"):
                policy.validate_params({key: value})
    with pytest.raises(ValueError, match=rf"^{name}: parameter 'loss' must be one of zero_one"):
        policy.validate_params({"loss": "hinge"})
    with pytest.raises(ValueError, match=rf"^{name}: unknown parameter 'gama'"):
        policy.validate_params({"gama": 0.1})
    with pytest.raises(ValueError, match=rf"^{name}: parameters must be an object"):
        policy.validate_params([("eta", 0.1)])  # type: ignore[arg-type]


def test_param_messages_read_well():
    with pytest.raises(ValueError) as info:
        get_policy("exp3").validate_params({"eta": -1})
    assert str(info.value) == "exp3: parameter 'eta' must be a number in (0, 1], got -1"
    with pytest.raises(ValueError) as info:
        get_policy("exp4").validate_params({"gama": 0.1})
    assert str(info.value).startswith("exp4: unknown parameter 'gama' (known: ")
    with pytest.raises(ValueError) as info:
        get_policy("ucb1").validate_params({"c": -1})
    assert str(info.value) == "ucb1: parameter 'c' must be a number >= 0, got -1"


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("loss", ["zero_one", "squared", "absolute"])
def test_state_is_json_after_many_updates_and_survives_a_round_trip(name, loss):
    policy = get_policy(name)
    params = policy.validate_params({"loss": loss})
    state = feedback_rounds(policy, params, 500, random.Random(7), real=loss != "zero_one")
    restored = json.loads(json.dumps(state, allow_nan=False))
    assert restored == state
    picks = [policy.select(state, MODELS, params, random.Random(s)) for s in range(20)]
    assert [policy.select(restored, MODELS, params, random.Random(s)) for s in range(20)] == picks


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_observe_returns_a_new_state_and_leaves_the_argument_alone(name):
    policy = get_policy(name)
    params = policy.validate_params({})
    state = feedback_rounds(policy, params, 20, random.Random(1))
    before = copy.deepcopy(state)
    new = policy.observe(state, MODELS, {"a": 1, "b": 0}, "1", params)
    assert state == before
    if name != "single":
        assert new != state


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_select_is_never_empty_and_respects_link_order(name):
    policy = get_policy(name)
    params = policy.validate_params({})
    rng = random.Random(3)
    state = policy.initial_state(params)
    assert policy.select(state, [], params, rng) == []
    for models in (["only"], ["x", "y"], MODELS):
        for _ in range(50):
            chosen = policy.select(state, models, params, rng)
            assert chosen
            assert chosen == [m for m in models if m in chosen]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_linked_models_may_change_between_calls(name):
    """Models come and go: new ones start from the prior, old entries are kept."""
    policy = get_policy(name)
    params = policy.validate_params({})
    links = [MODELS, ["c", "d"], ["d"], ["e", "a", "d"], MODELS]
    state = feedback_rounds(
        policy, params, 200, random.Random(5), models_of=lambda t: links[t // 40]
    )
    if name != "single":
        key = {"exp3": "log_weights", "exp4": "accuracy"}.get(name, "stats")
        assert set(state[key]) == {"a", "b", "c", "d", "e"}
    # feedback naming a model that is no longer linked is still accepted
    state = policy.observe(state, ["a"], {"a": 1, "gone": 0}, "1", params)
    assert policy.select(state, ["new", "a"], params, random.Random(0))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_malformed_or_foreign_state_counts_as_the_prior(name):
    policy = get_policy(name)
    params = policy.validate_params({})
    for state in (
        {},
        {"log_weights": {"a": "heavy", "b": None}},
        {"stats": {"a": {"count": -1, "mean": 0.5}, "b": [1]}},
    ):
        assert policy.select(state, MODELS, params, random.Random(0))
        new = policy.observe(state, MODELS, {"a": 1}, "1", params)
        assert json.loads(json.dumps(new)) == new


@pytest.mark.parametrize("name", [n for n in POLICY_NAMES if n != "exp4"])
def test_single_pick_policies_pass_one_output_through(name):
    policy = get_policy(name)
    params = policy.validate_params({})
    assert policy.combine({}, MODELS, {"b": "dog"}, params) == ("dog", 1.0)
    # several outputs anyway: the first in link order
    assert policy.combine({}, MODELS, {"c": 3, "b": "dog"}, params) == ("dog", 1.0)
    assert policy.combine({}, MODELS, {"zed": [1]}, params) == ([1], 1.0)
    with pytest.raises(ValueError, match="no model answered"):
        policy.combine({}, MODELS, {}, params)


# --- single ------------------------------------------------------------------


def test_single_picks_the_first_model_and_ignores_feedback():
    policy = get_policy("single")
    params = policy.validate_params({})
    state = policy.initial_state(params)
    assert policy.select(state, ["m", "n"], params, random.Random(0)) == ["m"]
    assert policy.observe(state, ["m"], {"m": 1}, "2", params) is state


# --- exp3 / exp4 -------------------------------------------------------------


def test_exp3_probabilities_mix_weights_with_uniform_exploration():
    policy = Exp3Policy()
    params = policy.validate_params({"eta": 0.2})
    state = {"log_weights": {"a": 0.0, "b": math.log(0.5), "c": math.log(0.5)}}
    probs = policy.probabilities(state, MODELS, params)
    # weight shares 0.5, 0.25, 0.25; p = 0.8 * share + 0.2 / 3
    assert probs == pytest.approx([0.4 + 0.2 / 3, 0.2 + 0.2 / 3, 0.2 + 0.2 / 3], rel=1e-12)
    assert sum(probs) == pytest.approx(1.0)
    rng = random.Random(11)
    counts = {m: 0 for m in MODELS}
    for _ in range(20_000):
        counts[policy.select(state, MODELS, params, rng)[0]] += 1
    for model, p in zip(MODELS, probs, strict=True):
        assert counts[model] / 20_000 == pytest.approx(p, abs=0.015)


def test_hedge_update_is_multiplicative_and_normalised():
    policy = Exp3Policy()
    params = policy.validate_params({"eta": 0.5, "share": 0})
    state = policy.observe({}, MODELS, {"a": "x", "b": "y", "c": "x"}, "x", params)
    # b lost once: w_b = exp(-0.5); the leader sits at log-weight 0
    assert state == {"log_weights": {"a": 0.0, "b": -0.5, "c": 0.0}}
    shares = policy.weight_shares(state, MODELS)
    total = 2 + math.exp(-0.5)
    assert shares == pytest.approx([1 / total, math.exp(-0.5) / total, 1 / total], rel=1e-12)


def test_a_new_model_starts_level_with_the_leader():
    policy = Exp3Policy()
    params = policy.validate_params({"share": 0})
    state = {"log_weights": {"a": 0.0, "b": -3.0}}
    probs = policy.probabilities(state, ["a", "b", "new"], params)
    assert probs[0] == pytest.approx(probs[2])
    assert probs[1] < probs[0]


def test_fixed_share_keeps_every_linked_model_above_a_floor():
    policy = Exp3Policy()
    params = policy.validate_params({"eta": 1, "share": 0.03})
    state: dict = {}
    for _ in range(200):
        state = policy.observe(state, MODELS, {"a": 1, "b": 0, "c": 0}, "1", params)
    shares = policy.weight_shares(state, MODELS)
    assert min(shares) >= 0.03 / 3 * 0.999
    assert all(math.isfinite(x) for x in state["log_weights"].values())


def test_weights_stay_finite_without_share():
    policy = Exp4Policy()
    params = policy.validate_params({"eta": 10, "share": 0})
    state: dict = {}
    for _ in range(200):
        state = policy.observe(state, MODELS, {"a": 1, "b": 0, "c": 0}, "1", params)
    assert state["log_weights"]["a"] == 0.0
    assert state["log_weights"]["b"] == -700.0  # the floor, far below any say in the vote
    assert json.loads(json.dumps(state, allow_nan=False)) == state


def test_exp4_queries_every_model():
    policy = Exp4Policy()
    params = policy.validate_params({})
    assert policy.select({}, MODELS, params, random.Random(0)) == MODELS


def test_exp4_follows_the_experts_weights_with_the_raw_confidence_before_feedback():
    """No calibration data yet: the confidence is the raw posterior of the answer."""
    policy = Exp4Policy()
    params = policy.validate_params({})
    trust_a = {"log_weights": {"a": 0.0, "b": -9.0, "c": -9.0, "vote:plain": -9.0}}
    trust_a["log_weights"]["vote:weighted"] = -9.0
    out, conf = policy.combine(trust_a, MODELS, {"a": "cat", "b": "dog", "c": "dog"}, params)
    assert out == "cat"
    # no feedback yet: the share of the answering models that gave the answer
    assert conf == pytest.approx(1 / 3, rel=1e-12)
    informed = {**trust_a, "accuracy": {"a": [0, 0.5]}}
    # with feedback behind the accuracies: the posterior, here with every log-odds
    # weight log(p / (1 - p) * (2 - 1)) floored at 0, so even over the two answers
    conf = policy.combine(informed, MODELS, {"a": "cat", "b": "dog", "c": "dog"}, params)[1]
    assert conf == pytest.approx(0.5, rel=1e-12)
    # level experts: ties go to the weighted vote (dog, two against one)
    out, _ = policy.combine({}, MODELS, {"a": "cat", "b": "dog", "c": "dog"}, params)
    assert out == "dog"
    # a missed the deadline: left out of every vote
    assert policy.combine(trust_a, MODELS, {"b": "dog", "c": "dog"}, params)[0] == "dog"
    # integers are class labels: voted on, not averaged
    assert policy.combine(trust_a, MODELS, {"a": 1, "b": 2, "c": 2}, params)[0] == 1


def test_exp4_ties_go_to_the_first_model_in_link_order():
    policy = Exp4Policy()
    params = policy.validate_params({})
    assert policy.combine({}, ["a", "b"], {"a": "x", "b": "y"}, params) == ("x", 0.5)
    assert policy.combine({}, ["b", "a"], {"a": "x", "b": "y"}, params) == ("y", 0.5)


def test_exp4_weighted_mean_for_real_outputs():
    policy = Exp4Policy()
    params = policy.validate_params({"tolerance": 0.5})
    only_a = {"log_weights": {"a": 0.0, "b": -50.0, "c": -50.0, "vote:plain": -50.0}}
    only_a["log_weights"]["vote:weighted"] = -50.0
    out, conf = policy.combine(only_a, MODELS, {"a": 2.0, "b": 2, "c": 6.0}, params)
    assert out == pytest.approx(2.0, rel=1e-9)
    assert 0.99 < conf <= 1.0  # a holds all the weight and agrees with itself
    # level experts: the weighted vote leads, the mean of 2, 2, 6 (no feedback: equal
    # weights); within 0.5 * 10/3 of it: a, b and both means (weight 4 of 5), not c
    out, conf = policy.combine({}, MODELS, {"a": 2.0, "b": 2, "c": 6.0}, params)
    assert out == pytest.approx(10 / 3, rel=1e-12)
    assert conf == pytest.approx(4 / 5, rel=1e-12)
    # only c answered
    assert policy.combine(only_a, MODELS, {"c": 6.0}, params)[0] == 6.0


def test_exp4_learns_from_feedback_then_trusts_the_accurate_model():
    policy = Exp4Policy()
    params = policy.validate_params({"eta": 1.0})
    state: dict = {}
    for _ in range(20):
        state = policy.observe(state, MODELS, {"a": "1", "b": "0", "c": "0"}, 1, params)
    out, conf = policy.combine(state, MODELS, {"a": "x", "b": "y", "c": "y"}, params)
    assert out == "x"
    assert conf > 0.9


# --- epsilon-greedy, UCB1, Thompson -----------------------------------------


def stats(**models):
    return {"stats": {m: {"count": n, "mean": mean} for m, (n, mean) in models.items()}}


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3, 1.0])
def test_epsilon_greedy_explores_at_the_configured_rate(epsilon):
    policy = EpsilonGreedyPolicy()
    params = policy.validate_params({"epsilon": epsilon})
    state = stats(a=(10, 0.4), b=(10, 0.9), c=(10, 0.5))
    assert policy.greedy(state, MODELS) == "b"
    rng = random.Random(2)
    rounds = 10_000
    others = sum(policy.select(state, MODELS, params, rng) != ["b"] for _ in range(rounds))
    # exploring picks uniformly, so a third of explorations land on the greedy model anyway
    assert others / rounds == pytest.approx(epsilon * 2 / 3, abs=0.015)


def test_epsilon_greedy_tries_untried_models_first():
    policy = EpsilonGreedyPolicy()
    params = policy.validate_params({"epsilon": 0})
    state = stats(a=(10, 0.9))
    assert policy.select(state, MODELS, params, random.Random(0)) == ["b"]
    state = policy.observe(state, MODELS, {"b": 0}, "1", params)
    assert state["stats"]["b"] == {"count": 1, "mean": 0.0}
    assert policy.select(state, MODELS, params, random.Random(0)) == ["c"]


def test_ucb1_untried_first_then_the_upper_bound():
    policy = get_policy("ucb1")
    params = policy.validate_params({"c": 0.5})
    assert policy.select(stats(a=(5, 1.0)), MODELS, params, random.Random(0)) == ["b"]
    state = stats(a=(90, 0.6), b=(9, 0.5), c=(1, 0.2))
    # N = 100: bonus 0.5 * sqrt(2 ln 100 / n)
    bonus = [0.5 * math.sqrt(2 * math.log(100) / n) for n in (90, 9, 1)]
    scores = [0.6 + bonus[0], 0.5 + bonus[1], 0.2 + bonus[2]]
    assert scores[2] > scores[1] > scores[0]
    assert policy.select(state, MODELS, params, random.Random(0)) == ["c"]
    no_bonus = policy.validate_params({"c": 0})
    assert policy.select(state, MODELS, no_bonus, random.Random(0)) == ["a"]


def test_ucb1_ties_go_to_link_order():
    policy = get_policy("ucb1")
    params = policy.validate_params({})
    state = stats(a=(4, 0.5), b=(4, 0.5), c=(4, 0.5))
    assert policy.select(state, ["c", "b", "a"], params, random.Random(0)) == ["c"]


@pytest.mark.parametrize("loss", ["zero_one", "absolute"])
def test_thompson_samples_the_posteriors(loss):
    policy = get_policy("thompson")
    params = policy.validate_params({"loss": loss})
    rng = random.Random(4)
    confident = stats(a=(200, 0.5), b=(200, 0.8), c=(200, 0.6))
    picks = [policy.select(confident, MODELS, params, rng)[0] for _ in range(500)]
    assert picks.count("b") > 490
    # with no data every model has the same prior, so each gets picked
    fresh = [policy.select({}, MODELS, params, rng)[0] for _ in range(600)]
    assert all(fresh.count(m) > 120 for m in MODELS)


def test_thompson_state_counts_rewards():
    policy = get_policy("thompson")
    params = policy.validate_params({"loss": "absolute", "loss_scale": 4})
    state = policy.observe({}, MODELS, {"a": 1.0, "b": "3"}, "2", params)
    assert state == {"stats": {"a": {"count": 1, "mean": 0.75}, "b": {"count": 1, "mean": 0.75}}}
