"""Label issues: planted label flips found at the top of the ranking from out-of-fold probabilities, nothing flagged
on a consistent model, the vectorized rule against a plain loop, stratified deterministic folds that never show a
judge what it judges, the label-quality ranking by hand and deaf to the last bits, input validation, issues counted
per class, and the judge the stage picks."""

import dataclasses
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from project import REPO, edit_params, fork, read_json, run

from imgpipe import settings
from imgpipe.config import TrainConfig
from imgpipe.errors import ConfigError
from imgpipe.evaluation.label_issues import (
    LabelIssues,
    class_thresholds,
    cross_fit_folds,
    find_label_issues,
    judging_folds,
    label_quality,
    out_of_fold,
    review,
)
from imgpipe.evaluation.results import best_over_seeds
from imgpipe.models.inference import logits_in_chunks
from imgpipe.training.loop import train

CENTRES = np.array([[0.0, 0.0], [6.0, 0.0], [3.0, 5.2]])  # ~6 apart: 3 standard deviations to each boundary
FLIPPED = np.array([3, 17, 42, 88, 120, 151, 199, 230, 261, 299])


def blobs(n=300, seed=0):
    """Three unit-variance Gaussian blobs in 2-D, labelled by blob, in a shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CENTRES))
    return CENTRES[labels] + rng.standard_normal((n, 2)), labels


def nearest_mean_model(points, labels, num_classes):
    """predict_fold for out_of_fold: class means of the training part, softmax over -squared distance / 2
    (the Gaussian posterior for unit-variance blobs with equal priors)."""

    def predict_fold(fold):
        train = np.concatenate([fold.train, fold.calibration])  # nothing to calibrate: it trains on both
        means = np.stack([points[train][labels[train] == k].mean(axis=0) for k in range(num_classes)])
        logits = -0.5 * ((points[fold.judged, None, :] - means[None]) ** 2).sum(axis=2)
        logits -= logits.max(axis=1, keepdims=True)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    return predict_fold


def test_planted_flips_rank_first_with_their_original_label():
    points, original = blobs()
    noisy = original.copy()
    noisy[FLIPPED] = (original[FLIPPED] + 1 + np.arange(len(FLIPPED)) % 2) % 3  # to either other class
    assert (noisy[FLIPPED] != original[FLIPPED]).all()

    probabilities = out_of_fold(nearest_mean_model(points, noisy, 3), noisy, folds=5, seed=0, num_classes=3)
    issues = find_label_issues(probabilities, noisy)

    assert len(np.intersect1d(issues.index[:10], FLIPPED)) >= 9
    assert len(issues) <= 15  # and few clean examples besides: the list is worth reviewing
    found = np.isin(issues.index, FLIPPED)
    np.testing.assert_array_equal(issues.suggested[found], original[issues.index[found]])
    np.testing.assert_array_equal(issues.given, noisy[issues.index])
    assert (np.diff(issues.score) <= 0).all() and (issues.score > 0).all()
    # Confident learning misses a flip only when the models are less sure of its true class than they are on
    # average on that class (a point towards a boundary): here index 199, 2.5 sd from its centre, p = 0.955
    # under class 2's threshold 0.974.  Over 200 random draws of this problem (blobs and flips), all 10 flips
    # were found in 85% of them, at least 9 in 99.5%.
    missed = np.setdiff1d(FLIPPED, issues.index)
    thresholds = class_thresholds(probabilities, noisy)
    assert (probabilities[missed, original[missed]] < thresholds[original[missed]]).all()


def test_consistent_predictions_have_no_issues():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=200)
    probabilities = rng.dirichlet(np.ones(4), size=200) * 0.4  # at most 0.4 spread over the classes ...
    probabilities[np.arange(200), labels] += 0.6  # ... and the given label always on top
    assert len(find_label_issues(probabilities.astype(np.float32), labels)) == 0
    assert len(find_label_issues(np.zeros((0, 4)), np.zeros(0, dtype=int))) == 0  # no examples at all


def issues_by_loop(probabilities, labels):
    """The rule written out one example at a time: [(index, given, suggested, score)], surest first."""
    probabilities = [[float(p) for p in row] for row in probabilities]
    num_classes = len(probabilities[0])
    thresholds = []
    for j in range(num_classes):
        own = [row[j] for row, y in zip(probabilities, labels) if y == j]
        thresholds.append(sum(own) / len(own) if own else float("inf"))  # unused class: never suggested
    issues = []
    for i, (row, y) in enumerate(zip(probabilities, labels)):
        suggested = None
        for j in range(num_classes):
            if j != y and row[j] >= thresholds[j] and (suggested is None or row[j] > row[suggested]):
                suggested = j
        if suggested is not None and row[suggested] > row[y]:
            issues.append((i, int(y), suggested, row[suggested] - row[y]))
    return sorted(issues, key=lambda issue: (-issue[3], issue[0]))


@pytest.mark.parametrize(
    "classes_used, dtype", [(5, np.float64), (5, np.float32), (4, np.float64)], ids=["all", "float32", "unused"]
)
def test_vectorized_rule_matches_a_plain_loop(classes_used, dtype):
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.full(5, 0.7), size=400).astype(dtype)
    labels = rng.integers(0, classes_used, size=400)  # "unused": class 4 labels nothing, so has no threshold

    issues = find_label_issues(probabilities, labels)
    expected = issues_by_loop(probabilities, labels)

    assert len(expected) > 50  # random probabilities: plenty of issues to compare
    np.testing.assert_array_equal(issues.index, [e[0] for e in expected])
    np.testing.assert_array_equal(issues.given, [e[1] for e in expected])
    np.testing.assert_array_equal(issues.suggested, [e[2] for e in expected])
    np.testing.assert_allclose(issues.score, [e[3] for e in expected], rtol=0, atol=1e-12)
    np.testing.assert_allclose(issues.score, issues.suggested_probability - issues.given_probability)
    if classes_used == 4:
        assert 4 not in issues.suggested
    capped = find_label_issues(probabilities, labels, max_share=0.05)  # at most 20 of 400: the surest ones
    assert len(capped) == 20
    np.testing.assert_array_equal(capped.index, issues.index[:20])


def test_thresholds_and_ties_by_hand():
    # Binary fractions, so that the sums are exact.  Thresholds: class 0 (rows 0, 1) (1 + 0.5) / 2 = 0.75; class 1
    # (rows 2-6) (0.375 + 0.75 + 0.25 + 0.25 + 0.125) / 5 = 0.35.  Row 1 (label 0): p_1 = 0.5 >= 0.35 but only
    # equals p_0, so the models do not prefer class 1.  Row 2 (label 1): p_0 = 0.625 > p_1 but under class 0's
    # 0.75.  Rows 4, 5: p_0 = 0.75, exactly the threshold (reaching it counts), equal scores 0.5, ranked by
    # position, after row 6 (0.875 - 0.125 = 0.75).
    probabilities = np.array([[1.0, 0.0], [0.5, 0.5], [0.625, 0.375], [0.25, 0.75], [0.75, 0.25], [0.75, 0.25], [0.875, 0.125]])
    labels = np.array([0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(class_thresholds(probabilities, labels), [0.75, 0.35])
    issues = find_label_issues(probabilities, labels)
    np.testing.assert_array_equal(issues.index, [6, 4, 5])
    np.testing.assert_array_equal(issues.score, [0.75, 0.5, 0.5])
    np.testing.assert_array_equal(issues.suggested, [0, 0, 0])
    np.testing.assert_array_equal(issues.given_probability, [0.125, 0.25, 0.25])
    np.testing.assert_array_equal(issues.head(2).index, [6, 4])


def test_cross_fit_folds_stratified_covering_and_seeded():
    labels = np.random.default_rng(3).integers(0, 4, size=103)
    folds = cross_fit_folds(labels, 5, seed=7)

    assert len(folds) == 5
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(103))  # each index exactly once
    per_class = np.array([np.bincount(labels[fold], minlength=4) for fold in folds])  # (fold, class)
    assert (per_class.max(axis=0) - per_class.min(axis=0) <= 1).all()
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    again = cross_fit_folds(labels, 5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    other = cross_fit_folds(labels, 5, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other))
    with pytest.raises(ValueError, match="folds must be >= 2"):
        cross_fit_folds(labels, 1, seed=0)


def test_no_judge_trains_on_calibrates_on_or_is_shown_what_it_judges():
    labels = np.random.default_rng(4).integers(0, 3, size=203)
    plan = judging_folds(labels, 4, seed=5)

    assert len(plan) == 4
    np.testing.assert_array_equal(np.sort(np.concatenate([fold.judged for fold in plan])), np.arange(203))  # each once
    for fold in plan:
        parts = [fold.train, fold.calibration, fold.judged]
        assert sum(map(len, parts)) == 203 and len(np.unique(np.concatenate(parts))) == 203  # disjoint, covering
        assert abs(len(fold.calibration) - (203 - len(fold.judged)) / 8) <= 3  # an eighth of the rest, per class
        per_class = np.bincount(labels[fold.calibration], minlength=3) / np.bincount(labels[fold.train], minlength=3)
        assert np.ptp(per_class) < 0.05
    assert not np.array_equal(plan[0].calibration, judging_folds(labels, 4, seed=6)[0].calibration)


def test_a_class_with_one_image_outside_the_judged_fold_stays_in_the_judges_training():
    """Calibration is dealt from its first fold, class 0 first: a class with one image left outside the judged fold went
    whole to calibration, and the judge, never taught it, flagged the class's images for a model problem."""
    labels = np.array([0, 0] + [1] * 40 + [2] * 40)
    for seed in range(5):
        for fold in judging_folds(labels, 4, seed=seed):
            assert set(labels[fold.train]) == set(labels[np.concatenate([fold.train, fold.calibration])]), seed
            assert len(fold.calibration)


