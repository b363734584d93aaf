"""Builders of real-format dataset files for tests: CSV pixel tables and image folders
(IDX files come from imgpipe.data.sources.idx.write_idx)."""

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist-t10k"


def write_csv(path: Path, images: np.ndarray, labels, label_column: str = "label") -> Path:
    """label,pixel1,...,pixelN with pixels row by row, channels last."""
    flat = images.transpose(0, 2, 3, 1).reshape(len(images), -1)
    header = ",".join([label_column] + [f"pixel{i + 1}" for i in range(flat.shape[1])])
    rows = [",".join([str(label)] + [str(v) for v in row]) for label, row in zip(labels, flat)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_image_folder(root: Path, images: np.ndarray, labels, names) -> Path:
    """root/<class>/<index>.png, zero-padded so files list in source order within a class."""
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(names[label])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")
    return root


def small_digits(n: int = 40, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random 1-channel images with labels cycling through 4 classes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8), np.arange(n) % 4


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few bytes that claims width x height: a decompression bomb, refused from its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
