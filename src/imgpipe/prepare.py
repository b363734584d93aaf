"""Split raw data into stratified train/val/test sets and measure normalization statistics.

Images stay uint8 on disk; the per-channel mean/std (on the 0..1 scale) come from the training
split alone, so nothing about validation or test images leaks into training.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from imgpipe import imageset
from imgpipe.errors import ImgpipeError, require
from imgpipe.files import atomic_path, read_json, write_json
from imgpipe.imageset import ImageSet

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Prepared:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: tuple[float, ...]  # per channel, pixels scaled to 0..1, training split only
    std: tuple[float, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with `fraction` of every class held out, reproducibly."""
    indices = np.arange(len(labels))
    try:
        kept, held = train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as error:  # e.g. a class with a single image cannot be stratified
        raise ImgpipeError(f"cannot split {len(labels)} images with fraction {fraction}: {error}") from None
    return np.sort(kept), np.sort(held)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 (N, C, H, W) images on the 0..1 scale.

    A 256-bin histogram per channel gives exact moments without a float copy of the data.
    """
    values = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = np.bincount(images[:, channel].ravel(), minlength=256).astype(np.float64)
        mean = counts @ values / counts.sum()
        var = counts @ (values - mean) ** 2 / counts.sum()
        means.append(float(mean))
        stds.append(float(max(np.sqrt(var), 1e-8)))  # a blank channel must not divide by zero
    return tuple(means), tuple(stds)


def prepare(raw: dict[str, ImageSet], val_fraction: float, test_fraction: float, seed: int) -> Prepared:
    """Carve val (and test, where the source has none) from the training data, stratified by class."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        require(isinstance(fraction, float) and 0 < fraction < 1, name, f"must be a fraction between 0 and 1, got {fraction!r}")
    require(isinstance(seed, int), "seed", f"must be a whole number, got {seed!r}")
    pool = raw["train"]
    test = raw.get("test")
    if test is None:
        kept, held = stratified_split(pool.labels, test_fraction, seed)
        pool, test = pool.subset(kept), pool.subset(held)
    kept, held = stratified_split(pool.labels, val_fraction, seed)
    train, val = pool.subset(kept), pool.subset(held)
    mean, std = channel_stats(train.images)
    return Prepared(train, val, test, mean, std)


def save_prepared(prepared: Prepared, folder: Path) -> None:
    """Write the splits and their statistics as one folder, swapped in whole."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            imageset.save(getattr(prepared, split), tmp / f"{split}.npz")
        write_json(tmp / "stats.json", {
            "class_names": list(prepared.class_names),
            "image_shape": list(prepared.image_shape),
            "mean": list(prepared.mean),
            "std": list(prepared.std),
            "counts": {split: len(getattr(prepared, split)) for split in SPLITS},
        })


def load_prepared(folder: Path) -> Prepared:
    stats = read_json(folder / "stats.json")
    splits = {split: imageset.load(folder / f"{split}.npz") for split in SPLITS}
    return Prepared(**splits, mean=tuple(stats["mean"]), std=tuple(stats["std"]))
