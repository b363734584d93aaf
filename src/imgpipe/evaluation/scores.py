"""Scores read off a confusion matrix: per-class precision, recall and F1, and macro-F1's percentile bootstrap
interval over the test images (macro-F1 has no closed-form interval: it is a mean of ratios of dependent counts).

NumPy only.
"""

import numpy as np

from imgpipe.evaluation.stats import CONFIDENCE, RESAMPLES, checked_confidence


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[..., i, j]: images of class i predicted as class j. Leading axes of `actual` and
    `predicted` (..., N), e.g. one per bootstrap resample, give a stack of matrices (..., classes, classes)
    from a single bincount: each matrix's cells are offset past the previous matrix's."""
    actual, predicted = np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    cells = num_classes**2
    stack = actual.shape[:-1]
    matrices = int(np.prod(stack))
    offsets = (np.arange(matrices) * cells).reshape(*stack, 1)
    counts = np.bincount((actual * num_classes + predicted + offsets).ravel(), minlength=matrices * cells)
    return counts.reshape(*stack, num_classes, num_classes)


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class; 0 where a ratio has nothing to divide
    (a class never predicted, or absent from the split), as scikit-learn's zero_division=0.
    A stack of matrices (..., classes, classes) gives scores of shape (..., classes)."""
    hits = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    predicted, support = confusion.sum(-2), confusion.sum(-1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


# Elements per array (int64: 8 bytes each) in one batch of resamples: 32 MB, whatever the split's size.
_BATCH_ELEMENTS = 2**22


def resample_indices(images: int, resample: int, seed: int = 0) -> np.ndarray:
    """The images of bootstrap resample number `resample` (indices, drawn with replacement). Each resample
    has its own generator, spawned from `seed`, so it is the same however the resamples are batched."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(resample,))).integers(0, images, images)


def scored_classes(confusion: np.ndarray) -> np.ndarray:
    """The classes a macro average counts: those with images in the split or said of some image (scikit-learn's
    default). A class neither has no F1: counted 0, a perfect model of the other classes scored below 1.
    A stack of matrices (..., classes, classes) gives (..., classes)."""
    return (confusion.sum(-1) > 0) | (confusion.sum(-2) > 0)


def macro(scores: np.ndarray, confusion: np.ndarray) -> float:
    """The mean of per-class scores over scored_classes."""
    return float(scores[scored_classes(confusion)].mean())


def bootstrap_macro_f1(actual: np.ndarray, predicted: np.ndarray, num_classes: int, *,
                       resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Macro-F1 (per_class_scores' F1, averaged over scored_classes, as the score is) of each of `resamples`
    resamples of the images, scored in batches: one bincount gives a batch's confusion matrices. A class of the split
    that a resample happens to draw no image of, and none predicted as, is left out of that resample's average rather
    than counted 0, which would pull the interval below the score (a class of 2 test images is missing from 13% of
    resamples)."""
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    if actual.shape != predicted.shape or actual.ndim != 1 or len(actual) == 0:
        raise ValueError(f"need two equally long, non-empty 1-D arrays, got shapes {actual.shape} and {predicted.shape}")
    images = len(actual)
    batch = max(1, _BATCH_ELEMENTS // max(images, num_classes**2))
    scores = []
    for start in range(0, resamples, batch):
        drawn = np.stack([resample_indices(images, r, seed) for r in range(start, min(start + batch, resamples))])
        confusions = confusion_matrix(actual[drawn], predicted[drawn], num_classes)  # (batch, classes, classes)
        counted = scored_classes(confusions)  # (batch, classes)
        scores.append((per_class_scores(confusions)["f1"] * counted).sum(-1) / counted.sum(-1))
    return np.concatenate(scores)


def bootstrap_macro_f1_interval(actual: np.ndarray, predicted: np.ndarray, num_classes: int, *,
                                resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                                seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1 over the images. Macro-F1 has no closed-form interval
    (it is a mean of ratios of dependent counts); resampling the images captures that dependence."""
    tails = (1 - checked_confidence(confidence)) / 2
    scores = bootstrap_macro_f1(actual, predicted, num_classes, resamples=resamples, seed=seed)
    low, high = np.quantile(scores, [tails, 1 - tails])
    return float(low), float(high)
