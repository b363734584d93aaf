"""Scores read off a confusion matrix: per-class precision, recall and F1, and the most-confused pairs.

NumPy only, so the report can use them without importing PyTorch.
"""

import numpy as np


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: images of class i predicted as class j."""
    return np.bincount(actual * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class; 0 where a ratio has nothing to divide
    (a class never predicted, or absent from the split), as scikit-learn's zero_division=0."""
    hits = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(0), confusion.sum(1)
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
