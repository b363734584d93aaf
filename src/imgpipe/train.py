"""The training engine: the whole split lives on the device as uint8, batches are slices of an
on-device permutation, normalization happens inside the model, so no per-sample Python runs."""

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from imgpipe.config import TrainConfig
from imgpipe.device import pick_device
from imgpipe.evaluate import predict_logits, score
from imgpipe.files import atomic_path
from imgpipe.models import Classifier, build_model
from imgpipe.prepare import Prepared


@dataclass
class TrainResult:
    model: Classifier
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train/val loss and accuracy
    seconds: float = 0.0  # wall time of all epochs, validation included
    images_per_second: float = 0.0  # training images processed per second of that time
    device: str = "cpu"


def train(model_name: str, model_settings: dict, data: Prepared, config: TrainConfig) -> TrainResult:
    """Build the named model (seeded) and fit it to data.train, validating on data.val every epoch."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    net = build_model(model_name, data.image_shape, len(data.class_names), **model_settings)
    model = Classifier(net, data.mean, data.std).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    # The whole split goes to the device once, still uint8 (4x smaller than float32).
    x_train = torch.from_numpy(data.train.images).to(device)
    y_train = torch.from_numpy(data.train.labels).to(device)
    x_val = torch.from_numpy(data.val.images).to(device)
    y_val = torch.from_numpy(data.val.labels).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    result = TrainResult(model=model, device=device.type)
    interactive = sys.stderr.isatty()
    epochs = tqdm(range(1, config.epochs + 1), desc=model_name, unit="epoch", disable=not interactive)
    start = time.perf_counter()
    for epoch in epochs:
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for batch in torch.randperm(len(y_train), device=device, generator=generator).split(config.batch_size):
            images, labels = x_train[batch], y_train[batch]
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(batch)  # summed on the device: no sync per step
            correct += (logits.argmax(1) == labels).sum()
        val = score(predict_logits(model, x_val), y_val)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / len(y_train),
            "train_accuracy": correct.item() / len(y_train),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
        }
        result.history.append(row)
        summary = f"loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f}"
        if interactive:
            epochs.set_postfix_str(summary)
        elif epoch == 1 or epoch == config.epochs or epoch % max(1, config.epochs // 10) == 0:
            print(f"{model_name} epoch {epoch}/{config.epochs}: {summary}", flush=True)
    result.seconds = time.perf_counter() - start
    result.images_per_second = config.epochs * len(y_train) / result.seconds
    return result


def write_curves(folder: Path, history: list[dict]) -> None:
    """loss.csv and accuracy.csv (epoch, train, val): one DVC plot each, swapped in as one folder."""
    frame = pd.DataFrame(history)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for measure in ("loss", "accuracy"):
            curve = frame[["epoch", f"train_{measure}", f"val_{measure}"]]
            curve.columns = ["epoch", "train", "val"]
            curve.to_csv(tmp / f"{measure}.csv", index=False)
