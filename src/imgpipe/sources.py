"""Dataset sources for the fetch stage: each returns its raw splits as ImageSets.

A source returns {"train": ...} and, where the dataset defines one, {"test": ...}; prepare carves
what is missing. Sources are chosen by name (params.yaml `data.dataset`).
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgpipe import imageset
from imgpipe.errors import require
from imgpipe.files import atomic_path
from imgpipe.imageset import ImageSet

Source = Callable[[Path | None], dict[str, ImageSet]]


def digits(path: Path | None = None) -> dict[str, ImageSet]:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grayscale images, 10 classes, no network."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The pixels are 0..16 intensities; spread them over 0..255 so every source shares one scale.
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    class_names = tuple(str(name) for name in bunch.target_names)
    return {"train": ImageSet(images, bunch.target.astype(np.int64), class_names)}


SOURCES: dict[str, Source] = {"digits": digits}


def fetch(dataset: str, path: Path | None = None) -> dict[str, ImageSet]:
    require(dataset in SOURCES, "dataset", f"unknown dataset {dataset!r}; choose one of: {', '.join(SOURCES)}")
    return SOURCES[dataset](path)


def save_raw(splits: dict[str, ImageSet], folder: Path) -> None:
    """Write every split as <split>.npz into `folder`, swapped in whole."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for split, images in splits.items():
            imageset.save(images, tmp / f"{split}.npz")


def load_raw(folder: Path) -> dict[str, ImageSet]:
    splits = {"train": imageset.load(folder / "train.npz")}
    if (folder / "test.npz").exists():
        splits["test"] = imageset.load(folder / "test.npz")
    return splits
