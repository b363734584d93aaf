"""ImageSet: uint8 images with their labels and class names, and its .npz file format; Fetched: what
a source read (splits plus the decisions it made), and the raw-data folder that holds it.

The format holds plain arrays only, so loading it never unpickles code (np.load allow_pickle=False).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgpipe.errors import ImgpipeError
from imgpipe.files import atomic_path, read_json, write_json

SPLITS = ("train", "val", "test")
DECISIONS_FILE = "fetch.json"  # beside the raw splits: the source's decisions, for the data card


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, C, H, W) uint8, raw pixel values 0..255
    labels: np.ndarray  # (N,) int64, class indices 0..k-1
    class_names: tuple[str, ...]
    # The source's own label value of each class (Sign Language MNIST: 0..8, 10..24), so that a
    # number in data.classes means the same class whichever source it came from; None where the
    # classes have names only (an image folder's class folders).
    class_labels: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        if self.class_labels is not None and len(self.class_labels) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.class_labels)} class labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)"""
        return tuple(int(d) for d in self.images.shape[1:])

    def subset(self, indices: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names, self.class_labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def save(imageset: ImageSet, path: Path) -> None:
    arrays = {
        "images": imageset.images,
        "labels": imageset.labels.astype(np.int64),
        "class_names": np.array(imageset.class_names, dtype=np.str_),
    }
    if imageset.class_labels is not None:
        arrays["class_labels"] = np.array(imageset.class_labels, dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)


def load(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            # Files written before class labels were recorded have none: their classes go by name.
            class_labels = tuple(int(v) for v in arrays["class_labels"]) if "class_labels" in arrays.files else None
            return ImageSet(arrays["images"], arrays["labels"], tuple(str(c) for c in arrays["class_names"]), class_labels)
    except FileNotFoundError:
        raise ImgpipeError(f"{path}: not found; run the stage that writes it (dvc repro)") from None
    except (OSError, KeyError, ValueError) as error:
        raise ImgpipeError(f"{path}: not a readable imgpipe image set ({error})") from None


def save_splits(splits: dict[str, ImageSet], folder: Path, json_files: dict[str, dict] | None = None) -> None:
    """Write every split as <split>.npz (plus any JSON files) into `folder`, swapped in whole."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for split, images in splits.items():
            save(images, tmp / f"{split}.npz")
        for name, data in (json_files or {}).items():
            write_json(tmp / name, data)


def load_splits(folder: Path) -> dict[str, ImageSet]:
    """Every split saved in `folder`; the train split must be there."""
    if not (folder / "train.npz").exists():
        raise ImgpipeError(f"{folder / 'train.npz'}: not found; run the stage that writes it (dvc repro)")
    return {split: load(folder / f"{split}.npz") for split in SPLITS if (folder / f"{split}.npz").exists()}


@dataclass(frozen=True)
class Fetched:
    """What a source read: its raw splits, and what it decided about them on the way (one sentence
    each, e.g. why the images have 3 channels), shown on the data card."""

    splits: dict[str, ImageSet]
    decisions: tuple[str, ...] = ()


def save_fetched(fetched: Fetched, folder: Path) -> None:
    save_splits(fetched.splits, folder, {DECISIONS_FILE: {"decisions": list(fetched.decisions)}})


def load_fetched(folder: Path) -> Fetched:
    """The raw data fetch wrote; a folder from before decisions were recorded has none."""
    splits = load_splits(folder)
    path = folder / DECISIONS_FILE
    if not path.exists():
        return Fetched(splits)
    data = read_json(path)
    decisions = data.get("decisions") if isinstance(data, dict) else None
    if not (isinstance(decisions, list) and all(isinstance(d, str) for d in decisions)):
        raise ImgpipeError(f"{path}: 'decisions' must be a list of sentences; run dvc repro -f fetch")
    return Fetched(splits, tuple(decisions))
