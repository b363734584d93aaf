"""Score a classifier on a split: loss, accuracy and macro-F1 with their 95% intervals, top-k, per-class
precision/recall/F1, the confusion matrix and its most-confused pairs, calibration (ECE and the reliability
diagram's bins, before and after temperature scaling), inference speed, and a prediction with its confidence
per image."""

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgpipe.data.imageset import ImageSet
from imgpipe.device import finish_queued
from imgpipe.evaluation.calibration import Reliability, confidences, reliability
from imgpipe.evaluation.scores import bootstrap_macro_f1_interval, confusion_matrix, macro, per_class_scores
from imgpipe.evaluation.stats import wilson_interval
from imgpipe.models.inference import logits_in_chunks, predict_logits, score

SPEED_SAMPLE_BYTES = 64 * 2**20  # inference speed is measured on the split's first images, this much of them at most


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of images whose true class is among the k highest scores."""
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum().item() / len(labels)


def images_per_second(model: nn.Module, images: torch.Tensor, min_seconds: float = 0.25) -> float:
    """Inference throughput on the images' device: passes over the split, after one warm-up batch,
    until at least `min_seconds` have gone by (so a small split still gives a steady figure)."""
    predict_logits(model, images[:1024])  # warm-up: kernel selection, lazy initialization
    finish_queued(images.device)  # ...done before the clock starts, not charged to the first pass
    passes, start = 0, time.perf_counter()
    while True:
        predict_logits(model, images)
        finish_queued(images.device)  # timed to the end of the work, not of its queueing
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return passes * len(images) / elapsed


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # the summary written to metrics/test/<variant>.json
    predicted: np.ndarray  # (N,) class index per image
    confidence: np.ndarray  # (N,) softmax probability of the predicted class
    confusion: np.ndarray  # (classes, classes) counts, rows actual, columns predicted
    per_class: dict[str, np.ndarray]  # precision, recall, f1, support: one value per class
    reliability: dict[str, Reliability]  # "before" and "after" temperature scaling: confidence bins


def evaluate(model: nn.Module, split: ImageSet, device: torch.device, top_k: int = 3) -> Evaluation:
    """Everything the metrics, plots and report say about a model on one split.
    Top-k accuracy is measured only when there are more than k classes. The split is a sample, so
    accuracy and macro-F1 come with 95% intervals (`*_low`, `*_high`; see imgpipe.evaluation.stats and scores). `ece` is that of
    the model's own confidences (a Classifier's are divided by its temperature), `ece_before_scaling` that
    of the network's scores before that division."""
    labels = torch.from_numpy(split.labels).to(device)
    logits = logits_in_chunks(model, split.images, device)  # a memory-mapped split is read a batch at a time
    confidence, predicted = logits.softmax(1).max(1)
    predicted = predicted.cpu().numpy()
    confusion = confusion_matrix(split.labels, predicted, len(split.class_names))
    per_class = per_class_scores(confusion)
    metrics = score(logits, labels)
    metrics["accuracy_low"], metrics["accuracy_high"] = wilson_interval(int(confusion.trace()), len(split))
    if len(split.class_names) > top_k:
        metrics[f"top_{top_k}_accuracy"] = top_k_accuracy(logits, labels, top_k)
    metrics |= {f"macro_{name}": macro(per_class[name], confusion) for name in ("precision", "recall", "f1")}
    metrics["macro_f1_low"], metrics["macro_f1_high"] = bootstrap_macro_f1_interval(
        split.labels, predicted, len(split.class_names), seed=0)
    temperature = getattr(model, "temperature", None)  # a bare network has none: its scores are its own
    before = logits * temperature if temperature is not None else logits
    bins = {"before": reliability(*confidences(before, labels)), "after": reliability(*confidences(logits, labels))}
    metrics["ece"], metrics["ece_before_scaling"] = bins["after"].error, bins["before"].error
    sample = torch.from_numpy(np.array(split.images[:max(1, SPEED_SAMPLE_BYTES // split.images[0].nbytes)])).to(device)
    metrics |= {"images_per_second": round(images_per_second(model, sample), 1), "images": len(split)}
    return Evaluation(metrics, predicted, confidence.cpu().numpy(), confusion, per_class, bins)


def predictions_table(split: ImageSet, evaluation: Evaluation) -> dict[str, np.ndarray]:
    """One row per image: its index in the split, actual and predicted class names, confidence (as columns)."""
    names = np.array(split.class_names)
    return {"index": np.arange(len(split)), "actual": names[split.labels], "predicted": names[evaluation.predicted],
            "confidence": evaluation.confidence.round(4)}


def class_table(class_names: tuple[str, ...], evaluation: Evaluation) -> dict[str, np.ndarray]:
    """One row per class: precision, recall, F1 and support (as columns)."""
    scores = {key: values.round(4) if key != "support" else values for key, values in evaluation.per_class.items()}
    return {"class": np.array(class_names), **scores}


def confusion_table(class_names: tuple[str, ...], confusion: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The confusion counts with class names, as columns: a row per actual class (column `actual`), then a column
    per predicted class (pairs, not a mapping: a class may be named `actual` too)."""
    return [("actual", np.array(class_names)), *((name, confusion[:, j]) for j, name in enumerate(class_names))]


def reliability_table(evaluation: Evaluation) -> dict[str, np.ndarray]:
    """The reliability diagram's figures, one row per non-empty confidence bin and scaling ("before" or
    "after" temperature scaling): the bin's edges, its images, their accuracy and mean confidence (as columns)."""
    parts = [{"scaling": np.full(len(bins.bin), scaling), "bin": bins.bin, "lower": bins.lower.round(4),
              "upper": bins.upper.round(4), "images": bins.images, "accuracy": bins.accuracy.round(4),
              "confidence": bins.confidence.round(4)} for scaling, bins in evaluation.reliability.items()]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def examples_to_explain(labels: np.ndarray, evaluation: Evaluation, count: int) -> np.ndarray:
    """Test images worth a saliency map: `count` right answers (each class's most confident one, then each
    class's second, ...) and the `count` most confident mistakes, as indices into the split."""
    by_confidence = np.argsort(-evaluation.confidence, kind="stable")
    right = labels[by_confidence] == evaluation.predicted[by_confidence]
    wrong = by_confidence[~right][:count]
    correct = by_confidence[right]
    rank = np.zeros(len(correct), dtype=np.int64)  # each image's place in its class, most confident first
    for label in np.unique(labels[correct]):
        mine = labels[correct] == label
        rank[mine] = np.arange(mine.sum())
    correct = correct[np.argsort(rank, kind="stable")][:count]
    return np.concatenate([correct, wrong]).astype(np.int64)
