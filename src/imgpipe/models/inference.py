"""Class scores for a batch of images, and the loss and accuracy they earn: what training ranks its
epochs by, evaluation scores with, and predict classifies with. Kept apart from `evaluate` so that
training depends on these few lines, not on the evaluation's statistics."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PREDICT_BATCH = 1024  # images per forward pass when only scores are wanted...
PREDICT_BYTES = 16 * 2**20  # ...or fewer, so that a batch's float32 copy stays under this: a conv net's activations
# are many times the input (TinyVGG at 224x224: 111 images a batch took 1 GB), so large images go a few at a time


def predict_batch(image_shape: tuple[int, ...]) -> int:
    """Images per forward pass for images of this shape: small images 1,024, large ones fewer (224x224 RGB: 27)."""
    return max(1, min(PREDICT_BATCH, PREDICT_BYTES // (4 * math.prod(image_shape))))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class scores (N, classes) for uint8 images (N, C, H, W) already on the model's device."""
    model.eval()
    return _filled(len(images), (model(batch) for batch in images.split(predict_batch(images.shape[1:]))))


def logits_in_chunks(model: nn.Module, images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Class scores (N, classes) of uint8 images (N, C, H, W) in memory or memory-mapped, sent to the device
    a batch at a time: the batches predict_logits makes of a whole split on the device, so the same scores."""
    step = predict_batch(images.shape[1:])
    # No image still passes one (empty) batch, so the scores are (0, classes) as predict_logits gives: a rank whose
    # share of a streamed split is empty (fewer images than ranks) all-reduces figures of every other rank's shape.
    return _filled(len(images), (predict_logits(model, torch.from_numpy(np.array(images[start:start + step])).to(device))
                                 for start in range(0, max(len(images), 1), step)))


def _filled(count: int, parts) -> torch.Tensor:
    """The batches' scores, float32, copied into one tensor as they come. Not a list of them joined at the
    end: glibc then keeps the large temporaries of every batch, as the small scores kept between them stop
    it from returning the memory (1.9 GB more, measured on 3,189 images of 224x224)."""
    scores, start = None, 0
    for part in parts:
        if scores is None:
            scores = torch.empty((count, *part.shape[1:]), dtype=torch.float32, device=part.device)
        scores[start:start + len(part)] = part
        start += len(part)
    return scores if scores is not None else torch.empty((0, 0))


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).sum().item() / len(labels),  # exact, not float32
    }
