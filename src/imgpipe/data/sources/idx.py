"""IDX files, the format of the original MNIST-family downloads, gzip-compressed or not.

A folder holds pairs `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]`; the
prefix `train` gives the train split, `t10k` or `test` the test split. A folder with one pair of
any other prefix is taken as the training pool.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

from imgpipe.config import DataConfig
from imgpipe.data.imageset import Fetched, ImageSet
from imgpipe.errors import ImgpipeError

SPLIT_OF_PREFIX = {"train": "train", "t10k": "test", "test": "test"}
DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """The array an IDX file holds: magic (0, 0, dtype, ndim), ndim big-endian sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: damaged inside, not only cut short
        raise ImgpipeError(f"{path}: cannot be read ({error}); is the download complete?") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in DTYPES:
        raise ImgpipeError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ImgpipeError(f"{path}: header promises {ndim} sizes but the file has {len(data)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ImgpipeError(f"{path}: header promises {shape} values ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """The inverse of read_idx for uint8 arrays, gzip-compressed if the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as file:
        file.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


def _pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        name = path.name.removesuffix(".gz")
        if name in files:
            raise ImgpipeError(f"{folder}: holds both {files[name].name} and {path.name}; keep one")
        files[name] = path
    pairs = {}
    for name, images in files.items():
        if name.endswith("-images-idx3-ubyte"):
            prefix = name.removesuffix("-images-idx3-ubyte")
            labels = files.get(f"{prefix}-labels-idx1-ubyte")
            if labels is None:
                raise ImgpipeError(f"{images}: no matching {prefix}-labels-idx1-ubyte[.gz] beside it")
            pairs[prefix] = (images, labels)
    return pairs


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, H, W) uint8 images and int64 labels, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ImgpipeError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ImgpipeError(f"{labels_path}: expected one label per image, got shape {labels.shape}")
    if len(images) != len(labels):
        raise ImgpipeError(f"{labels_path}: holds {len(labels)} labels but {images_path.name} holds {len(images)} images")
    if len(images) == 0:
        raise ImgpipeError(f"{images_path}: holds no images")
    if labels.dtype.kind not in "iu":  # a class is a label's position: 0 and up
        raise ImgpipeError(f"{labels_path}: labels must be whole numbers >= 0, got {labels.dtype} values")
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        raise ImgpipeError(f"{labels_path}: labels must be whole numbers >= 0, got {labels[negative[0]]} at item {negative[0]}")
    return images[:, None], labels.astype(np.int64)


def idx_folder(config: DataConfig) -> Fetched:
    folder = config.require_path()
    if not folder.is_dir():
        raise ImgpipeError(f"{folder}: not found or not a folder; set data.path to a folder of IDX files")
    pairs = _pairs(folder)
    if not pairs:
        raise ImgpipeError(f"{folder}: holds no *-images-idx3-ubyte[.gz] file")
    if len(pairs) == 1:  # one pair, whatever its name (e.g. only t10k): the pool prepare splits
        splits = {"train": next(iter(pairs.values()))}
    else:
        splits = {}
        for prefix, pair in pairs.items():
            if prefix not in SPLIT_OF_PREFIX:
                raise ImgpipeError(f"{pair[0]}: prefix {prefix!r} is neither train nor t10k/test")
            split = SPLIT_OF_PREFIX[prefix]
            if split in splits:  # t10k-* and test-*: which one is the test split is not for this code to guess
                raise ImgpipeError(f"{folder}: two {split} pairs ({splits[split][0].name} and {pair[0].name}); keep one")
            splits[split] = pair
    arrays = {split: read_pair(*pair) for split, pair in splits.items()}
    # The training split's labels are the classes, which keep their numbers (a subset such as 0, 1, 2, 5 has four
    # classes, not six with two empty); a label the training split lacks is refused, as the other sources do.
    values = np.unique(arrays["train"][1])
    for split, (_, labels) in arrays.items():
        unknown = np.flatnonzero(~np.isin(labels, values))
        if len(unknown):
            raise ImgpipeError(f"{splits[split][1]}: label {labels[unknown[0]]} (item {unknown[0]}) does not occur in the "
                               f"training labels ({splits['train'][1].name})")
    names, class_labels = tuple(str(v) for v in values), tuple(int(v) for v in values)
    return Fetched({split: ImageSet(images, np.searchsorted(values, labels).astype(np.int64), names, class_labels)
                    for split, (images, labels) in arrays.items()})
