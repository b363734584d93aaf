"""CSV pixel tables, as the Sign Language MNIST files: `label,pixel1,...,pixelN`, values 0..255.

Pixels run row by row, and for colour images with the channels of each pixel together (H, W, C).
Labels need not be contiguous (Sign Language MNIST has no J and no Z): the sorted label values map
to classes 0..k-1, named by `data.class_names` or by the values themselves, and are kept as the
classes' own labels, which a number in `data.classes` means.
"""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from imgpipe.config import DataConfig
from imgpipe.data.imageset import Fetched, ImageSet
from imgpipe.errors import ImgpipeError


def _line(row: int) -> int:
    return row + 2  # the header is line 1


def read_table(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, P) uint8 pixels and the N labels as the file writes them (text), every cell checked."""
    if not path.is_file():
        raise ImgpipeError(f"{path}: not found; check data.path / data.test_path")
    try:
        # Labels as text: pandas guesses a type per chunk of a large file (0..9, then A..Z: ints beside strings), and
        # takes the words NA, None or null for missing. Only an empty cell is missing, in any column.
        frame = pd.read_csv(path, skip_blank_lines=False, dtype={label_column: str}, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as error:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if found:
            expected, line, saw = found.groups()
            raise ImgpipeError(f"{path} line {line}: {saw} columns where the header has {expected}") from None
        raise ImgpipeError(f"{path}: not a readable CSV ({' '.join(str(error).split())})") from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ImgpipeError(f"{path}: not a readable CSV ({error})") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took a first row longer than the header for an index column
        raise ImgpipeError(f"{path} line 2: {len(frame.columns) + frame.index.nlevels} columns where the header has {len(frame.columns)}")
    if label_column not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:5])) + (", ..." if len(frame.columns) > 5 else "")
        raise ImgpipeError(f"{path}: no label column {label_column!r} (columns: {shown}); set data.label_column")
    if len(frame) == 0:
        raise ImgpipeError(f"{path}: has a header but no rows")
    missing = frame.isna().to_numpy()
    if missing.any():
        row, col = np.argwhere(missing)[0]
        raise ImgpipeError(f"{path} line {_line(row)}: no value in column {frame.columns[col]!r} "
                           f"(a short row or an empty cell; every row needs {len(frame.columns)} columns)")
    labels = frame.pop(label_column).to_numpy(dtype=str)
    if frame.shape[1] == 0:
        raise ImgpipeError(f"{path}: has no pixel columns besides {label_column!r}")
    for column in frame.columns:
        if pd.api.types.is_bool_dtype(frame[column]) or not pd.api.types.is_numeric_dtype(frame[column]):
            # A True/False column is no pixels, though pandas takes it for numbers.
            numbers = (pd.Series(np.nan, index=frame.index) if pd.api.types.is_bool_dtype(frame[column])
                       else pd.to_numeric(frame[column], errors="coerce"))
            if numbers.isna().any():
                row = int(np.flatnonzero(numbers.isna())[0])
                raise ImgpipeError(f"{path} line {_line(row)}, column {column!r}: {frame[column].iloc[row]!r} is not a number")
            frame[column] = numbers.astype(np.float64)  # numbers too large for int64: the range check names them
    pixels = frame.to_numpy()
    bad = (pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ImgpipeError(f"{path} line {_line(row)}, column {frame.columns[col]!r}: {pixels[row, col]} "
                           "is not a pixel value (whole numbers 0..255)")
    return pixels.astype(np.uint8), labels


def _as_numbers(labels: np.ndarray) -> np.ndarray:
    """Labels as numbers, NaN for a word."""
    return pd.to_numeric(pd.Series(labels), errors="coerce").to_numpy()


def _labels(text: np.ndarray, words: bool) -> np.ndarray:
    """A label column in the training split's kind: numbers where its every label is one (the classes keep their
    numbers; a word in another split is NaN, which no class matches), else the words as written."""
    return text if words else _as_numbers(text)


def _image_shape(path: Path, pixels: int, config: DataConfig) -> tuple[int, int, int]:
    channels = config.channels or 1
    if config.image_size is not None:
        height, width = config.image_size
        if height * width * channels != pixels:
            raise ImgpipeError(f"{path}: has {pixels} pixel columns, but data.image_size {list(config.image_size)} "
                               f"with {channels} channel(s) needs {height * width * channels}")
        return channels, height, width
    side = math.isqrt(pixels // channels)
    if side * side * channels != pixels:
        raise ImgpipeError(f"{path}: {pixels} pixel columns are not a square image with {channels} channel(s); "
                           "set data.image_size and data.channels")
    return channels, side, side


def _class_labels(values: np.ndarray) -> tuple[int, ...] | None:
    """The distinct label values as whole numbers; None for a column of words, whose classes have names only."""
    if np.issubdtype(values.dtype, np.number) and np.all(values == np.round(values)):
        return tuple(int(v) for v in values)
    return None


def pixel_table(config: DataConfig) -> Fetched:
    files = {"train": config.require_path()}
    if config.test_path is not None:
        files["test"] = config.test_path
    tables = {split: read_table(path, config.label_column) for split, path in files.items()}
    words = bool(np.isnan(_as_numbers(tables["train"][1])).any())  # one word in training makes every label a word
    tables = {split: (pixels, _labels(text, words), text) for split, (pixels, text) in tables.items()}
    values = np.unique(tables["train"][1])
    if config.class_names is not None and len(config.class_names) != len(values):
        raise ImgpipeError(f"{files['train']}: has {len(values)} distinct labels but data.class_names lists "
                           f"{len(config.class_names)} names")
    names = tuple(config.class_names or (str(v) for v in values))
    class_labels = _class_labels(values)
    splits = {}
    for split, (pixels, labels, text) in tables.items():
        unknown = ~np.isin(labels, values)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise ImgpipeError(f"{files[split]} line {_line(row)}: label {str(text[row])!r} does not occur in {files['train'].name}")
        channels, height, width = _image_shape(files[split], pixels.shape[1], config)
        images = pixels.reshape(-1, height, width, channels).transpose(0, 3, 1, 2)  # (N, C, H, W)
        classes = np.searchsorted(values, labels).astype(np.int64)
        splits[split] = ImageSet(np.ascontiguousarray(images), classes, names, class_labels)
    return Fetched(splits)
