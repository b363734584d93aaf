"""Is a confidence of 0.99 worth 0.99? Expected calibration error, the reliability diagram's figures, and
temperature scaling (Guo et al., 2017: one scalar T > 0 dividing the class scores, fitted on the validation
split by minimizing its NLL; a positive T never changes which class scores highest).

A model's confidence is its largest softmax probability. The confidences are cut into equal-width bins of
(0, 1] (15, as Guo et al.); the ECE is the images' average gap between a bin's accuracy and its mean
confidence, each bin weighted by its share of the images.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgpipe.data.imageset import ImageSet
from imgpipe.models.inference import logits_in_chunks
from imgpipe.models.networks import Classifier, fit_scale, is_fitted

BINS = 15  # equal-width confidence bins of (0, 1] for the ECE and the reliability diagram


@dataclass(frozen=True)
class Reliability:
    """The non-empty confidence bins, (lower, upper] each: what a reliability diagram draws."""

    bin: np.ndarray  # (B,) index of the bin among all BINS, 0 for (0, 1/BINS]
    lower: np.ndarray  # (B,) the bin's edges
    upper: np.ndarray
    images: np.ndarray  # (B,) images whose confidence falls in the bin
    accuracy: np.ndarray  # (B,) share of them predicted right
    confidence: np.ndarray  # (B,) their mean confidence

    @property
    def error(self) -> float:
        """The expected calibration error: sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|."""
        return float((self.images * np.abs(self.accuracy - self.confidence)).sum() / self.images.sum())


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Reliability:
    """Each non-empty bin's images, accuracy and mean confidence. confidence: (N,) in (0, 1]; correct: (N,) bool."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # searchsorted on the left: edges[i - 1] < c <= edges[i] puts c in bin i - 1, so each bin holds its upper edge
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    images = np.bincount(index, minlength=bins)
    right = np.bincount(index, weights=correct, minlength=bins)
    total = np.bincount(index, weights=confidence, minlength=bins)
    kept = np.flatnonzero(images)
    return Reliability(kept, edges[kept], edges[kept + 1], images[kept], right[kept] / images[kept], total[kept] / images[kept])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|."""
    return reliability(confidence, correct, bins).error


def confidences(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each image's confidence (largest softmax probability) and whether its top class is the true one."""
    confidence, predicted = logits.float().softmax(1).max(1)
    return confidence.cpu().numpy(), (predicted == labels.to(predicted.device)).cpu().numpy()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimizing the mean NLL of softmax(logits / T): 1 / the scale s of softmax(s * logits) that
    fit_scale finds (deterministic, float64 on the CPU)."""
    return 1.0 / fit_scale(logits, labels)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature), in float64."""
    return F.cross_entropy(logits.detach().cpu().double() / temperature, labels.cpu()).item()


@dataclass(frozen=True)
class Calibration:
    temperature: float  # what the model's scores are now divided by
    nll_before: float  # mean NLL of the split at temperature 1 (the network's own scores)...
    nll_after: float  # ...and at `temperature`


def calibrate(model: Classifier, split: ImageSet, device: torch.device) -> Calibration:
    """Fit the model's temperature on `split` (the validation split: test is never used to fit anything), set it
    in the model, and return it with the split's NLL before and after. A fitted model (the class centroids)
    keeps T = 1: it fits its own scale, on the training split, and validation stays a fair check of it. So does a model
    right on every validation image: there the NLL falls without end as T goes to 0, and the search would stop at its
    bound (T = 0.001), claiming near-certainty for every answer, wrong ones included."""
    model.temperature.fill_(1.0)
    logits = logits_in_chunks(model.to(device), split.images, device)  # (N, classes), the network's own scores
    labels = torch.from_numpy(np.asarray(split.labels)).long()
    separated = bool((logits.argmax(1).cpu() == labels).all())
    temperature = 1.0 if is_fitted(model.net) or separated else fit_temperature(logits, labels)
    model.temperature.fill_(temperature)
    return Calibration(temperature, nll(logits, labels), nll(logits, labels, temperature))
