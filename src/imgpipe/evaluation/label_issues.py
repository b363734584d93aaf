"""Model problem or label problem: which given labels are probably wrong, judged from out-of-sample predicted
probabilities.

Method, in one sentence a report can quote: label issues are found by confident learning (Northcutt, Jiang &
Chuang, JAIR 2021) - an example is flagged when the out-of-sample probability of some other class j reaches
that class's threshold t_j (the mean probability the models give class j on the examples labelled j) and
exceeds the probability of the given label, and flagged examples are ranked by the normalized margin
p(suggested) - p(given).

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
    across classes, so the fold sizes also differ by at most 1.  A class with fewer examples than folds is
    missing from some training parts: the models trained there cannot predict it, so its out-of-sample
    probabilities are low and its examples may be flagged - more folds, or more examples, cure that.
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


def out_of_fold(
    predict_fold: Callable[[np.ndarray, np.ndarray], np.ndarray],
    labels: np.ndarray,
    folds: int,
    seed: int,
    num_classes: int,
) -> np.ndarray:
    """(N, num_classes) out-of-sample probabilities in input order: for each fold of `cross_fit_folds`,
    `predict_fold(train_indices, heldout_indices)` trains on the other folds and returns the probabilities
    of the held-out examples, (len(heldout_indices), num_classes)."""
    labels = np.asarray(labels)
    probabilities = np.full((len(labels), num_classes), np.nan)
    for heldout in cross_fit_folds(labels, folds, seed):
        train = np.setdiff1d(np.arange(len(labels)), heldout, assume_unique=True)
        predicted = np.asarray(predict_fold(train, heldout), dtype=np.float64)
        if predicted.shape != (len(heldout), num_classes):
            raise ValueError(f"predict_fold returned shape {predicted.shape}, expected ({len(heldout)}, {num_classes})")
        probabilities[heldout] = predicted
    return probabilities


METHOD = ("Label issues are found by confident learning (Northcutt, Jiang & Chuang, JAIR 2021): an image is listed when "
          "the models that did not train on it give another class at least that class's threshold (its mean probability "
          "over the images labelled with it) and more than the given label, ranked by the margin between the two.")


COLUMNS = ("id", "split", "index", "given", "suggested", "given_probability", "suggested_probability", "score")


def rows(split: str, ids: np.ndarray, issues: LabelIssues, class_names: tuple[str, ...]) -> list[dict]:
    """One row per issue of a split, as metrics/label_issues.csv lists them."""
    return [{"id": ids[i], "split": split, "index": int(i), "given": class_names[given], "suggested": class_names[suggested],
             "given_probability": round(float(p_given), 4), "suggested_probability": round(float(p_suggested), 4),
             "score": round(float(score), 4)}
            for i, given, suggested, p_given, p_suggested, score in zip(issues.index, issues.given, issues.suggested,
                                                                      issues.given_probability, issues.suggested_probability,
                                                                      issues.score)]
