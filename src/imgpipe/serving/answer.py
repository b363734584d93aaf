"""What predict and the served model answer for a batch of images: the most likely classes, best first,
with their calibrated confidences (the network divides its scores by the temperature fitted on validation)."""

import numpy as np
import pandas as pd
import torch

from imgpipe.models.inference import predict_logits


def top_classes(model: torch.nn.Module, images: np.ndarray, class_names: tuple[str, ...], top_k: int,
                device: torch.device) -> pd.DataFrame:
    """Predicted class and confidence per image, then the next best classes: top2, top2_confidence, ..."""
    logits = predict_logits(model.to(device), torch.from_numpy(images).to(device))
    probabilities = logits.softmax(1).cpu()
    k = min(top_k, len(class_names))
    confidence, index = probabilities.topk(k, dim=1)
    names = np.array(class_names)
    columns = {"predicted": names[index[:, 0].numpy()], "confidence": confidence[:, 0].numpy().round(4)}
    for rank in range(1, k):
        columns[f"top{rank + 1}"] = names[index[:, rank].numpy()]
        columns[f"top{rank + 1}_confidence"] = confidence[:, rank].numpy().round(4)
    return pd.DataFrame(columns)
