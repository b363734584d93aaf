"""Split raw data into stratified train/val/test sets and measure normalization statistics.

Images stay uint8 on disk; the per-channel mean/std (on the 0..1 scale) come from the training
split alone, so nothing about validation or test images leaks into training.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from imgpipe.errors import ImgpipeError, require
from imgpipe.files import read_json
from imgpipe.imageset import SPLITS, ImageSet, load_splits, save_splits


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
    def class_labels(self) -> tuple[int, ...] | None:
        """The source's own label of each class (None: the classes have names only)."""
        return self.train.class_labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of every image and label of every split: the same data, the same fingerprint.
        Hashed once per process: the resume key and the MLflow tags both need it."""
        digest = hashlib.blake2b(digest_size=8)
        for split in SPLITS:
            images = getattr(self, split)
            digest.update(images.images.tobytes())
            digest.update(images.labels.tobytes())
        return digest.hexdigest()


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with `fraction` of every class held out, reproducibly."""
    from sklearn.model_selection import train_test_split  # here: stages that only load splits skip its import

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


def _label_ranges(labels: tuple[int, ...]) -> str:
    """Sorted labels as runs, e.g. 0..8, 10..24 for Sign Language MNIST."""
    runs: list[list[int]] = []
    for label in sorted(labels):
        if runs and label == runs[-1][1] + 1:
            runs[-1][1] = label
        else:
            runs.append([label, label])
    return ", ".join(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}..{b}" for a, b in runs)


def _class_of(entry: int | str, names: tuple[str, ...], labels: tuple[int, ...] | None) -> int:
    """The index of the class an entry of data.classes means: a number is the source's own label
    (never a position, which a gap in the labels would shift), a string is a name."""
    if not (isinstance(entry, int) and not isinstance(entry, bool)):
        require(str(entry) in names, "classes", f"unknown class {entry!r}; the classes are: {', '.join(names)}")
        return names.index(str(entry))
    if labels is not None:
        require(entry in labels, "classes", f"no class has the label {entry}; the labels are {_label_ranges(labels)}")
        return labels.index(entry)
    # Named classes (an image folder's folders): a number can only mean a name written as one.
    example = ", ".join(names[:2])
    require(str(entry) in names, "classes",
            f"{entry} is ambiguous: the classes have names, not numbers (an image folder's are its folder names); "
            f"write the names, e.g. [{example}]")
    return names.index(str(entry))


def select_classes(raw: dict[str, ImageSet], classes: list[int | str]) -> dict[str, ImageSet]:
    """Keep only the listed classes (by the source's own label or by name), relabelled 0..k-1 in the order listed."""
    names, labels = raw["train"].class_names, raw["train"].class_labels
    require(isinstance(classes, list) and len(classes) >= 2, "classes", f"must list at least two classes, got {classes!r}")
    indices = [_class_of(entry, names, labels) for entry in classes]
    require(len(set(indices)) == len(indices), "classes", f"lists a class twice: {classes!r}")
    relabel = np.full(len(names), -1, dtype=np.int64)
    relabel[indices] = np.arange(len(indices))
    kept_names = tuple(names[i] for i in indices)
    kept_labels = None if labels is None else tuple(labels[i] for i in indices)
    subsets = {}
    for split, images in raw.items():
        keep = np.flatnonzero(relabel[images.labels] >= 0)
        subsets[split] = ImageSet(images.images[keep], relabel[images.labels[keep]], kept_names, kept_labels)
    return subsets


def prepare(raw: dict[str, ImageSet], val_fraction: float, test_fraction: float, seed: int,
            classes: list[int | str] | None = None) -> Prepared:
    """Carve val and test from the training data where the source has none, stratified by class."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        require(isinstance(fraction, float) and 0 < fraction < 1, name, f"must be a fraction between 0 and 1, got {fraction!r}")
    require(isinstance(seed, int), "seed", f"must be a whole number, got {seed!r}")
    if classes is not None:
        raw = select_classes(raw, classes)
    # Class-major order, stable within a class: the split then depends on each class's images in
    # source order only, so an image folder (listed class by class) splits exactly like the IDX or
    # CSV files it was exported from.
    raw = {split: images.subset(np.argsort(images.labels, kind="stable")) for split, images in raw.items()}
    pool, val, test = raw["train"], raw.get("val"), raw.get("test")
    if test is None:
        kept, held = stratified_split(pool.labels, test_fraction, seed)
        pool, test = pool.subset(kept), pool.subset(held)
    if val is None:
        kept, held = stratified_split(pool.labels, val_fraction, seed)
        pool, val = pool.subset(kept), pool.subset(held)
    train = pool
    mean, std = channel_stats(train.images)
    return Prepared(train, val, test, mean, std)


def save_prepared(prepared: Prepared, folder: Path) -> None:
    """Write the splits and their statistics as one folder, swapped in whole."""
    stats = {
        "class_names": list(prepared.class_names),
        "image_shape": list(prepared.image_shape),
        "mean": list(prepared.mean),
        "std": list(prepared.std),
        "counts": {split: len(getattr(prepared, split)) for split in SPLITS},
    }
    save_splits({split: getattr(prepared, split) for split in SPLITS}, folder, {"stats.json": stats})


def load_prepared(folder: Path) -> Prepared:
    stats = read_json(folder / "stats.json")
    return Prepared(**load_splits(folder), mean=tuple(stats["mean"]), std=tuple(stats["std"]))


FEW_EXAMPLES = 5  # a class with fewer images than this in a split is flagged on the data card


def data_card(prepared: Prepared, decisions: Sequence[str] = ()) -> dict:
    """Per split the images per class, plus image size, channels and statistics; thin classes flagged;
    and the decisions fetch made about the data (e.g. why it has 3 channels), one sentence each."""
    channels, height, width = prepared.image_shape
    splits = {split: getattr(prepared, split) for split in SPLITS}
    flagged = [
        f"{split}: class {name!r} has only {count} image{'s' if count != 1 else ''}"
        for split, images in splits.items()
        for name, count in images.class_counts().items()
        if count < FEW_EXAMPLES
    ]
    return {
        "classes": list(prepared.class_names),
        "image_size": [height, width],
        "channels": channels,
        "mean": list(prepared.mean),
        "std": list(prepared.std),
        "splits": {split: {"images": len(images), "per_class": images.class_counts()} for split, images in splits.items()},
        "flagged": flagged,
        "decisions": list(decisions),
    }
