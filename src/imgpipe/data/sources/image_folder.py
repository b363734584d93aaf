"""Folders of image files: one sub-folder per class (the Arsenal/Liverpool logo layout), or `train/`
plus `valid/` (or `val/`, `validation/`) and `test/` folders each holding class folders (the fastai MNIST layout;
in any case, and Kaggle's `Training/` and `Testing/`). Hidden files and folders are passed over.

Any image PIL reads (PNG RGBA, palette or 16-bit, JPEG, grayscale) is converted to the channel count
asked for (none asked: 3 if any image of any split is in colour, by its PIL mode, else 1),
transparency laid on the background colour, and resized to the image size asked for: a JPEG is first
decoded at the smallest of 1/2, 1/4 or 1/8 scale that still covers that size (libjpeg scales in the DCT
domain), so a 12-megapixel photo bound for 224x224 decodes about 6x faster (benchmarks/photo_decode.py;
the entropy decoding, which does not scale, is most of what is left). Decoding runs in a pool of
processes, one per core, where there is enough work. The classes have names only (the folders'), no
numeric labels.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from imgpipe.config import DataConfig
from imgpipe.data.decode import IMAGE_SUFFIXES, UNREADABLE, decode, unreadable, upright_size
from imgpipe.data.imageset import SPLITS, Fetched
from imgpipe.errors import ImgpipeError

# Split folders by name, in any case (Kaggle's Training/ and Testing/ too): the split each holds.
SPLIT_FOLDERS = {"train": "train", "training": "train", "valid": "val", "val": "val", "validation": "val", "test": "test",
                 "testing": "test"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _decode_all(args: tuple) -> np.ndarray:
    return decode(*args)


def _is_colour(path: Path) -> bool:
    """By the file's mode alone: Image.open reads the header, not the pixels, so this is cheap."""
    try:
        with Image.open(path) as image:
            return image.mode not in GRAY_MODES
    except UNREADABLE as error:
        raise unreadable(path, error) from None