def test_out_of_fold_puts_each_judges_answers_in_input_order():
    labels = np.arange(20) % 2

    def predict_fold(fold):
        return np.column_stack([fold.judged / 100.0, 1 - fold.judged / 100.0])  # row i: the index, to check order

    probabilities = out_of_fold(predict_fold, labels, folds=4, seed=0, num_classes=2)
    np.testing.assert_allclose(probabilities[:, 0], np.arange(20) / 100.0)
    with pytest.raises(ValueError, match="predict_fold returned shape"):
        out_of_fold(lambda fold: np.ones((len(fold.judged), 3)) / 3, labels, 4, 0, num_classes=2)


def test_label_quality_by_hand():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.5, 0.5, 0.0]])
    labels = np.array([0, 2, 2, 1])
    np.testing.assert_allclose(label_quality(probabilities, labels), [0.7, 0.3, 0.5, 0.5])
    # (p(given) - the largest other p + 1) / 2
    np.testing.assert_allclose(label_quality(probabilities, labels, "normalized_margin"),
                               [(0.7 - 0.2 + 1) / 2, (0.3 - 0.6 + 1) / 2, (0.5 - 0.25 + 1) / 2, 0.5])
    with pytest.raises(ValueError, match="kind must be one of self_confidence, normalized_margin"):
        label_quality(probabilities, labels, "margin")


