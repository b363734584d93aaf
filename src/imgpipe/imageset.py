"""ImageSet: uint8 images with their labels and class names, and its .npz file format.

The format holds plain arrays only, so loading it never unpickles code (np.load allow_pickle=False).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgpipe.errors import ImgpipeError
from imgpipe.files import atomic_path, write_json

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, C, H, W) uint8, raw pixel values 0..255
    labels: np.ndarray  # (N,) int64, class indices 0..k-1
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)"""
        return tuple(int(d) for d in self.images.shape[1:])

    def subset(self, indices: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def save(imageset: ImageSet, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(
            file,
            images=imageset.images,
            labels=imageset.labels.astype(np.int64),
            class_names=np.array(imageset.class_names, dtype=np.str_),
        )


def load(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return ImageSet(arrays["images"], arrays["labels"], tuple(str(c) for c in arrays["class_names"]))
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
