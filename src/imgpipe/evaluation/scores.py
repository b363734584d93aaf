"""Scores read off a confusion matrix: per-class precision, recall and F1, and the most-confused pairs.

NumPy only, so the report can use them without importing PyTorch.
"""

import numpy as np


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


def most_confused(confusion: np.ndarray, class_names: tuple[str, ...], count: int = 5) -> list[tuple[str, str, int]]:
    """The `count` largest off-diagonal cells as (actual, predicted, images), largest first."""
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    order = np.argsort(-errors, axis=None, kind="stable")[:count]
    cells = [np.unravel_index(i, errors.shape) for i in order]
    return [(class_names[a], class_names[p], int(errors[a, p])) for a, p in cells if errors[a, p] > 0]
