"""Intervals and paired tests against SciPy and scikit-learn, and against hand computations."""

import math

import numpy as np
import pytest
from scipy import stats as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score

from imgpipe.evaluation import scores
from imgpipe.evaluation.scores import (
    bootstrap_macro_f1,
    bootstrap_macro_f1_interval,
    confusion_matrix,
    per_class_scores,
    resample_indices,
)
from imgpipe.evaluation.stats import holm_adjusted, mcnemar_exact, paired_tests, wilson_interval


@pytest.mark.parametrize("successes, trials", [(0, 1), (1, 1), (0, 10), (8, 10), (5, 10), (351, 360), (360, 360),
                                               (1, 2000), (9000, 10000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_agrees_with_scipy(successes, trials, confidence):
    expected = sp.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    low, high = wilson_interval(successes, trials, confidence)
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)
    assert 0 <= low <= successes / trials <= high <= 1


def test_wilson_interval_by_hand():
    z = 1.959963984540054  # the normal distribution's 97.5% quantile
    # No successes: the lower bound is 0 and the upper one reduces to z^2 / (n + z^2).
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z**2 / (10 + z**2)))
    # 8 of 10: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71675, half-width z/(1 + z^2/10) * sqrt(0.016 + z^2/400) = 0.22658
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.71675 - 0.22658, abs=1e-4) and high == pytest.approx(0.71675 + 0.22658, abs=1e-4)
    for successes, trials in ((3, 0), (11, 10), (-1, 10)):
        with pytest.raises(ValueError, match="need 0 <= successes"):  # the refusal, not sqrt's domain error
            wilson_interval(successes, trials)


@pytest.mark.parametrize("first, second", [(0, 0), (0, 1), (0, 5), (0, 40), (3, 1), (4, 5), (8, 4), (5, 5), (20, 7),
                                           (1500, 1600), (1450, 1650), (2500, 2500), (10, 2990)])
def test_mcnemar_exact_agrees_with_scipys_binomial_test(first, second):
    expected = sp.binomtest(first, first + second, 0.5).pvalue if first + second else 1.0
    assert mcnemar_exact(first, second) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert mcnemar_exact(second, first) == mcnemar_exact(first, second)


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 0) == 1.0  # nothing tells the two apart
    assert mcnemar_exact(0, 5) == 2 / 2**5  # all five discordant images one way: 2 * (1/2)^5
    assert mcnemar_exact(1, 4) == pytest.approx(2 * (1 + 5) / 2**5)  # 2 * P[X <= 1], X ~ Bin(5, 1/2)
    assert mcnemar_exact(7, 7) == 1.0