def test_the_review_lists_the_flagged_then_the_most_suspicious_others():
    # Rows 0-1 labelled 0, rows 2-5 labelled 1.  Thresholds: class 0 (0.9 + 0.8) / 2 = 0.85, class 1
    # (0.05 + 0.4 + 0.7 + 0.3) / 4 = 0.3625.  Row 2 (p_0 = 0.95 >= 0.85) is flagged; row 3 (p_0 = 0.6 < 0.85) is not,
    # though its label quality, 0.4, is the second lowest; row 5 (p_1 = 0.3) then row 1 (0.8) and row 4 (0.7) follow.
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 1, 1, 1])
    verdict = review(probabilities, labels)
    np.testing.assert_array_equal(verdict.flagged, [False, False, True, False, False, False])
    np.testing.assert_array_equal(verdict.suggested, [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(verdict.listed(np.arange(6), review=3), [2, 5, 3, 4])
    np.testing.assert_array_equal(verdict.listed(np.arange(6), review=0), [2])
    # Equal quality goes by id: row 5 and a copy of it at the end, listed under ids that put the copy first.
    verdict = review(np.vstack([probabilities, probabilities[5]]), np.append(labels, 1))
    np.testing.assert_array_equal(verdict.listed(np.array(["b", "c", "d", "e", "f", "g", "a"]), review=2), [2, 6, 5])


def test_the_ranking_is_deaf_to_the_last_bits_of_floating_point():
    """The same images judged on another machine, or in another batch position, differ in the last bits: where two
    images' quality is equal but for those bits, the order must not follow them, but the ids."""
    rng = np.random.default_rng(9)
    base = rng.dirichlet(np.full(5, 0.5), size=60)
    probabilities = base[np.arange(600) % 60]  # every judgement ten times over: equal qualities, as duplicates get
    labels = np.tile(rng.integers(0, 5, size=60), 10)
    ids = np.array([f"train:{i}" for i in rng.permutation(600)])
    jitter = probabilities * (1 + rng.uniform(-4e-7, 4e-7, probabilities.shape))  # float32's last bits
    jitter /= jitter.sum(axis=1, keepdims=True)

    orders = [review(p, labels).listed(ids, review=600) for p in (probabilities, jitter)]
    np.testing.assert_array_equal(orders[0], orders[1])
    raw = [np.lexsort((ids, label_quality(p, labels))) for p in (probabilities, jitter)]
    assert not np.array_equal(*raw)  # unrounded, the jitter would have reordered them


GOOD = np.full((4, 3), 1 / 3)


@pytest.mark.parametrize(
    "probabilities, labels, message",
    [
        (np.full(4, 0.25), np.zeros(4, dtype=int), r"probabilities must be \(N, K\)"),
        (GOOD, np.zeros(3, dtype=int), r"labels must be \(N,\) = \(4,\)"),
        (GOOD, np.zeros((4, 1), dtype=int), r"labels must be \(N,\)"),
        (GOOD, np.array([0, 1, 2, 3]), r"labels must be in \[0, 3\)"),
        (GOOD, np.array([0, -1, 2, 1]), r"labels must be in \[0, 3\)"),
        (GOOD, np.array([0.0, 1.0, 2.0, 1.0]), "labels must be integers"),
        (np.where(np.eye(4, 3) > 0, np.nan, 0.5), np.zeros(4, dtype=int), "finite and non-negative"),
        (np.tile([1.2, -0.2, 0.0], (4, 1)), np.zeros(4, dtype=int), "finite and non-negative"),  # rows sum to 1
        (GOOD * 3, np.zeros(4, dtype=int), "rows must sum to 1"),
    ],
    ids=["probabilities-1d", "labels-length", "labels-2d", "label-too-big", "label-negative", "labels-float", "nan", "negative", "logits"],
)
def test_invalid_inputs_raise(probabilities, labels, message):
    with pytest.raises(ValueError, match=message):
        find_label_issues(probabilities, labels)


def test_invalid_max_share_raises():
    with pytest.raises(ValueError, match="max_share must be in"):
        find_label_issues(GOOD, np.zeros(4, dtype=int), max_share=1.5)


def test_counts_per_given_class():
    issues = find_label_issues(
        np.array([[0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]),
        np.array([0, 0, 1, 1, 0]),
    )
    np.testing.assert_array_equal(issues.counts(3), [3, 2, 0])  # class 2 labels nothing: zero, not missing
    with pytest.raises(ValueError, match="num_classes=1"):
        issues.counts(1)
    empty = LabelIssues(*(np.zeros(0, dtype=int),) * 3, *(np.zeros(0),) * 3)
    np.testing.assert_array_equal(empty.counts(2), [0, 0])


def label_issues_stage():
    spec = importlib.util.spec_from_file_location("label_issues_stage", REPO / "stages" / "label_issues.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planted_flips_in_every_split_of_the_real_digits_are_found_by_the_stages_judges(digits_prepared):
    """The stage's own cross-fitting (an MLP for each of four folds of all three splits): labels flipped on purpose
    in train, validation and test come out at the top of the ranking, their true class suggested."""
    stage, data = label_issues_stage(), digits_prepared
    pool = stage.pooled(data)
    rng = np.random.default_rng(7)
    ends = np.cumsum([len(data.train), len(data.val)])
    flipped = np.concatenate([rng.choice(np.arange(0, ends[0]), 6, replace=False),  # train, val and test images
                              rng.choice(np.arange(*ends), 2, replace=False), rng.choice(np.arange(ends[1], len(pool)), 2, replace=False)])
    labels = pool.labels.copy()
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, 10)) % 10
    noisy = dataclasses.replace(pool, labels=labels)
    variant = settings.Variant("mlp", "mlp", {"hidden": [256, 128], "dropout": 0.1}, TrainConfig(epochs=10, device="cpu"))

    verdict = review(stage.cross_fitted(variant, data, noisy, 4, torch.device("cpu")), labels)
    ranks = np.flatnonzero(np.isin(verdict.listed(np.arange(len(pool)), review=len(pool)), flipped))
    # Of 1,797 images, the 10 flips rank among the first 20, 8 of them among the first 10. (A flip can rank lower
    # where the image is ambiguous: a 1 written like a 7, now labelled 7.)
    assert ranks.max() < 20 and (ranks < 10).sum() >= 8, ranks
    # Confident learning's flag is the stricter cut: 8 of these 10 on the splits scikit-learn drew, 7 on imgpipe's
    # own (all 10 then ranked in the first 13).
    flagged = flipped[verdict.flagged[flipped]]
    assert len(flagged) >= 7, (ranks, verdict.flagged[flipped])
    np.testing.assert_array_equal(verdict.suggested[flagged], pool.labels[flagged])  # the true class


def test_the_stages_judges_never_judge_an_image_they_learned(digits_prepared):
    """Labels that carry no signal (random), learned by heart: a model that trained on the images it judges agrees
    with their labels, one that did not can only guess (1 in 10)."""
    stage = label_issues_stage()
    pool = stage.pooled(digits_prepared).subset(np.arange(200))
    pool = dataclasses.replace(pool, labels=np.random.default_rng(3).integers(0, 10, 200))
    data = dataclasses.replace(digits_prepared, train=pool, val=pool, known_fingerprint=None)
    variant = settings.Variant("mlp", "mlp", {"hidden": [512], "dropout": 0.0}, TrainConfig(epochs=30, device="cpu", batch_size=32))

    learned = train(variant.model, variant.settings, data, variant.config).model
    seen = logits_in_chunks(learned, pool.images, torch.device("cpu")).softmax(1).numpy()[np.arange(200), pool.labels]
    judged = stage.cross_fitted(variant, data, pool, 4, torch.device("cpu"))[np.arange(200), pool.labels]
    assert seen.mean() > 0.4 and judged.mean() < 0.2, (seen.mean(), judged.mean())  # measured: 0.53 and 0.10


def test_the_stage_trains_calibrates_and_picks_its_epoch_on_images_it_does_not_judge(digits_prepared, monkeypatch):
    """What the stage hands its judges, recorded: the images each trained on (its train split), picked its epoch and fit
    its temperature on (its val split) and judged, by the index each image carries in its first two pixels. The
    judging plan's own test checks the plan; this one, that the stage follows it."""
    stage = label_issues_stage()
    pool = stage.pooled(digits_prepared).subset(np.arange(300))
    images = pool.images.copy()
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(300) // 256, np.arange(300) % 256
    pool = dataclasses.replace(pool, images=images)
    indices = lambda batch: (np.asarray(batch)[:, 0, 0, 0].astype(int) * 256 + np.asarray(batch)[:, 0, 0, 1]).tolist()  # noqa: E731
    judges = []

    class Judge(torch.nn.Module):
        def forward(self, pixels):
            judges[-1]["judged"] += indices(pixels.cpu())
            return torch.zeros(len(pixels), 10)

    def fake_train(model, model_settings, data, config):
        judges.append({"train": indices(data.train.images), "val": indices(data.val.images), "test": len(data.test), "judged": []})
        return SimpleNamespace(model=Judge())

    def fake_calibrate(model, split, device):
        judges[-1]["calibrated"] = indices(split.images)

    monkeypatch.setattr(stage, "train", fake_train)
    monkeypatch.setattr(stage, "calibrate", fake_calibrate)
    variant = settings.Variant("linear", "linear", {}, TrainConfig(epochs=1, device="cpu"))
    stage.cross_fitted(variant, digits_prepared, pool, 3, torch.device("cpu"), repeats=2)
    assert len(judges) == 6  # 3 folds, 2 repeats
    for judge in judges:
        assert judge["test"] == 0 and judge["calibrated"] == judge["val"]  # the temperature on its epoch-picking images
        assert not set(judge["judged"]) & (set(judge["train"]) | set(judge["val"]))
    for repeat in (judges[:3], judges[3:]):
        assert sorted(i for judge in repeat for i in judge["judged"]) == list(range(300))  # each image judged once a repeat


def test_repeats_average_cross_fittings_of_their_own_folds_and_seeds(digits_prepared):
    stage = label_issues_stage()
    pool = stage.pooled(digits_prepared).subset(np.arange(300))
    variant = settings.Variant("linear", "linear", {}, TrainConfig(epochs=2, device="cpu", seed=5))

    def judged(seed, repeats=1):
        return stage.cross_fitted(dataclasses.replace(variant, config=dataclasses.replace(variant.config, seed=seed)),
                                  digits_prepared, pool, 3, torch.device("cpu"), repeats)

    first, second = judged(5), judged(6)
    assert np.abs(first - second).max() > 0.05  # other folds, other weights: other answers
    np.testing.assert_allclose(judged(5, repeats=2), (first + second) / 2, rtol=0, atol=1e-6)


VALIDATION = {"centroid": (0.90, 0.30), "linear": (0.96, 0.16), "mlp": (0.98, 0.09), "cnn": (0.98, 0.12)}


def trained(validation: dict) -> dict:
    """variant -> seed -> its metrics/train file's val figures: two seeds, their means the (accuracy, loss) given."""
    return {variant: {0: {"val_accuracy": accuracy - 0.01, "val_loss": loss}, 1: {"val_accuracy": accuracy + 0.01, "val_loss": loss}}
            for variant, (accuracy, loss) in validation.items()}


@pytest.mark.parametrize("named, chosen", [(None, "mlp"), ("cnn", "cnn"), ("linear", "linear")])
def test_the_judge_is_the_one_named_or_else_the_best_on_validation(named, chosen):
    """null: the most accurate on validation, the lower loss on a tie. That it follows the variants the user trains,
    not every metrics file left behind, is test_the_default_judge_follows_an_experiment_that_drops_the_cnn's."""
    params = {"train": {"variants": list(VALIDATION)}, "label_issues": {"variant": named}}
    assert settings.chosen_variant(params, "label_issues.variant", best_over_seeds(trained(VALIDATION))) == chosen


def test_a_judge_named_but_not_trained_is_refused_in_one_line():
    params = {"train": {"variants": ["mobilenet_v3_small", "efficientnet_b0"]}, "label_issues": {"variant": "cnn"}}
    with pytest.raises(ConfigError) as error:
        settings.chosen_variant(params, "label_issues.variant", "mobilenet_v3_small")
    assert str(error.value) == ("params.yaml: label_issues.variant: 'cnn' is not among train.variants (mobilenet_v3_small, "
                                "efficientnet_b0); name one of them, or null for the one best on validation")


def test_the_default_judge_follows_an_experiment_that_drops_the_cnn(pipeline, tmp_path):
    """The stage in a project whose train.variants no longer lists the cnn (as a torchvision-only experiment's
    would not): label_issues.variant null judges with the best it has, the centroid here."""
    project = fork(pipeline, tmp_path / "project")
    edit_params(project, train__variants=["centroid"], label_issues__variant=None)
    done = run(["python", "stages/label_issues.py"], project)
    assert "label issues judged by centroid's recipe (best on validation: val accuracy " in done.stdout
    summary = read_json(project / "metrics/label_issues.json")
    assert summary["judged_by"] == "centroid" and summary["why"].endswith("(label_issues.variant: null)")


def test_a_device_the_machine_lacks_fails_the_stage_in_one_line_naming_the_key(pipeline, tmp_path):
    """As the train stage does: models trained elsewhere, then label_issues rerun here alone."""
    if torch.cuda.is_available():
        pytest.skip("this machine has the device")
    project = fork(pipeline, tmp_path / "project")
    edit_params(project, train__device="cuda")
    done = run(["python", "stages/label_issues.py"], project, check=False)
    assert done.returncode == 1 and done.stderr.startswith("error: params.yaml: train.device: ") and done.stderr.count("\n") == 1
