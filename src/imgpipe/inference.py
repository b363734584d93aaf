"""Class scores for a batch of images, and the loss and accuracy they earn: what training ranks its
epochs by, evaluation scores with, and predict classifies with. Kept apart from `evaluate` so that
training depends on these few lines, not on the evaluation's statistics."""

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class scores (N, classes) for uint8 images (N, C, H, W) already on the model's device."""
    model.eval()
    return torch.cat([model(batch) for batch in images.split(batch_size)]).float()


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).sum().item() / len(labels),  # exact, not float32
    }