def test_holm_adjusted_by_hand():
    # Sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04, raised to the 0.06 before it. Given order kept.
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjusted([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # capped at 1 only when above it
    assert holm_adjusted([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm_adjusted([]) == []


def test_paired_tests_on_hand_made_correctness():
    # 40 images. cnn and mlp: cnn alone right on 10, mlp alone on 1. cnn and linear: 12 and 0. mlp and linear: 3 and 0.
    cnn = np.ones(40, bool)
    cnn[:2] = False
    mlp = np.ones(40, bool)
    mlp[:2] = False
    mlp[2:12] = False
    mlp[0] = True  # images 1..11 wrong: cnn alone right on 2..11 (10), mlp alone right on 0 (1)
    linear = np.ones(40, bool)
    linear[:14] = False  # wrong on 0..13
    tests = paired_tests({"cnn": cnn, "mlp": mlp, "linear": linear})
    assert [(t.first, t.second, t.only_first_right, t.only_second_right) for t in tests] == [
        ("cnn", "mlp", 10, 1), ("cnn", "linear", 12, 0), ("mlp", "linear", 3, 0)]
    p_values = [sp.binomtest(1, 11).pvalue, sp.binomtest(0, 12).pvalue, sp.binomtest(0, 3).pvalue]
    assert [t.p_value for t in tests] == pytest.approx(p_values)
    # Holm: cnn/linear (0.000488) * 3, cnn/mlp (0.01172) * 2, mlp/linear (0.25) * 1
    assert [t.adjusted_p_value for t in tests] == pytest.approx([2 * p_values[0], 3 * p_values[1], p_values[2]])
    assert [t.real for t in tests] == [True, True, False]
    assert [t.better for t in tests] == ["cnn", "cnn", None]
    assert tests[0].other("mlp") == "cnn" and tests[0].level == 0.05
    # At 1%, cnn vs mlp (adjusted 0.023) is no longer called real.
    assert [t.real for t in paired_tests({"cnn": cnn, "mlp": mlp, "linear": linear}, level=0.01)] == [False, True, False]


def test_paired_tests_need_the_same_images():
    assert paired_tests({"cnn": np.ones(5, bool)}) == []
    with pytest.raises(ValueError, match="same images"):
        paired_tests({"cnn": np.ones(5, bool), "mlp": np.ones(6, bool)})


def test_a_stack_of_confusion_matrices_is_one_per_row():
    rng = np.random.default_rng(0)
    actual, predicted = rng.integers(0, 4, (3, 50)), rng.integers(0, 4, (3, 50))
    stacked = confusion_matrix(actual, predicted, 4)
    assert stacked.shape == (3, 4, 4)
    for row in range(3):
        np.testing.assert_array_equal(stacked[row], sk_confusion_matrix(actual[row], predicted[row], labels=range(4)))
        np.testing.assert_array_equal(per_class_scores(stacked)["f1"][row], per_class_scores(stacked[row])["f1"])


@pytest.fixture(scope="module")
def digits_predictions(digits_prepared):
    """A realistic test split's labels and predictions: logistic regression on the prepared digits."""
    train, test = digits_prepared.train, digits_prepared.test
    model = LogisticRegression(max_iter=2000).fit(train.images.reshape(len(train), -1) / 255, train.labels)
    return test.labels, model.predict(test.images.reshape(len(test), -1) / 255)


def test_bootstrap_macro_f1_of_each_resample_agrees_with_scikit_learn(digits_predictions):
    actual, predicted = digits_predictions
    scores = bootstrap_macro_f1(actual, predicted, 10, resamples=20, seed=3)
    for resample in (0, 7, 19):
        drawn = resample_indices(len(actual), resample, seed=3)
        # Over the classes the resample draws or predicts (scikit-learn's default, as evaluate's macro-F1): a class
        # the resample happens to miss entirely has no F1 there.
        present = set(actual[drawn]) | set(predicted[drawn])
        expected = f1_score(actual[drawn], predicted[drawn], average="macro", labels=sorted(present), zero_division=0)
        assert scores[resample] == pytest.approx(expected, abs=1e-12)


def test_a_class_a_resample_misses_does_not_pull_the_interval_below_the_score():
    actual = np.concatenate([np.repeat(np.arange(9), 30), [9, 9]])  # class 9: two test images
    low, high = bootstrap_macro_f1_interval(actual, actual, 10)  # right on every one: macro-F1 1 in every resample
    assert (low, high) == (1.0, 1.0)  # counting a missed class 0: about 0.9
    assert bootstrap_macro_f1_interval(actual, actual, 11) == (1.0, 1.0)  # a class never in the split nor said: no F1
    nine = np.repeat(np.arange(9), 30)
    said = nine.copy()
    said[0] = 9  # one image said to be class 9, which has no test images: F1 0 where a resample draws that image
    low, high = bootstrap_macro_f1_interval(nine, said, 10)
    assert low < 0.91 and high == 1.0  # 0.9 with it; 1.0 in the resamples that missed it


def test_macro_scores_count_the_classes_in_the_split_or_said_as_scikit_learn_does():
    """A perfect model on a test split without class 2 scores macro-F1 1, not 2/3 (the absent class counted 0)."""
    from sklearn.metrics import f1_score, precision_score

    actual = np.array([0, 0, 1, 1, 1])
    confusion = scores.confusion_matrix(actual, actual, 3)
    per_class = scores.per_class_scores(confusion)
    assert scores.macro(per_class["f1"], confusion) == 1.0 == f1_score(actual, actual, average="macro")
    said = np.array([0, 2, 1, 1, 1])  # class 2, absent from the split, said of an image: counted, F1 0
    confusion = scores.confusion_matrix(actual, said, 3)
    per_class = scores.per_class_scores(confusion)
    assert scores.macro(per_class["f1"], confusion) == pytest.approx(f1_score(actual, said, average="macro", zero_division=0))
    assert scores.macro(per_class["precision"], confusion) == pytest.approx(
        precision_score(actual, said, average="macro", zero_division=0))


def test_bootstrap_resamples_draw_with_replacement():
    drawn = resample_indices(1000, 0, seed=0)
    assert drawn.shape == (1000,) and drawn.min() >= 0 and drawn.max() < 1000
    assert 550 < len(np.unique(drawn)) < 710  # about 1 - 1/e = 63% distinct, as sampling with replacement gives


def test_bootstrap_interval_is_repeatable_and_holds_the_point_estimate(digits_predictions):
    actual, predicted = digits_predictions
    interval = bootstrap_macro_f1_interval(actual, predicted, 10, seed=0)
    assert bootstrap_macro_f1_interval(actual, predicted, 10, seed=0) == interval
    assert bootstrap_macro_f1_interval(actual, predicted, 10, seed=1) != interval
    point = f1_score(actual, predicted, average="macro", labels=range(10), zero_division=0)
    low, high = interval
    assert low < point < high and high - low < 0.1
    wider = bootstrap_macro_f1_interval(actual, predicted, 10, confidence=0.99, seed=0)
    assert wider[0] <= low and high <= wider[1]


def test_bootstrap_does_not_depend_on_how_resamples_are_batched(digits_predictions, monkeypatch):
    actual, predicted = digits_predictions
    whole = bootstrap_macro_f1(actual, predicted, 10, resamples=50, seed=0)
    monkeypatch.setattr(scores, "_BATCH_ELEMENTS", 7 * len(actual))  # batches of 7 resamples, the last one short
    np.testing.assert_array_equal(bootstrap_macro_f1(actual, predicted, 10, resamples=50, seed=0), whole)


def test_bootstrap_on_thousands_of_images_is_tight_around_the_truth():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 10, 12000)
    predicted = np.where(rng.random(12000) < 0.9, actual, rng.integers(0, 10, 12000))
    low, high = bootstrap_macro_f1_interval(actual, predicted, 10, resamples=200)
    point = f1_score(actual, predicted, average="macro", zero_division=0)
    # With N images the standard error is about sqrt(F1 (1 - F1) / N) = 0.0027: the 95% interval spans about 0.011.
    assert low < point < high and 0.005 < high - low < 0.02
    assert math.isclose((low + high) / 2, point, abs_tol=0.003)
