"""Class scores for a batch of images, and the loss and accuracy they earn: what training ranks its
epochs by, evaluation scores with, and predict classifies with. Kept apart from `evaluate` so that
training depends on these few lines, not on the evaluation's statistics."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


PREDICT_BATCH = 1024  # images per forward pass when only scores are wanted


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """Class scores (N, classes) for uint8 images (N, C, H, W) already on the model's device."""
    model.eval()
    return torch.cat([model(batch) for batch in images.split(batch_size)]).float()


def logits_in_chunks(model: nn.Module, images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Class scores (N, classes) of uint8 images (N, C, H, W) in memory or memory-mapped, sent to the device
    a batch at a time: the batches predict_logits makes of a whole split on the device, so the same scores."""
    return torch.cat([predict_logits(model, torch.from_numpy(np.array(images[start:start + PREDICT_BATCH])).to(device))
                      for start in range(0, len(images), PREDICT_BATCH)])


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).sum().item() / len(labels),  # exact, not float32
    }
