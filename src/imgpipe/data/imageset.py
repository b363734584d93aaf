"""ImageSet: uint8 images with their labels and class names, and the folder format of its splits;
Fetched: what a source read (splits plus the decisions it made), and the raw-data folder that holds it.

A folder holds per split `<split>.images.npy` (uint8 (N, C, H, W)) and `<split>.labels.npy` (int64), and
`classes.json`. Array files are memory-mapped when loaded: a stage reads the images it uses, when it uses
them, and a dataset larger than memory goes through in chunks. Plain arrays only, so loading never
unpickles code (np.load allow_pickle=False).
"""

from collections.abc import Iterator
from contextlib import contextmanager
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

    def write_into(self, images: np.ndarray, chunk: int) -> None:
        """Copy the images into an array of their shape, `chunk` at a time (a memory-mapped split is read so)."""
        for start in range(0, len(self), chunk):
            images[start:start + chunk] = self.images[start:start + chunk]

    def subset(self, indices: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names, self.class_labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


CHUNK_BYTES = 64 * 2**20  # images read, decoded or copied at a time: what a stage holds of a split at once


def chunk_of(image_shape: tuple[int, ...]) -> int:
    """How many images of this shape make a chunk."""
    return max(1, CHUNK_BYTES // int(np.prod(image_shape)))


def chunks(count: int, image_shape: tuple[int, ...]) -> Iterator[slice]:
    step = chunk_of(image_shape)
    for start in range(0, count, step):
        yield slice(start, min(start + step, count))


CLASSES_FILE = "classes.json"  # beside the splits: their class names and the source's labels


def _arrays(folder: Path, split: str) -> tuple[Path, Path]:
    return folder / f"{split}.images.npy", folder / f"{split}.labels.npy"


class SplitsWriter:
    """Fills a folder of splits, one split at a time: each split's images an array file, created at its
    full size and written in place (`images(...)`), so no split need ever be whole in memory."""

    def __init__(self, folder: Path):
        self.folder = folder

    def images(self, split: str, count: int, shape: tuple[int, int, int]) -> np.memmap:
        """The split's images, uint8 (count, C, H, W), to fill; flushed when the folder is swapped in."""
        return np.lib.format.open_memmap(_arrays(self.folder, split)[0], mode="w+", dtype=np.uint8, shape=(count, *shape))

    def labels(self, split: str, labels: np.ndarray) -> None:
        np.save(_arrays(self.folder, split)[1], np.asarray(labels, dtype=np.int64))

    def json(self, name: str, data: dict) -> None:
        write_json(self.folder / name, data)

    def array(self, name: str, array: np.ndarray) -> None:
        np.save(self.folder / name, np.asarray(array))

    def add(self, split: str, imageset) -> None:
        """A split: an ImageSet, or any split that writes its images into an array (an image folder's,
        decoded as it is written), a chunk at a time."""
        images = self.images(split, len(imageset), imageset.image_shape)
        imageset.write_into(images, chunk_of(imageset.image_shape))
        images.flush()
        del images  # unmapped: the file is complete
        self.labels(split, imageset.labels)


@contextmanager
def writing_splits(folder: Path, class_names: tuple[str, ...], class_labels: tuple[int, ...] | None) -> Iterator[SplitsWriter]:
    """Write splits (they share these classes) into `folder`, swapped in whole when the block ends: a run
    that fails, or is killed, half-way leaves the previous folder as it was."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        writer = SplitsWriter(tmp)
        writer.json(CLASSES_FILE, {"class_names": list(class_names),
                                   "class_labels": None if class_labels is None else list(class_labels)})
        yield writer


def save_splits(splits: dict, folder: Path, json_files: dict[str, dict] | None = None) -> None:
    """Write every split (they share their classes), and any JSON files, into `folder`, swapped in whole."""
    first = next(iter(splits.values()))
    with writing_splits(folder, first.class_names, first.class_labels) as writer:
        for split, imageset in splits.items():
            writer.add(split, imageset)
        for name, data in (json_files or {}).items():
            writer.json(name, data)


def load(folder: Path, split: str) -> ImageSet:
    """A split as saved: its images memory-mapped (read from disk as they are used, never copied whole)."""
    images, labels = _arrays(folder, split)
    try:
        classes = read_json(folder / CLASSES_FILE)
        class_labels = classes["class_labels"]
        return ImageSet(np.load(images, mmap_mode="r", allow_pickle=False), np.load(labels, allow_pickle=False),
                        tuple(str(name) for name in classes["class_names"]),
                        None if class_labels is None else tuple(int(label) for label in class_labels))
    except FileNotFoundError as error:
        raise ImgpipeError(f"{error.filename}: not found; run the stage that writes it (dvc repro)") from None
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ImgpipeError(f"{images}: not a readable imgpipe image set ({error})") from None


def load_splits(folder: Path) -> dict[str, ImageSet]:
    """Every split saved in `folder`; the train split must be there."""
    if not _arrays(folder, "train")[0].exists():
        raise ImgpipeError(f"{_arrays(folder, 'train')[0]}: not found; run the stage that writes it (dvc repro)")
    return {split: load(folder, split) for split in SPLITS if _arrays(folder, split)[0].exists()}


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
