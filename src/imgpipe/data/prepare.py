"""Split raw data into stratified train/val/test sets and measure normalization statistics.

Images stay uint8 on disk; the per-channel mean/std (on the 0..1 scale) come from the training
split alone, so nothing about validation or test images leaks into training.
"""

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgpipe.data.imageset import SPLITS, ImageSet, chunks, writing_splits
from imgpipe.data.prepared import STATS_FILE, Prepared, ids_of, load_prepared, stats_record
from imgpipe.errors import ImgpipeError, InvalidSetting, is_int, require


def stratified_split(labels: np.ndarray, fraction: float, seed: int, *, names: list[str] | None = None,
                     setting: str = "fraction") -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), each sorted: `fraction` of the images held out (rounded up), shared out over the
    classes in proportion to their sizes (the rounding's leftover images to the largest remainders, ties to the
    lower label), each class's held images drawn at random, the same for the same seed. numpy alone: importing
    scikit-learn for its splitter cost every prepare 1.3 s, more than splitting the digits. A class too small to
    split fails as the setting `setting`, naming it as `names[label]` (else by its label)."""
    labels = np.asarray(labels)
    classes, class_of, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    if np.any(sizes < 2):
        small = classes[sizes < 2][0]
        raise InvalidSetting(setting, f"cannot hold out {fraction} of {len(labels)} images: class "
                                      f"{small if names is None else names[small]} has 1 image there, and every class needs one "
                                      "to keep and one to hold out")
    held_in_all = math.ceil(round(fraction * len(labels), 9))  # 0.55 x 100 is 55.000000000000007 in floating point
    share = sizes * (held_in_all / len(labels))
    held_per_class = np.floor(share).astype(int)
    leftover = held_in_all - held_per_class.sum()
    held_per_class[np.argsort(-(share - held_per_class), kind="stable")[:leftover]] += 1
    held_per_class = np.clip(held_per_class, 1, sizes - 1)  # every class on both sides
    shuffled = np.random.default_rng(seed).permutation(len(labels))
    by_class = shuffled[np.argsort(class_of[shuffled], kind="stable")]  # each class in a seeded random order
    rank = np.arange(len(labels)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position within its class
    held = np.sort(by_class[rank < np.repeat(held_per_class, sizes)])
    return np.setdiff1d(np.arange(len(labels)), held, assume_unique=True), held


def channel_histogram(images: np.ndarray) -> np.ndarray:
    """Per channel, how many pixels of uint8 (N, C, H, W) images take each value: (C, 256) counts,
    counted a chunk at a time (a memory-mapped split is never read whole)."""
    counts = np.zeros((images.shape[1], 256), dtype=np.int64)
    for part in chunks(len(images), images.shape[1:]):
        block = np.asarray(images[part])
        for channel in range(images.shape[1]):
            counts[channel] += np.bincount(block[:, channel].ravel(), minlength=256)
    return counts


def stats_of(counts: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std, on the 0..1 scale, of the pixels a channel_histogram counted:
    exact moments without a float copy of the data."""
    values = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for channel_counts in counts.astype(np.float64):
        mean = channel_counts @ values / channel_counts.sum()
        var = channel_counts @ (values - mean) ** 2 / channel_counts.sum()
        means.append(float(mean))
        stds.append(float(max(np.sqrt(var), 1e-8)))  # a blank channel must not divide by zero
    return tuple(means), tuple(stds)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 (N, C, H, W) images on the 0..1 scale."""
    return stats_of(channel_histogram(images))


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


def _relabel(raw: dict, classes: list[int | str] | None) -> tuple[np.ndarray, tuple[str, ...], tuple[int, ...] | None]:
    """Old class index -> new (-1: dropped), and the kept classes' names and source labels, in the order listed."""
    names, labels = raw["train"].class_names, raw["train"].class_labels
    if classes is None:
        return np.arange(len(names)), names, labels
    require(isinstance(classes, list) and len(classes) >= 2, "classes", f"must list at least two classes, got {classes!r}")
    indices = [_class_of(entry, names, labels) for entry in classes]
    require(len(set(indices)) == len(indices), "classes", f"lists a class twice: {classes!r}")
    relabel = np.full(len(names), -1, dtype=np.int64)
    relabel[indices] = np.arange(len(indices))
    return relabel, tuple(names[i] for i in indices), None if labels is None else tuple(labels[i] for i in indices)


def select_classes(raw: dict[str, ImageSet], classes: list[int | str]) -> dict[str, ImageSet]:
    """Keep only the listed classes (by the source's own label or by name), relabelled 0..k-1 in the order listed."""
    relabel, names, labels = _relabel(raw, classes)
    subsets = {}
    for split, images in raw.items():
        keep = np.flatnonzero(relabel[images.labels] >= 0)
        subsets[split] = ImageSet(images.images[keep], relabel[images.labels[keep]], names, labels)
    return subsets


