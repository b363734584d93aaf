"""Model problem or label problem: which given labels are probably wrong, judged from out-of-sample predicted
probabilities.

Method: label issues are found by a stricter form of confident learning's rule (Northcutt, Jiang & Chuang, JAIR
2021) - an example is flagged when the out-of-sample probability of some other class j reaches that class's
threshold t_j (the mean probability the models give class j on the examples labelled j) and exceeds the
probability of the given label. (The paper's rule lets the given label compete only where it reaches its own
threshold, so it also flags an example whose given label is below its threshold but more probable than the other
class: more found, more of them wrong.) find_label_issues orders its issues by p(suggested) - p(given); the
stage's list goes by label quality (`label_quality`).

Why this method: the per-class thresholds adapt to how confident the models are on each class (a hard class
whose correctly labelled examples get p = 0.6 still counts as "confidently j" at 0.6, an easy one needs 0.99),
so no global cut-off has to be tuned, and requiring p(suggested) > p(given) keeps a well-fitted model from
reporting anything.  The probabilities must be out-of-sample (`cross_fit_folds`, `out_of_fold`): a model that
trained on an image has memorised its label, noisy or not, and would vouch for it.

Only numpy is imported, so that the rule can be checked, and reused, apart from the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Rows of a float32 softmax sum to 1 within ~1e-5 even over thousands of classes; rows further off than this
# are not probabilities (logits or scores passed by mistake), and the thresholds would mean nothing.
ROW_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no single truth value to compare by
class LabelIssues:
    """The flagged examples, most certain issue first; every field is an array of one entry per issue."""

    index: np.ndarray  # position of the example in the input
    given: np.ndarray  # the label it has
    suggested: np.ndarray  # the label the models believe
    given_probability: np.ndarray
    suggested_probability: np.ndarray
    score: np.ndarray  # suggested_probability - given_probability: higher, surer

    def __post_init__(self):
        if len({len(value) for value in vars(self).values()}) > 1:
            raise ValueError("LabelIssues: all fields must have one entry per issue")

    def __len__(self) -> int:
        return len(self.index)

    def counts(self, num_classes: int) -> np.ndarray:
        """Issues per given class (length num_classes): which classes' labels to review first."""
        if len(self) and self.given.max() >= num_classes:
            raise ValueError(f"num_classes={num_classes} but an issue has given label {self.given.max()}")
        return np.bincount(self.given, minlength=num_classes)

    def head(self, n: int) -> LabelIssues:
        """The n most certain issues (a review budget)."""
        return LabelIssues(**{name: value[:n] for name, value in vars(self).items()})


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray, *, max_share: float = 1.0) -> LabelIssues:
    """The examples whose given label is probably wrong, by confident learning (see the module docstring).

    probabilities: (N, K) out-of-sample predicted probabilities, rows summing to 1 up to float32 rounding.
    labels: (N,) given labels in [0, K).
    max_share: keep at most floor(max_share * N) issues, the most certain ones (1.0: no cap); a cap for when
    a weak model would otherwise flag a large part of the data, which is then a model problem, not a label one.

    A class that no example is labelled with has no threshold (nothing to average); it is never suggested,
    as in cleanlab (whose threshold is then NaN), because there is no measure of how sure the models are
    when they are right about it, and an unused class is more likely absent from the data than mislabelled.
    """
    probabilities, labels = _validated(probabilities, labels)
    if not 0.0 <= max_share <= 1.0:
        raise ValueError(f"max_share must be in [0, 1], got {max_share}")
    rows = np.arange(len(labels))
    candidates = _candidates(probabilities, labels, class_thresholds(probabilities, labels))
    suggested = np.argmax(candidates, axis=1)  # ties: the lowest class, a fixed rule
    suggested_probability = candidates[rows, suggested]  # -inf where no class qualifies
    given_probability = probabilities[rows, labels]
    flagged = np.flatnonzero(suggested_probability > given_probability)
    score = suggested_probability[flagged] - given_probability[flagged]
    order = np.lexsort((flagged, -score))  # surest first; equal scores by input position, for stability
    keep = order[: math.floor(max_share * len(labels) + 1e-9)]  # + 1e-9: 0.29 * 100 is 28.999...
    index = flagged[keep]
    return LabelIssues(
        index=index,
        given=labels[index],
        suggested=suggested[index],
        given_probability=given_probability[index],
        suggested_probability=suggested_probability[index],
        score=score[keep],
    )


def class_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the mean predicted probability of class j over the examples labelled j; +inf for an unused class,
    so that no probability reaches it (see find_label_issues)."""
    num_classes = probabilities.shape[1]
    own = probabilities[np.arange(len(labels)), labels]
    sums = np.bincount(labels, weights=own, minlength=num_classes)
    sizes = np.bincount(labels, minlength=num_classes)
    return np.divide(sums, sizes, out=np.full(num_classes, np.inf), where=sizes > 0)


def _candidates(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The probabilities of the classes an example could be relabelled to (another class at or above its
    threshold), -inf elsewhere, so that an argmax picks the suggested class among them."""
    candidates = np.where(probabilities >= thresholds, probabilities, -np.inf)
    candidates[np.arange(len(labels)), labels] = -np.inf  # the given label is no suggestion
    return candidates


