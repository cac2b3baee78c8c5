"""Losses, output comparison and the ensemble combination helpers."""

import math
import random

import pytest

from clipper.selection.combine import LOSS_KINDS, combine_weighted, outputs_equal
from clipper.selection.policies import loss


@pytest.mark.parametrize(
    ("output", "label"),
    [
        ("cat", "cat"),
        (3, "3"),
        ("3", 3),
        (3.0, 3),
        (" 3 ", 3.0),
        (2.5, "2.5"),
        (True, True),
        (True, "true"),
        ("False", False),
        (None, None),
        ([1, "2"], ["1", 2.0]),
        ({"k": [1]}, {"k": ["1"]}),
    ],
)
def test_zero_one_matches_after_light_normalisation(output, label):
    assert loss(output, label, "zero_one", 1.0) == 0.0
    assert outputs_equal(label, output)


@pytest.mark.parametrize(
    ("output", "label"),
    [
        ("cat", "dog"),
        ("3", "3.0"),  # two strings compare exactly
        (3, "three"),
        (True, 1),  # bools are not numbers
        (0, False),
        (None, "None"),
        ([1, 2], [1]),
        ({"k": 1}, {"j": 1}),
        ("1", [1]),
        (math.nan, math.nan),
    ],
)
def test_zero_one_mismatches(output, label):
    assert loss(output, label, "zero_one", 1.0) == 1.0


def test_absolute_and_squared_losses():
    assert loss(2.5, "2", "absolute", 1.0) == 0.5
    assert loss("2.5", 2, "absolute", 2.0) == 0.25
    assert loss(-1, 2, "absolute", 1.0) == 1.0  # capped
    assert loss(1.5, 1, "squared", 1.0) == 0.25
    assert loss(3, "1", "squared", 8.0) == 0.5
    assert loss(1e200, 0, "squared", 1.0) == 1.0  # overflow is still just the cap
    assert loss(7, 7, "squared", 1.0) == 0.0


def test_a_non_numeric_output_costs_the_most():
    for output in ("cat", None, [1.0], True, math.nan, math.inf):
        assert loss(output, 1.0, "absolute", 1.0) == 1.0
        assert loss(output, 1.0, "squared", 1.0) == 1.0


def test_bad_labels_kinds_and_scales_are_errors():
    for label in ("cat", None, [1.0], True, "nan", math.inf):
        with pytest.raises(ValueError, match="needs a numeric label"):
            loss(1.0, label, "squared", 1.0)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        loss(1, 1, "hinge", 1.0)
    for scale in (0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="loss scale"):
            loss(1, 1, "absolute", scale)


def test_losses_stay_in_bounds():
    rng = random.Random(9)
    for _ in range(2000):
        kind = rng.choice(LOSS_KINDS)
        output = rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-5, 5), str(rng.random()), "x"])
        label = rng.choice([rng.uniform(-1e3, 1e3), str(rng.randint(-5, 5))])
        value = loss(output, label, kind, rng.choice([1e-9, 0.5, 1.0, 1e9]))
        assert 0.0 <= value <= 1.0


def test_weighted_vote_with_exact_weights():
    votes = [("cat", 0.5), ("dog", 0.25), ("dog", 0.125)]
    assert combine_weighted(votes, 0.1) == ("cat", 0.5 / 0.875)
    assert combine_weighted(votes[1:], 0.1) == ("dog", 1.0)
    assert combine_weighted([("x", 0.25), ("y", 0.25)], 0.1) == ("x", 0.5)
    assert combine_weighted([("y", 0.25), ("x", 0.25)], 0.1) == ("y", 0.5)


def test_vote_keys_structured_outputs_canonically():
    out, conf = combine_weighted(
        [({"b": 1, "a": [1, 2]}, 0.25), ({"a": [1, 2], "b": 1}, 0.25), ([1, 2], 0.5)], 0.1
    )
    assert out == {"b": 1, "a": [1, 2]}  # the first supporter's own value
    assert conf == 0.5  # a tie at 0.5 each, won by the first in link order
    # ints with bools or strings are discrete, even with a float among them
    assert combine_weighted([(1, 0.5), (True, 0.25), (True, 0.25)], 0.1) == (1, 0.5)
    assert combine_weighted([(1.5, 0.25), ("1.5", 0.75)], 0.1) == ("1.5", 0.75)


def test_weighted_mean_with_exact_weights():
    # mean = 0.5 * 2 + 0.25 * 2 + 0.25 * 6 = 3; tolerance 0.5 -> within 1.5 of 3
    assert combine_weighted([(2.0, 0.5), (2, 0.25), (6.0, 0.25)], 0.5) == (3.0, 0.75)
    assert combine_weighted([(2.0, 0.5), (2, 0.25), (6.0, 0.25)], 0.1) == (3.0, 0.0)
    assert combine_weighted([(2.0, 0.5), (2, 0.25), (6.0, 0.25)], 1.0) == (3.0, 1.0)
    # mean 0: the tolerance is absolute
    assert combine_weighted([(0.05, 0.5), (-0.05, 0.5)], 0.1) == (0.0, 1.0)
    assert combine_weighted([(1.0, 0.5), (-1.0, 0.5)], 0.1) == (0.0, 0.0)
    # non-finite outputs cannot be averaged: they vote
    assert combine_weighted([(math.inf, 0.75), (1.0, 0.25)], 0.1) == (math.inf, 0.75)


def test_zero_weights_count_equally_and_nothing_is_an_error():
    assert combine_weighted([("a", 0.0), ("b", 0.0), ("b", 0.0)], 0.1) == ("b", 2 / 3)
    with pytest.raises(ValueError, match="no model answered"):
        combine_weighted([], 0.1)
