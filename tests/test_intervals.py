"""Bootstrap intervals on synthetic predictions whose true interval is known."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from tunelab.measure.evaluate import macro_f1
from tunelab.measure.intervals import interval, paired_difference, stratified_interval


def accuracy(gold, predicted):
    return float(np.mean(gold == predicted))


def test_accuracy_interval_matches_the_binomial_normal_interval():
    n, right = 400, 320  # accuracy 0.8: the normal approximation's 95% half-width is 1.96 * sqrt(.8 * .2 / 400)
    gold, predicted = np.zeros(n, dtype=int), np.r_[np.zeros(right, dtype=int), np.ones(n - right, dtype=int)]
    low, high = interval(lambda idx: accuracy(gold[idx], predicted[idx]), n)
    half_width = 1.96 * np.sqrt(0.8 * 0.2 / n)
    assert low == pytest.approx(0.8 - half_width, abs=0.01) and high == pytest.approx(0.8 + half_width, abs=0.01)


def test_the_interval_narrows_as_the_test_set_grows():
    widths = []
    for n in (100, 1600):
        gold, predicted = np.zeros(n, dtype=int), (np.arange(n) % 4 == 0).astype(int)  # accuracy 0.75
        low, high = interval(lambda idx: accuracy(gold[idx], predicted[idx]), n)
        widths.append(high - low)
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.25)  # width ~ 1/sqrt(n)


def test_identical_predictors_cannot_be_told_apart_and_clearly_better_ones_can():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 300)
    noisy = np.where(rng.random(300) < 0.3, 1 - gold, gold)
    same = paired_difference(accuracy, gold, noisy, noisy.copy())
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0] and not same["distinguishable"]
    better = paired_difference(accuracy, gold, gold, noisy)
    assert better["interval"][0] > 0.2 and better["distinguishable"]


def test_paired_differences_are_narrower_than_the_unpaired_intervals_suggest():
    # Two predictors that differ on 6 of 400 examples: each alone is uncertain by +-4 points, their difference
    # is known far better because both are measured on the same resamples.
    gold = np.zeros(400, dtype=int)
    first = (np.arange(400) % 5 == 0).astype(int)
    second = first.copy()
    second[1:31:5] = 1  # 6 more mistakes
    alone = interval(lambda idx: accuracy(gold[idx], first[idx]), 400)
    paired = paired_difference(accuracy, gold, first, second)["interval"]
    assert paired[1] - paired[0] < (alone[1] - alone[0]) / 3


def test_stratified_resampling_keeps_each_group():
    scores = [np.array([0.9, 0.8, 0.85, 0.95]), np.array([0.2, 0.25, 0.1, 0.3, 0.2])]
    low, high = stratified_interval(lambda a, b: scores[0][a].mean() - scores[1][b].mean(), [4, 5])
    assert 0.55 < low < 0.665 < high < 0.8  # the point gap is 0.665; the extremes 0.5 and 0.85 are rare
    assert stratified_interval(lambda a, b: 0.0, [1, 5]) is None and interval(lambda idx: 0.0, 1) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=40))
def test_macro_f1_equals_scikit_learns(pairs):
    gold = np.array([g for g, _ in pairs])
    predicted = np.array([p for _, p in pairs])  # code 4: a label outside the task's four
    expected = f1_score(gold, predicted, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert macro_f1(gold, predicted, 4) == pytest.approx(expected)