def _validated(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    # float64 throughout: float32 differences would tie examples the ranking should separate.
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape[1] < 1:
        raise ValueError(f"probabilities must be (N, K), got shape {probabilities.shape}")
    if labels.ndim != 1 or len(labels) != len(probabilities):
        raise ValueError(f"labels must be (N,) = ({len(probabilities)},), got shape {labels.shape}")
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    num_classes = probabilities.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if (np.abs(probabilities.sum(axis=1) - 1) > ROW_SUM_TOLERANCE).any():
        raise ValueError(f"probabilities rows must sum to 1 (within {ROW_SUM_TOLERANCE}): logits passed?")
    return probabilities, labels


def cross_fit_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """The held-out indices of each of `folds` folds (each sorted), stratified by class, together covering
    every index exactly once, the same for the same seed.

    Each class's examples, in a seeded random order, are dealt to the folds in turn, so every class is spread
    as evenly as it can be (per-fold counts differ by at most 1); the dealing carries on from fold to fold
    across classes, so the fold sizes also differ by at most 1.  A class with a single example is missing from
    the training part of the fold that holds it: that model cannot predict it, so its out-of-sample probability
    is low and it may be flagged (judging_folds keeps every other class's last images out of calibration).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (one to hold out, one to train on), got {folds}")
    if folds > len(labels):
        raise ValueError(f"folds ({folds}) must not exceed the number of examples ({len(labels)})")
    shuffled = np.random.default_rng(seed).permutation(len(labels))
    # A stable sort by class keeps the shuffled order within each class: the classes, one after another.
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]
    fold_of = np.arange(len(labels)) % folds  # dealt in turn, carrying on across class boundaries
    return [np.sort(by_class[fold_of == fold]) for fold in range(folds)]


# A judge keeps this share of its training part aside (stratified) to pick its kept epoch and fit its temperature
# on: images it then neither trained on nor judges, so no image's probabilities were tuned to its own label.
CALIBRATION_SHARE = 1 / 8


@dataclass(frozen=True, eq=False)
class Fold:
    """One judge's rows of the pool: it trains on `train`, picks its epoch and temperature on `calibration`, and
    judges `judged`; the three are disjoint."""

    train: np.ndarray
    calibration: np.ndarray
    judged: np.ndarray


def judging_folds(labels: np.ndarray, folds: int, seed: int, calibration_share: float = CALIBRATION_SHARE) -> list[Fold]:
    """Cross-fitting over the whole pool: `folds` stratified folds (cross_fit_folds), each judged by a model of
    the other folds' images, less a stratified `calibration_share` of them kept for its calibration."""
    labels = np.asarray(labels)
    if not 0 < calibration_share < 1:
        raise ValueError(f"calibration_share must be in (0, 1), got {calibration_share}")
    plan = []
    for fold, judged in enumerate(cross_fit_folds(labels, folds, seed)):
        rest = np.setdiff1d(np.arange(len(labels)), judged, assume_unique=True)
        parts = max(2, min(len(rest), round(1 / calibration_share)))
        calibration = rest[cross_fit_folds(labels[rest], parts, seed + 1 + fold)[0]]
        train = np.setdiff1d(rest, calibration, assume_unique=True)
        # A class with one image left outside the judged fold would go whole to calibration (dealing starts at fold 0,
        # always so for class 0): the judge would never learn it, and flag its images for a model problem.
        alone = np.isin(labels[calibration], labels[train], invert=True)
        if alone.any() and not alone.all():
            calibration, train = calibration[~alone], np.sort(np.concatenate([train, calibration[alone]]))
        plan.append(Fold(train, calibration, judged))
    return plan


def out_of_fold(
    predict_fold: Callable[[Fold], np.ndarray],
    labels: np.ndarray,
    folds: int,
    seed: int,
    num_classes: int,
    calibration_share: float = CALIBRATION_SHARE,
) -> np.ndarray:
    """(N, num_classes) out-of-sample probabilities in input order: for each Fold of `judging_folds`,
    `predict_fold(fold)` trains on fold.train, calibrates on fold.calibration, and returns the probabilities of
    fold.judged, (len(fold.judged), num_classes)."""
    labels = np.asarray(labels)
    probabilities = np.full((len(labels), num_classes), np.nan)
    for fold in judging_folds(labels, folds, seed, calibration_share):
        predicted = np.asarray(predict_fold(fold), dtype=np.float64)
        if predicted.shape != (len(fold.judged), num_classes):
            raise ValueError(f"predict_fold returned shape {predicted.shape}, expected ({len(fold.judged)}, {num_classes})")
        probabilities[fold.judged] = predicted
    return probabilities


def label_quality(probabilities: np.ndarray, labels: np.ndarray, kind: str = "self_confidence") -> np.ndarray:
    """Each example's label-quality score in [0, 1], lower: more likely mislabelled (cleanlab's rank_by_kind).
    self_confidence: p(given); normalized_margin: (p(given) - the largest other p + 1) / 2."""
    probabilities, labels = _validated(probabilities, labels)
    rows = np.arange(len(labels))
    given = probabilities[rows, labels]
    if kind == "self_confidence":
        return given
    if kind == "normalized_margin":
        return (given - probabilities[rows, _likeliest_other(probabilities, labels)] + 1) / 2
    raise ValueError(f"kind must be one of {', '.join(QUALITY_KINDS)}, got {kind!r}")


def _likeliest_other(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each example's most probable class other than its given one."""
    others = probabilities.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return others.argmax(axis=1)


QUALITY_KINDS = ("self_confidence", "normalized_margin")
QUALITY_DECIMALS = 4  # the ranking's resolution: as the list prints it, so its order is what a reader sees


def review_order(quality: np.ndarray, flagged: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The order a reviewer reads: flagged examples first, then the rest, each by quality rounded to
    QUALITY_DECIMALS (lowest first), equal ones by id. Rounding makes the order deaf to the last bits of
    floating point (the same image scored on two machines, or in two batch positions, ties, then goes by id)."""
    rounded = np.round(np.asarray(quality, dtype=np.float64), QUALITY_DECIMALS)
    return np.lexsort((np.asarray(ids), rounded, ~np.asarray(flagged, dtype=bool)))


@dataclass(frozen=True, eq=False)
class Review:
    """Every example's verdict, one entry per example in input order."""

    quality: np.ndarray  # label_quality: lower, more likely mislabelled
    flagged: np.ndarray  # bool: confident learning lists it (find_label_issues)
    suggested: np.ndarray  # the class it more likely is: confident learning's where flagged, else the likeliest other one
    given_probability: np.ndarray
    suggested_probability: np.ndarray

    def listed(self, ids: np.ndarray, review: int) -> np.ndarray:
        """The indices a reviewer reads, in review_order: every flagged example, then the `review` most suspicious
        others."""
        return review_order(self.quality, self.flagged, ids)[: int(self.flagged.sum()) + review]


def review(probabilities: np.ndarray, labels: np.ndarray, kind: str = "self_confidence") -> Review:
    """Score and flag every example from its out-of-sample probabilities (see find_label_issues, label_quality)."""
    probabilities, labels = _validated(probabilities, labels)
    rows = np.arange(len(labels))
    issues = find_label_issues(probabilities, labels)
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[issues.index] = True
    suggested = _likeliest_other(probabilities, labels)
    suggested[issues.index] = issues.suggested
    return Review(label_quality(probabilities, labels, kind), flagged, suggested, probabilities[rows, labels],
                  probabilities[rows, suggested])


def method(kind: str) -> str:
    """The method, in words a report can quote, for label quality `kind` (QUALITY_KINDS)."""
    quality = {"self_confidence": "the probability those models give its label",
               "normalized_margin": "its label's lead over the likeliest other class in those models' probabilities"}[kind]
    return ("Every image is judged by models that neither trained on it nor picked their epoch or temperature by its label "
            f"(cross-fitting over all the splits), and ranked by its label quality, {quality}. A stricter form of "
            "confident learning's rule (Northcutt, Jiang & Chuang, JAIR 2021) flags an image when they give another class "
            "at least that class's threshold (its mean probability over the images labelled with it) and more than the "
            "given label.")


COLUMNS = ("id", "split", "index", "given", "suggested", "given_probability", "suggested_probability", "quality", "flagged")


def rows(listed: np.ndarray, verdict: Review, ids: np.ndarray, splits: np.ndarray, indices: np.ndarray,
         labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, list]:
    """metrics/label_issues.csv's columns for the listed examples of the pool (ids, splits, indices within their
    split and labels: one entry per pool example)."""
    return {"id": [str(ids[i]) for i in listed], "split": [str(splits[i]) for i in listed],
            "index": [int(indices[i]) for i in listed],
            "given": [class_names[labels[i]] for i in listed], "suggested": [class_names[verdict.suggested[i]] for i in listed],
            "given_probability": [round(float(verdict.given_probability[i]), 4) for i in listed],
            "suggested_probability": [round(float(verdict.suggested_probability[i]), 4) for i in listed],
            "quality": [round(float(verdict.quality[i]), QUALITY_DECIMALS) for i in listed],
            "flagged": [bool(verdict.flagged[i]) for i in listed]}
