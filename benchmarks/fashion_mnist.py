"""The FashionMNIST seed on the real data: the seed's loop against imgpipe's engine, and the recommended recipe.

    python benchmarks/fashion_mnist.py            (about 8 minutes on a 2-core CPU; --parts ab or c for less)

Reads the real Fashion-MNIST (60,000 train / 10,000 test, ../shared/datasets/fashion-mnist) and prints:

(a) the seed notebook's loop as written: a dataset turning each uint8 image into a PIL image and then a
    tensor with ToTensor, DataLoader(batch_size=32, shuffle=True), SGD lr 0.1, TinyVGG with 10 hidden units,
    10 epochs, test accuracy after each;
(b) imgpipe's engine (imgpipe.training.loop.train) on the same TinyVGG with the recipe below (RECIPE_B), scored on
    the test split after each epoch like (a); then the time each needs to reach (a)'s best test accuracy,
    and their ratio. The same engine with the seed's own recipe (batch 32, SGD 0.1, constant) runs
    SEED_RECIPE_EPOCHS epochs too, so the images/s the engine alone buys is apart from what the recipe buys;
(c) the recommended FashionMNIST configuration (RECIPE_C, README's example): trained on 54,000 images,
    kept on the best of 6,000 validation images (as the pipeline chooses), scored once on the test split;
    its test accuracy and seconds of training (the target: >= 0.930 within 300 s on a laptop-class CPU).

Seconds are wall time of training plus the per-epoch scoring each loop does, as in the notebook. Every
figure comes with the machine, versions, and the CPU-seconds other processes took meanwhile (a busy machine
slows both sides). `--limit N` runs every part on N images for one epoch: the test suite's dry run.
"""

import argparse
import datetime
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imgpipe.config import DataConfig, TrainConfig
from imgpipe.data.imageset import ImageSet
from imgpipe.data.prepare import channel_stats, stratified_split
from imgpipe.data.prepared import Prepared
from imgpipe.data.sources import fetch
from imgpipe.device import describe, has_native_bf16, pick_device
from imgpipe.models.inference import logits_in_chunks
from imgpipe.models.networks import TinyVGG
from imgpipe.training.loop import train

FASHION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TINYVGG = {"channels": [10, 10]}  # the seed's TinyVGG(hidden_units=10): same layers as imgpipe's cnn
SEED_EPOCHS = 10
# (b): the same network, trained the way this engine trains fast on a CPU: bf16 autocast and channels_last
# where the CPU has native bf16 (train.precision: auto), batches of 128 (4x the seed's: fewer, better-used
# steps), SGD with Nesterov momentum under a one-cycle schedule that warms up to lr 0.1 and anneals to zero.
# (Measured on this data; on 8,000 MNIST images the same TinyVGG, without batch norm, diverged at lr 0.1.)
RECIPE_B = TrainConfig(epochs=3, batch_size=128, optimizer="sgd", lr=0.1, nesterov=True, schedule="onecycle", device="cpu")
SEED_RECIPE = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.1, momentum=0.0, schedule="constant", device="cpu")
SEED_RECIPE_EPOCHS = 2
# (c): README's recommended configuration: TinyVGG 32/64 with batch norm, a hidden layer of 128 and dropout
# 0.2 (468k parameters); flips, 2-pixel crops, label smoothing, weight decay; the same SGD one-cycle recipe
# for 15 epochs, 260-295 s on a 2-core CPU. (16/32 without the hidden layer, 32k parameters: 0.9296 after 30
# epochs, about 300 s.)
MODEL_C = {"channels": [32, 64], "batch_norm": True, "hidden": 128, "dropout": 0.2}
RECIPE_C = replace(RECIPE_B, epochs=15, weight_decay=5e-4, crop_padding=2, flip=True, label_smoothing=0.1)


class SeedDataset(Dataset):
    """As the seed's torchvision dataset delivers images: one PIL image per sample, then ToTensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision.transforms import ToTensor  # the seed's own transform

        self.images, self.labels, self.to_tensor = images, labels, ToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.to_tensor(Image.fromarray(self.images[index, 0], mode="L")), int(self.labels[index])


def seed_loop(train_set: ImageSet, test_set: ImageSet, epochs: int,
              device: torch.device = torch.device("cpu")) -> list[tuple[float, float]]:
    """(a): (cumulative seconds, test accuracy) after each epoch; on a GPU as the seed notebook runs there
    (model moved to the device, each batch sent after the DataLoader made it)."""
    torch.manual_seed(0)
    loader = DataLoader(SeedDataset(train_set.images, train_set.labels), batch_size=32, shuffle=True)
    test = DataLoader(SeedDataset(test_set.images, test_set.labels), batch_size=32)
    model = TinyVGG(train_set.image_shape, len(CLASSES), **TINYVGG).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    start, rows = time.perf_counter(), []
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for images, labels in test:
                correct += (model(images.to(device)).argmax(1) == labels.to(device)).sum().item()  # .item(): a sync
        rows.append((time.perf_counter() - start, correct / len(test_set)))
    return rows


def engine(train_set: ImageSet, scored: ImageSet, settings: dict, config: TrainConfig):
    """(b): imgpipe's engine, validating on `scored` (the test split here) after every epoch."""
    mean, std = channel_stats(train_set.images)
    return train("cnn", settings, Prepared(train=train_set, val=scored, test=scored, mean=mean, std=std), config)