def pool_size(files: list[Path] | tuple[Path, ...]) -> int:
    """Processes worth starting to decode these files: one per core where there is enough work, counted
    in files (256 small ones) or in bytes to decode (16 MB: a handful of phone photos), else none."""
    work = max(len(files) // 256, sum(file.stat().st_size for file in files) // (16 * 2**20))
    return min(os.cpu_count() or 1, max(1, work))


def _map(function, jobs: list) -> list:
    """function over every job, in a pool of processes, one per core, where there are enough jobs."""
    workers = min(os.cpu_count() or 1, max(1, len(jobs) // 256))  # reading headers: small folders need no pool
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(function, jobs, chunksize=64))
    return [function(job) for job in jobs]


def choose_channels(files: list[Path], root: Path, asked: int | None) -> tuple[int, str]:
    """The channel count, and why, as a sentence for the data card. Unless data.channels says, every
    image of every split is looked at: one colour image among greyscale ones makes the set colour,
    so a greyscale file that happens to sort first cannot turn the others grey."""
    if asked is not None:
        return asked, f"channels: {asked}, as data.channels asks"
    colour = [file for file, is_colour in zip(files, _map(_is_colour, files)) if is_colour]
    if not colour:
        return 1, "channels: 1 (grey): every image is greyscale"
    if len(colour) == len(files):
        return 3, "channels: 3 (colour): every image is in colour"
    verb = "is" if len(colour) == 1 else "are"
    return 3, (f"channels: 3 (colour), because {len(colour)} of {len(files)} images {verb} in colour, "
               f"e.g. {colour[0].relative_to(root).as_posix()}")


def _list_classes(folder: Path, on_bad_file: str) -> tuple[list[Path], list[str]]:
    """Image files with their class names, sorted; files that are not images skipped (and counted) or refused."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImgpipeError(f"{folder}: holds no class folders; put each class's images in a folder named after it")
    files, labels, skipped = [], [], 0
    for class_folder in classes:
        found = 0
        # Hidden files and folders are no images: a .thumbs/ cache, macOS's ._photo.png beside each photo.
        for file in sorted(p for p in class_folder.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(class_folder).parts)):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                if on_bad_file == "error":
                    raise ImgpipeError(f"{file}: not an image file; remove it, or set data.on_bad_file: skip")
                skipped += 1
                continue
            files.append(file)
            labels.append(class_folder.name)
            found += 1
        if found == 0:
            raise ImgpipeError(f"{class_folder}: class folder holds no images")
    if skipped:
        print(f"{folder}: skipped {skipped} file(s) that are not images (data.on_bad_file: skip)")
    return files, labels


def image_folder(config: DataConfig) -> Fetched:
    root = config.require_path()
    if not root.is_dir():
        raise ImgpipeError(f"{root}: not found or not a folder; set data.path to the folder of class folders")
    split_folders = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLIT_FOLDERS):
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in split_folders:
            raise ImgpipeError(f"{root}: both {split_folders[split].name}/ and {folder.name}/ hold the {split} split; keep one")
        split_folders[split] = folder
    if split_folders and "train" not in split_folders:  # else its test/ would become a class of training images
        found = next(iter(split_folders.values()))
        raise ImgpipeError(f"{root}: holds a {found.name}/ split folder but no train/ one; put the training class folders "
                           f"under train/ (or rename {found.name}/ if it is a class)")
    if not split_folders:
        split_folders = {"train": root}
    listed = {split: _list_classes(split_folders[split], config.on_bad_file) for split in SPLITS if split in split_folders}
    names = tuple(sorted(set(listed["train"][1])))
    for split, (_, labels) in listed.items():
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ImgpipeError(f"{root}: class {unknown[0]!r} of the {split} split has no training images")
    files = [file for split_files, _ in listed.values() for file in split_files]
    channels, decision = choose_channels(files, root, config.channels)
    size = tuple(config.image_size) if config.image_size is not None else _size_of(files[0])
    index = {name: i for i, name in enumerate(names)}
    splits = {split: FolderSplit(tuple(split_files), np.array([index[label] for label in labels], dtype=np.int64), names,
                                 (channels, *size), tuple(config.background), resize=config.image_size is not None, sized_by=files[0])
              for split, (split_files, labels) in listed.items()}
    return Fetched(splits, (decision,))


def _size_of(file: Path) -> tuple[int, int]:
    """(height, width) from the file's header, upright as decode turns it."""
    try:
        with Image.open(file) as image:
            return upright_size(image)
    except UNREADABLE as error:
        raise unreadable(file, error) from None


@dataclass(frozen=True)
class FolderSplit:
    """A split of an image folder, decoded when it is written (SplitsWriter): a chunk of images at a time,
    by a pool of processes, straight into its array file, so a folder larger than memory goes through."""

    files: tuple[Path, ...]
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W) every image becomes
    background: tuple[int, int, int]
    resize: bool  # data.image_size set: resize every image; else every image must already be H x W
    sized_by: Path | None = None  # without resize: the file whose size every image must have (the first listed)
    class_labels: None = None  # an image folder's classes have names only

    def __len__(self) -> int:
        return len(self.files)

    def write_into(self, images: np.ndarray, chunk: int) -> None:
        """Decode every file into images (N, C, H, W), `chunk` files at a time, in order."""
        channels, height, width = self.image_shape
        jobs = [(file, channels, (height, width) if self.resize else None, self.background) for file in self.files]
        workers = pool_size(self.files)
        with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
            for start in range(0, len(jobs), chunk):
                batch = jobs[start:start + chunk]
                arrays = pool.map(_decode_all, batch, chunksize=max(1, min(16, len(batch) // (4 * workers)))) if pool else map(_decode_all, batch)
                for offset, array in enumerate(arrays):
                    if array.shape != self.image_shape:
                        file = self.files[start + offset]
                        raise ImgpipeError(f"{file}: is {array.shape[2]}x{array.shape[1]} pixels but {self.sized_by} is "
                                           f"{width}x{height}; set data.image_size to resize them all")
                    images[start + offset] = array

    @cached_property
    def images(self) -> np.ndarray:
        """Every image decoded, in memory: for small folders (tests, benchmarks); fetch writes them in chunks."""
        images = np.empty((len(self), *self.image_shape), dtype=np.uint8)
        self.write_into(images, chunk=len(self) or 1)
        return images
