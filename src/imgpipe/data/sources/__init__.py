"""Dataset sources for the fetch stage: each turns its origin into raw uint8 ImageSets per split.

A source returns a Fetched: splits {"train": ...} plus "val" and "test" where the dataset defines
them (prepare carves what is missing), and any decisions it made about the data, for the data card.
params.yaml `data.dataset` picks the source by name.
"""

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgpipe.config import DataConfig
from imgpipe.data.imageset import Fetched, ImageSet
from imgpipe.data.sources.downloads import DATASETS, torchvision_source
from imgpipe.data.sources.idx import idx_folder
from imgpipe.data.sources.image_folder import image_folder
from imgpipe.data.sources.pixel_table import pixel_table
from imgpipe.errors import require

DIGITS = Path("datasets", "data", "digits.csv.gz")  # inside scikit-learn: what sklearn.datasets.load_digits reads


def digits(config: DataConfig) -> Fetched:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grayscale images, 10 classes, no network.

    Read from scikit-learn's own file, as load_digits reads it (one row per image: 64 pixels, then the
    label), without importing scikit-learn: a second of the fetch stage's start-up."""
    package = importlib.util.find_spec("sklearn")  # finds the package (a dependency of imgpipe) without running it
    table = np.loadtxt(Path(package.submodule_search_locations[0]) / DIGITS, delimiter=",")
    # The pixels are 0..16 intensities; spread them over 0..255 so every source shares one scale.
    images = np.rint(table[:, :-1].reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)  # (N, 1, 8, 8)
    class_names = tuple(str(label) for label in range(10))
    return Fetched({"train": ImageSet(images, table[:, -1].astype(np.int64), class_names, tuple(range(10)))})


SOURCES: dict[str, Callable[[DataConfig], Fetched]] = {
    "digits": digits,
    **{name: torchvision_source for name in DATASETS},
    "csv": pixel_table,
    "imagefolder": image_folder,
    "idx": idx_folder,
}


def fetch_dataset(config: DataConfig) -> Fetched:
    """The dataset `config` names, with the decisions its source made (what the fetch stage saves)."""
    require(config.dataset in SOURCES, "dataset", f"unknown dataset {config.dataset!r}; choose one of: {', '.join(SOURCES)}")
    fetched = SOURCES[config.dataset](config)
    names = config.class_names
    if names is not None and config.dataset != "csv":  # csv maps its label values to names itself
        count = len(fetched.splits["train"].class_names)
        require(len(names) == count, "class_names", f"lists {len(names)} names but the dataset has {count} classes")
        renamed = {split: dataclasses.replace(s, class_names=tuple(map(str, names))) for split, s in fetched.splits.items()}
        fetched = dataclasses.replace(fetched, splits=renamed)
    return fetched


def fetch(config: DataConfig) -> dict[str, ImageSet]:
    """The splits alone, for callers that have no data card to write (tests, benchmarks)."""
    return fetch_dataset(config).splits