def _size(shape: tuple[int, int, int]) -> str:
    channels, height, width = shape
    return f"{height}x{width} with {channels} channel{'s' * (channels > 1)}"


@dataclass(frozen=True)
class Selection:
    """A prepared split as images of a raw split: which, in which order, with which (relabelled) labels."""

    source: str
    indices: np.ndarray
    labels: np.ndarray

    def take(self, positions: np.ndarray) -> "Selection":
        return Selection(self.source, self.indices[positions], self.labels[positions])


def plan_splits(raw: dict, val_fraction: float, test_fraction: float, seed: int,
                classes: list[int | str] | None = None) -> tuple[dict[str, Selection], tuple[str, ...], tuple[int, ...] | None]:
    """Which raw images make each prepared split, decided on the labels alone (no image is read): val
    and test carved from the training data where the source has none, stratified by class. Returns the
    selections, and the kept classes' names and source labels."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        require(isinstance(fraction, float) and 0 < fraction < 1, name, f"must be a fraction between 0 and 1, got {fraction!r}")
    require(is_int(seed) and seed >= 0, "seed", f"must be a whole number >= 0, got {seed!r}")
    for split, images in raw.items():  # the prepared splits are one array shape
        if images.image_shape != raw["train"].image_shape:
            raise ImgpipeError(f"the {split} images are {_size(images.image_shape)} but the train images {_size(raw['train'].image_shape)}: "
                               "every split needs one size (data.image_size sets it for image folders and CSVs)")
    relabel, names, labels = _relabel(raw, classes)
    if len(names) < 2:
        raise ImgpipeError(f"the data has a single class ({names[0]!r}): a classifier needs two or more")
    plan = {}
    for split, images in raw.items():
        relabelled = relabel[images.labels]
        kept = np.flatnonzero(relabelled >= 0)
        # Class-major order, stable within a class: the split then depends on each class's images in
        # source order only, so an image folder (listed class by class) splits exactly like the IDX or
        # CSV files it was exported from. The source's class order, not data.classes' order: [7, 3] splits as [3, 7].
        kept = kept[np.argsort(images.labels[kept], kind="stable")]
        plan[split] = Selection(split, kept, relabelled[kept])
    pool = plan["train"]
    # A class by its name, and by the source's own label where that differs (Sign Language MNIST's K is label 10).
    shown = [repr(name) + ("" if labels is None or str(labels[i]) == name else f" (label {labels[i]})") for i, name in enumerate(names)]
    carved = [split for split in ("test", "val") if split not in plan]  # split off the training images, one per class at least
    sizes = np.bincount(pool.labels, minlength=len(names))
    if carved and sizes.min() < len(carved) + 1:
        small = int(np.argmin(sizes))
        raise ImgpipeError(f"class {shown[small]} has {sizes[small]} training image{'' if sizes[small] == 1 else 's'}: splitting "
                           f"{' and '.join(carved)} off needs {len(carved) + 1} (one for each split); add images, or leave it out "
                           "with data.classes")
    # Carved by the source's labels (classes in the source's order) and named as kept: the same images are held out
    # whatever order data.classes lists them in.
    source_label = np.empty(len(names), dtype=np.int64)  # kept class -> its index in the source
    source_label[relabel[relabel >= 0]] = np.flatnonzero(relabel >= 0)
    shown_by_source = {int(source_label[i]): text for i, text in enumerate(shown)}
    if "test" not in plan:
        kept, held = stratified_split(source_label[pool.labels], test_fraction, seed, names=shown_by_source, setting="test_fraction")
        pool, plan["test"] = pool.take(kept), pool.take(held)
    if "val" not in plan:
        kept, held = stratified_split(source_label[pool.labels], val_fraction, seed, names=shown_by_source, setting="val_fraction")
        pool, plan["val"] = pool.take(kept), pool.take(held)
    plan["train"] = pool
    for split, selection in plan.items():  # a source's own val or test split may hold none of the classes kept
        if not len(selection.indices):
            raise ImgpipeError(f"the {split} split holds no image of the classes kept ({', '.join(names)}); "
                               "every split needs some to score them")
    return plan, names, labels


def prepare(raw: dict[str, ImageSet], val_fraction: float, test_fraction: float, seed: int,
            classes: list[int | str] | None = None) -> Prepared:
    """The prepared splits in memory (see plan_splits), with the training split's statistics."""
    plan, names, labels = plan_splits(raw, val_fraction, test_fraction, seed, classes)
    train, val, test = (ImageSet(np.asarray(raw[plan[split].source].images[plan[split].indices]), plan[split].labels, names, labels)
                        for split in SPLITS)
    return Prepared(train, val, test, *channel_stats(train.images))


