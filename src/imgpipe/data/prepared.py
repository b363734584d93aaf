"""The prepared folder, the format training reads: the splits (uint8 images memory-mapped, labels, each image's
id) and stats.json (the training split's per-channel statistics, the data fingerprint, where each split came
from). Written by imgpipe.data.prepare; read by training, evaluation and the later stages.
"""

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from imgpipe.data.imageset import SPLITS, ImageSet, chunks, load_splits, writing_splits
from imgpipe.errors import ImgpipeError
from imgpipe.files import read_json

STATS_FILE = "stats.json"


@dataclass(frozen=True)
class Prepared:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: tuple[float, ...]  # per channel, pixels scaled to 0..1, training split only
    std: tuple[float, ...]
    known_fingerprint: str | None = None  # as prepare computed it while writing the folder (stats.json)
    excluded: int = 0  # training images left out because data.exclude listed them

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def class_labels(self) -> tuple[int, ...] | None:
        """The source's own label of each class (None: the classes have names only)."""
        return self.train.class_labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of every image and label of every split: the same data, the same fingerprint.
        Read from the prepared folder, else hashed once per process, a chunk at a time."""
        if self.known_fingerprint is not None:
            return self.known_fingerprint
        digest = hashlib.blake2b(digest_size=8)
        for split in SPLITS:
            images = getattr(self, split)
            for part in chunks(len(images), images.image_shape):
                digest.update(np.ascontiguousarray(images.images[part]).tobytes())
            digest.update(images.labels.astype(np.int64).tobytes())
        return digest.hexdigest()


def validation_fingerprint(prepared: "Prepared") -> str:
    """A short hash of the validation split alone (its images, labels and class names): the split models are chosen
    on, the same when only the training split changed (images excluded from it, say), so that their val figures compare."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update("\0".join(prepared.class_names).encode())
    images = prepared.val
    for part in chunks(len(images), images.image_shape):
        digest.update(np.ascontiguousarray(images.images[part]).tobytes())
    digest.update(images.labels.astype(np.int64).tobytes())
    return digest.hexdigest()


def stats_record(names, shape, mean, std, counts: dict[str, int], fingerprint: str) -> dict:
    return {"class_names": list(names), "image_shape": list(shape), "mean": list(mean), "std": list(std),
            "counts": counts, "fingerprint": fingerprint}


def save_prepared(prepared: Prepared, folder: Path) -> None:
    """Write prepared splits held in memory, with their statistics, as one folder, swapped in whole."""
    with writing_splits(folder, prepared.class_names, prepared.class_labels) as writer:
        for split in SPLITS:
            writer.add(split, getattr(prepared, split))
        writer.json(STATS_FILE, stats_record(prepared.class_names, prepared.image_shape, prepared.mean, prepared.std,
                                       {split: len(getattr(prepared, split)) for split in SPLITS}, prepared.fingerprint))


def load_prepared(folder: Path) -> Prepared:
    """The prepared splits, memory-mapped, with their statistics and fingerprint."""
    stats = read_json(folder / STATS_FILE)
    return Prepared(**load_splits(folder), mean=tuple(stats["mean"]), std=tuple(stats["std"]),
                    known_fingerprint=stats.get("fingerprint"), excluded=stats.get("excluded", 0))


def image_ids(folder: Path, split: str) -> np.ndarray:
    """Each image's id in a prepared split: `<raw split>:<index there>` (train:1234), which names the same image
    whatever the split settings, so a list of ids can be left out of a later run's training (data.exclude)."""
    source = read_json(folder / STATS_FILE).get("sources", {}).get(split)
    indices = folder / f"{split}.ids.npy"
    if source is None or not indices.exists():
        raise ImgpipeError(f"{folder}: prepared by an older imgpipe, without image ids; run the prepare stage again (dvc repro)")
    return ids_of(source, np.load(indices))


def ids_of(source: str, indices: np.ndarray) -> np.ndarray:
    """Image ids: `<raw split>:<index there>`."""
    return np.array([f"{source}:{index}" for index in indices])
