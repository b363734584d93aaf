"""Score a classifier on a split: predictions, loss, accuracy and the confusion matrix."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgpipe.imageset import ImageSet


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class scores (N, classes) for uint8 images (N, C, H, W) already on the model's device."""
    model.eval()
    return torch.cat([model(batch) for batch in images.split(batch_size)]).float()


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: images of class i predicted as class j."""
    return np.bincount(actual * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def evaluate(model: nn.Module, split: ImageSet, device: torch.device) -> dict:
    """Test metrics plus per-image predictions, for the metrics file and the confusion plot."""
    images = torch.from_numpy(split.images).to(device)
    labels = torch.from_numpy(split.labels).to(device)
    logits = predict_logits(model, images)
    predicted = logits.argmax(1).cpu().numpy()
    return {
        **score(logits, labels),
        "predicted": predicted,
        "confusion": confusion_matrix(split.labels, predicted, len(split.class_names)),
    }
