"""Self-describing checkpoints: one file rebuilds the model, its normalization and its class names.

Only tensors and plain Python values are stored, so loading uses torch.load(weights_only=True)
and never runs pickled code.
"""

from dataclasses import asdict
from pathlib import Path

import torch

from imgpipe.config import TrainConfig
from imgpipe.errors import ImgpipeError
from imgpipe.files import atomic_path
from imgpipe.models.networks import Classifier, build_model

FORMAT = "imgpipe-checkpoint/1"


def save_checkpoint(path: Path, model: Classifier, *, model_name: str, model_settings: dict,
                    image_shape: tuple[int, int, int], class_names: tuple[str, ...], config: TrainConfig,
                    background: tuple[int, int, int] = (255, 255, 255)) -> None:
    checkpoint = {
        "format": FORMAT,
        "model": model_name,
        "model_settings": dict(model_settings),
        "image_shape": list(image_shape),  # (C, H, W)
        "class_names": list(class_names),
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "temperature": model.temperature.item(),  # the scores' divisor (imgpipe.evaluation.calibration); absent before: 1
        "tta": model.tta,  # scores averaged with the mirror image's (train.tta); absent before: false
        "background": list(background),  # RGB that transparent pixels were laid on (image folders)
        "train_config": asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: Path) -> tuple[Classifier, dict]:
    """The rebuilt model (on the CPU, in eval mode) and the checkpoint's description of it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImgpipeError(f"{path}: not found; train the model first (dvc repro)") from None
    except Exception as error:  # torch raises many kinds for a corrupt or foreign file
        raise ImgpipeError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ImgpipeError(f"{path}: not an imgpipe checkpoint (expected format {FORMAT})")
    try:  # a checkpoint of another imgpipe or torchvision: a setting, a layer or an entry that is no longer
        net = build_model(checkpoint["model"], tuple(checkpoint["image_shape"]), len(checkpoint["class_names"]),
                          **checkpoint["model_settings"])
        net.load_state_dict(checkpoint["state_dict"])
        mean, std = tuple(checkpoint["mean"]), tuple(checkpoint["std"])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:  # InvalidSetting is a ValueError
        reason = f"no {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise ImgpipeError(f"{path}: saved by another version of imgpipe or of its model ({type(error).__name__}: {reason}); "
                           "train it again") from None
    checkpoint.setdefault("temperature", 1.0)  # saved before temperature scaling: the network's own scores
    checkpoint.setdefault("tta", False)  # saved before test-time augmentation
    model = Classifier(net, mean, std, checkpoint["temperature"], checkpoint["tta"]).eval()
    return model, {k: v for k, v in checkpoint.items() if k != "state_dict"}