def recommended(pool: ImageSet, test_set: ImageSet, config: TrainConfig):
    """(c): the recommended configuration as the pipeline runs it: 10% of the training pool held out for
    validation (which picks the kept epoch), the test split scored once at the end."""
    kept, held = stratified_split(pool.labels, 0.1, seed=0)
    train_set = pool.subset(kept)
    mean, std = channel_stats(train_set.images)
    result = train("cnn", MODEL_C, Prepared(train=train_set, val=pool.subset(held), test=test_set, mean=mean, std=std), config)
    logits = logits_in_chunks(result.model, test_set.images, torch.device("cpu"))
    return result, (logits.argmax(1).numpy() == test_set.labels).mean()


def first_reaching(rows: list[tuple[float, float]], target: float) -> tuple[int, float] | None:
    """(epoch, seconds) of the first epoch at or above target."""
    return next(((epoch, seconds) for epoch, (seconds, accuracy) in enumerate(rows, 1) if accuracy >= target), None)


def busy_seconds() -> float:
    """CPU-seconds the whole machine has spent (user, nice, system): less this process's, what others took."""
    return sum(map(int, Path("/proc/stat").read_text().split()[1:4])) / os.sysconf("SC_CLK_TCK")


def header(device: torch.device) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    import torchvision

    return (f"{cpu} ({describe(device)}, {torch.get_num_threads()} threads, native bf16: {has_native_bf16(device)}); "
            f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}; "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")


def recipe(config: TrainConfig) -> str:
    extras = [f"{key} {getattr(config, key)}" for key in ("weight_decay", "crop_padding", "label_smoothing") if getattr(config, key)]
    return (f"batch {config.batch_size}, {config.optimizer}{' nesterov' if config.nesterov else ''} lr {config.lr}, "
            f"{config.schedule}, {config.epochs} epochs" + "".join(f", {extra}" for extra in extras) + (", flips" if config.flip else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="abc", help="which parts to run: a, b, c or any of them together (b needs a's target)")
    parser.add_argument("--limit", type=int, help="a dry run: this many images of each split, one epoch of every part")
    parser.add_argument("--data", type=Path, default=FASHION, help="the folder of Fashion-MNIST's IDX files")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: not found; this benchmark needs the real Fashion-MNIST (IDX files)")
    splits = fetch(DataConfig(dataset="idx", path=args.data, class_names=CLASSES))
    pool, test_set = splits["train"], splits["test"]
    seed_epochs, recipe_b, recipe_c = SEED_EPOCHS, RECIPE_B, RECIPE_C
    if args.limit:
        pool, test_set = (s.subset(np.arange(min(args.limit, len(s)))) for s in (pool, test_set))
        seed_epochs, recipe_b, recipe_c = 1, replace(RECIPE_B, epochs=1), replace(RECIPE_C, epochs=1)
    device = pick_device("cpu")
    print(header(device))
    print(f"Fashion-MNIST from {args.data}: {len(pool):,} train / {len(test_set):,} test images")
    others_before, ours_before = busy_seconds(), time.process_time()

    target = None
    if "a" in args.parts:
        seed_rows = seed_loop(pool, test_set, seed_epochs)
        for epoch, (seconds, accuracy) in enumerate(seed_rows, 1):
            print(f"(a) seed loop  epoch {epoch:2d}: test accuracy {accuracy:.4f} at {seconds:6.1f} s")
        target = max(accuracy for _, accuracy in seed_rows)
        seed_epoch, seed_seconds = first_reaching(seed_rows, target)
        print(f"(a) best test accuracy {target:.4f}, first at epoch {seed_epoch}, {seed_seconds:.1f} s; "
              f"{len(pool) * seed_epochs / seed_rows[-1][0]:,.0f} images/s (batch 32, SGD lr 0.1, constant; scoring included)")
    if "b" in args.parts:
        fast = engine(pool, test_set, TINYVGG, recipe_b)
        rows = [(row["seconds"], row["val_accuracy"]) for row in fast.history]
        for epoch, (seconds, accuracy) in enumerate(rows, 1):
            print(f"(b) imgpipe    epoch {epoch:2d}: test accuracy {accuracy:.4f} at {seconds:6.1f} s")
        print(f"(b) recipe: {recipe(recipe_b)}; {fast.images_per_second:,.0f} images/s")
        plain = engine(pool, test_set, TINYVGG, replace(SEED_RECIPE, epochs=1 if args.limit else SEED_RECIPE_EPOCHS))
        print(f"(b) the engine with the seed's recipe (batch 32, SGD lr 0.1, constant): {plain.images_per_second:,.0f} images/s, "
              f"test accuracy {plain.history[-1]['val_accuracy']:.4f} after {len(plain.history)} epochs")
        if target is not None:
            reached = first_reaching(rows, target)
            if reached is None:
                print(f"(b) does not reach {target:.4f} in {len(rows)} epochs (best {max(a for _, a in rows):.4f})")
            else:
                print(f"time to {target:.4f}: (a) {seed_seconds:.1f} s, (b) {reached[1]:.1f} s (epoch {reached[0]}): "
                      f"{seed_seconds / reached[1]:.1f}x faster")
    if "c" in args.parts:
        result, accuracy = recommended(pool, test_set, recipe_c)
        print(f"(c) recommended: cnn {MODEL_C}, {recipe(recipe_c)}: test accuracy {accuracy:.4f} "
              f"(kept epoch {result.best_epoch}, val {result.history[result.best_epoch - 1]['val_accuracy']:.4f}) "
              f"after {result.seconds:.1f} s of training, {result.images_per_second:,.0f} images/s")
    others = busy_seconds() - others_before - (time.process_time() - ours_before)
    print(f"other processes used about {max(others, 0):.0f} CPU-seconds meanwhile")


if __name__ == "__main__":
    main()