def prepare_into(raw: dict[str, ImageSet], folder: Path, val_fraction: float, test_fraction: float, seed: int,
                 classes: list[int | str] | None = None, exclude: set[str] = frozenset()) -> Prepared:
    """As prepare, written into `folder` a chunk at a time (raw splits memory-mapped: never whole in
    memory), the statistics and the fingerprint counted on the way; the folder is swapped in whole.
    `exclude`: image ids (see image_ids) left out of the training split. Returns the prepared folder, memory-mapped."""
    plan, names, labels = plan_splits(raw, val_fraction, test_fraction, seed, classes)
    # A list made for other data would leave out nothing, or the wrong images.
    unknown = next((image_id for image_id in sorted(exclude) if not _names_an_image(image_id, raw)), None)
    require(unknown is None, "exclude", f"{unknown} names no image of this data (its raw splits: "
            f"{', '.join(f'{name}:0..{len(images) - 1}' for name, images in raw.items())}); was the list made for other data?")
    listed = len(plan["train"].indices)
    plan["train"] = without(plan["train"], exclude)
    emptied = next((name for label, name in enumerate(names) if not np.any(plan["train"].labels == label)), None)
    require(emptied is None, "exclude", f"leaves class {emptied!r} no training image; keep some, or leave the class out "
            "with data.classes")
    shape = raw["train"].image_shape
    digest, counts = hashlib.blake2b(digest_size=8), np.zeros((shape[0], 256), dtype=np.int64)
    with writing_splits(folder, names, labels) as writer:
        for split in SPLITS:
            selection = plan[split]
            images = writer.images(split, len(selection.indices), shape)
            for part in chunks(len(selection.indices), shape):
                block = np.asarray(raw[selection.source].images[selection.indices[part]])
                images[part] = block
                digest.update(block.tobytes())  # as Prepared.fingerprint hashes: images, then labels, per split
                if split == "train":
                    counts += channel_histogram(block)
            images.flush()
            del images  # unmapped: the file is complete
            writer.labels(split, selection.labels)
            writer.array(f"{split}.ids.npy", selection.indices)
            digest.update(selection.labels.astype(np.int64).tobytes())
        mean, std = stats_of(counts)
        writer.json(STATS_FILE, stats_record(names, shape, mean, std, {split: len(plan[split].indices) for split in SPLITS},
                                       digest.hexdigest()) | {"sources": {split: plan[split].source for split in SPLITS},
                                                            "excluded": listed - len(plan["train"].indices)})
    return load_prepared(folder)


def _names_an_image(image_id: str, raw: dict) -> bool:
    split, index = image_id.split(":")
    return split in raw and int(index) < len(raw[split])


def without(selection: Selection, exclude: set[str]) -> Selection:
    """The selection less the images whose ids are listed."""
    if not exclude:
        return selection
    return selection.take(np.flatnonzero(~np.isin(ids_of(selection.source, selection.indices), list(exclude))))


def read_excluded(path: Path) -> set[str]:
    """The image ids a file lists: one per line (# starts a comment), or a CSV with an `id` column: a copy of
    metrics/label_issues.csv kept to the rows you agree with (not that file itself: prepare would depend on a later
    stage's output, which DVC refuses), as a spreadsheet saves it too (a byte-order mark, quoted cells)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as error:
        raise ImgpipeError(f"{path}: cannot read the list of images to exclude ({error.strerror})") from None
    except UnicodeDecodeError:  # a spreadsheet's "Unicode text" (UTF-16) or a legacy code page
        raise ImgpipeError(f"{path}: the list of images to exclude is not UTF-8 text; save it as UTF-8 (CSV UTF-8)") from None
    rows = [line.split("#")[0].strip() for line in lines]
    rows = [row for row in rows if row]
    if rows and ("," in rows[0] or rows[0].strip('"') == "id"):
        table = list(csv.reader(rows))
        header = [name.strip() for name in table[0]]
        require("id" in header, "exclude", f"{path}: a CSV must have an 'id' column; it has {', '.join(header)}")
        column = header.index("id")
        rows = [row[column].strip() if column < len(row) else "" for row in table[1:]]
    bad = next((row for row in rows if not IMAGE_ID.fullmatch(row)), None)
    require(bad is None, "exclude", f"{path}: {bad!r} is not an image id (such as train:1234)")
    return {f"{split}:{int(number)}" for split, number in (row.split(":") for row in rows)}  # train:0012 is train:12


IMAGE_ID = re.compile(r"(train|val|test):\d+")
