"""Folders of image files: one sub-folder per class (the Arsenal/Liverpool logo layout), or `train/`
plus `valid/` (or `val/`) and `test/` folders each holding class folders (the fastai MNIST layout).

Any image PIL reads (PNG RGBA, palette or 16-bit, JPEG, grayscale) is converted to the channel count
asked for, transparency laid on the background colour, and resized to the image size asked for.
Decoding runs in a pool of processes, one per core.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgpipe.config import DataConfig
from imgpipe.errors import ImgpipeError
from imgpipe.imageset import ImageSet

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float grayscale scaled to 0..255 (PIL's own convert('L') clips them instead)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(array.max()), 1.0)
        return Image.fromarray(np.clip(np.rint(array * 255 / top), 0, 255).astype(np.uint8), "L")
    return image


def decode(path: Path, channels: int, size: tuple[int, int] | None, background: tuple[int, int, int]) -> np.ndarray:
    """One image as uint8 (C, H, W). Raises ImgpipeError naming the file if it is corrupt."""
    try:
        with Image.open(path) as image:
            image.load()
            image = _to_8bit(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (*background, 255))
                image = Image.alpha_composite(canvas, rgba)
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImgpipeError(f"{path}: not a readable image ({error}); remove or replace it") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _decode_all(args: tuple) -> np.ndarray:
    return decode(*args)


def _first_channels(path: Path) -> int:
    try:
        with Image.open(path) as image:
            return 1 if image.mode in GRAY_MODES else 3
    except (UnidentifiedImageError, OSError) as error:
        raise ImgpipeError(f"{path}: not a readable image ({error}); remove or replace it") from None


def _list_classes(folder: Path, on_bad_file: str) -> tuple[list[Path], list[str], int]:
    """Image files with their class names, sorted; and how many non-image files were skipped."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImgpipeError(f"{folder}: holds no class folders; put each class's images in a folder named after it")
    files, labels, skipped = [], [], 0
    for class_folder in classes:
        found = 0
        for file in sorted(p for p in class_folder.rglob("*") if p.is_file()):
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
    return files, labels, skipped


def read_split(folder: Path, config: DataConfig, channels: int | None) -> tuple[np.ndarray, list[str]]:
    """(N, C, H, W) uint8 images and their class names; channels None: the first image's own."""
    files, labels, skipped = _list_classes(folder, config.on_bad_file)
    channels = channels or _first_channels(files[0])
    if skipped:
        print(f"{folder}: skipped {skipped} file(s) that are not images (data.on_bad_file: skip)")
    jobs = [(file, channels, config.image_size, tuple(config.background)) for file in files]
    workers = min(os.cpu_count() or 1, max(1, len(jobs) // 256))  # small folders: no pool to start
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(_decode_all, jobs, chunksize=64))
    else:
        arrays = [_decode_all(job) for job in jobs]
    shape = arrays[0].shape
    for file, array in zip(files, arrays):
        if array.shape != shape:
            raise ImgpipeError(f"{file}: is {array.shape[2]}x{array.shape[1]} pixels but {files[0]} is "
                               f"{shape[2]}x{shape[1]}; set data.image_size to resize them all")
    return np.stack(arrays), labels


def image_folder(config: DataConfig) -> dict[str, ImageSet]:
    root = config.require_path()
    if not root.is_dir():
        raise ImgpipeError(f"{root}: not found or not a folder; set data.path to the folder of class folders")
    split_folders = {SPLIT_FOLDERS[p.name]: p for p in root.iterdir() if p.is_dir() and p.name in SPLIT_FOLDERS}
    if "train" not in split_folders:
        split_folders = {"train": root}
    read = {"train": read_split(split_folders.pop("train"), config, config.channels)}
    channels = read["train"][0].shape[1]  # every split gets the training images' channel count
    read |= {split: read_split(folder, config, channels) for split, folder in split_folders.items()}
    names = tuple(sorted(set(read["train"][1])))
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for split, (images, labels) in read.items():
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ImgpipeError(f"{root}: class {unknown[0]!r} of the {split} split has no training images")
        splits[split] = ImageSet(images, np.array([index[label] for label in labels], dtype=np.int64), names)
    return splits
