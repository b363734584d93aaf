"""Time to accuracy: the seeds' DataLoader loop against imgpipe's engine, on the same data and model.

    python benchmarks/train_speed.py [--epochs 3] [--device auto]

(a) is the FashionMNIST seed's loop as written: a torchvision-style dataset that turns each uint8
image into a PIL image and then a tensor with ToTensor, a DataLoader(batch_size=32, shuffle=True),
plain SGD (lr 0.1) and TinyVGG with 10 hidden units. (b) is imgpipe's engine with its own
defaults on the same TinyVGG. Both train on 8,000 images of the real MNIST test set
(../shared/datasets/mnist-t10k) and are scored on the other 2,000 after every epoch; the figure is
the wall time each needs to reach the accuracy (a) reaches after its epochs, and their ratio. The
per-epoch cost of the data path alone (batching without the model) is printed for both.
"""

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import ToTensor

from imgpipe.config import DataConfig, TrainConfig
from imgpipe.device import describe, pick_device
from imgpipe.models import TinyVGG
from imgpipe.prepare import Prepared, channel_stats, stratified_split
from imgpipe.sources import fetch
from imgpipe.train import batches, train

MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist-t10k"
TINYVGG = {"channels": [10, 10]}  # the seed's TinyVGG(hidden_units=10)


class SeedDataset(Dataset):
    """As the seed's torchvision datasets deliver images: one PIL image per sample, then ToTensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels, self.to_tensor = images, labels, ToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.to_tensor(Image.fromarray(self.images[index, 0], mode="L")), int(self.labels[index])


def seed_loop(data, epochs: int, device: torch.device) -> tuple[list[float], list[float], float]:
    """(a): cumulative seconds and test accuracy after each epoch, and one epoch of batching alone."""
    torch.manual_seed(0)
    loader = DataLoader(SeedDataset(data.train.images, data.train.labels), batch_size=32, shuffle=True)
    test = DataLoader(SeedDataset(data.test.images, data.test.labels), batch_size=32)
    model = TinyVGG(data.image_shape, len(data.class_names), **TINYVGG).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    start, elapsed, accuracy = time.perf_counter(), [], []
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
                correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
        accuracy.append(correct / len(data.test))
        elapsed.append(time.perf_counter() - start)
    start = time.perf_counter()
    for images, labels in loader:
        images.to(device), labels.to(device)
    return elapsed, accuracy, time.perf_counter() - start


def engine_data_path(data, config: TrainConfig, device: torch.device) -> float:
    """(b)'s batching alone for one epoch: permutation, slicing and normalization on the device."""
    x = torch.from_numpy(data.train.images).to(device)
    y = torch.from_numpy(data.train.labels).to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    generator = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    for index in batches(len(y), config.batch_size, generator):
        ((x[index].float() / 255 - mean) / std), y[index]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the seed loop (a)")
    parser.add_argument("--engine-epochs", type=int, default=4, help="epochs of imgpipe's engine (b)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not MNIST_T10K.is_dir():
        raise SystemExit(f"{MNIST_T10K}: not found; this benchmark needs the real MNIST test set")
    device = pick_device(args.device)
    pool = fetch(DataConfig(dataset="idx", path=MNIST_T10K))["train"]
    kept, held = stratified_split(pool.labels, 0.2, seed=0)  # 8,000 train / 2,000 test
    train_set, test_set = pool.subset(kept), pool.subset(held)
    # The engine scores its validation split every epoch: make that the test split here.
    mean, std = channel_stats(train_set.images)
    data = Prepared(train=train_set, val=test_set, test=test_set, mean=mean, std=std)
    print(f"MNIST t10k: {len(data.train)} train / {len(data.test)} test images; device {describe(device)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.machine()}")

    seed_seconds, seed_accuracy, seed_batching = seed_loop(data, args.epochs, device)
    target = seed_accuracy[-1]
    for epoch, (s, a) in enumerate(zip(seed_seconds, seed_accuracy), 1):
        print(f"(a) seed loop    epoch {epoch}: test accuracy {a:.4f} at {s:.2f} s")

    config = TrainConfig(device=args.device, epochs=args.engine_epochs)
    result = train("cnn", TINYVGG, data, config)
    reached = next((row for row in result.history if row["val_accuracy"] >= target), None)
    for row in result.history:
        print(f"(b) imgpipe      epoch {row['epoch']}: test accuracy {row['val_accuracy']:.4f} at {row['seconds']:.2f} s")
    print(f"target: {target:.4f}, the accuracy (a) reaches after {args.epochs} epochs")
    print(f"(a) reaches it in {seed_seconds[-1]:.2f} s")
    if reached is None:
        print(f"(b) did not reach it in {len(result.history)} epochs")
    else:
        print(f"(b) reaches it in {reached['seconds']:.2f} s (epoch {reached['epoch']})")
        print(f"ratio: {seed_seconds[-1] / reached['seconds']:.1f}x")
    print(f"data path alone, one epoch: (a) {seed_batching:.3f} s, (b) {engine_data_path(data, config, device):.4f} s")


if __name__ == "__main__":
    main()
