"""Dataset sources for the fetch stage: each turns its origin into raw uint8 ImageSets per split.

A source returns {"train": ...} plus "val" and "test" where the dataset defines them; prepare
carves what is missing. params.yaml `data.dataset` picks the source by name.
"""

from collections.abc import Callable

import numpy as np

from imgpipe.config import DataConfig
from imgpipe.errors import require
from imgpipe.imageset import ImageSet
from imgpipe.sources.downloads import DATASETS, torchvision_source
from imgpipe.sources.idx import idx_folder
from imgpipe.sources.image_folder import image_folder
from imgpipe.sources.pixel_table import pixel_table


def digits(config: DataConfig) -> dict[str, ImageSet]:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grayscale images, 10 classes, no network."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The pixels are 0..16 intensities; spread them over 0..255 so every source shares one scale.
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    class_names = tuple(str(name) for name in bunch.target_names)
    return {"train": ImageSet(images, bunch.target.astype(np.int64), class_names)}


SOURCES: dict[str, Callable[[DataConfig], dict[str, ImageSet]]] = {
    "digits": digits,
    **{name: torchvision_source for name in DATASETS},
    "csv": pixel_table,
    "imagefolder": image_folder,
    "idx": idx_folder,
}


def fetch(config: DataConfig) -> dict[str, ImageSet]:
    require(config.dataset in SOURCES, "dataset", f"unknown dataset {config.dataset!r}; choose one of: {', '.join(SOURCES)}")
    splits = SOURCES[config.dataset](config)
    names = config.class_names
    if names is not None and config.dataset != "csv":  # csv maps its label values to names itself
        count = len(splits["train"].class_names)
        require(len(names) == count, "class_names", f"lists {len(names)} names but the dataset has {count} classes")
        splits = {split: ImageSet(s.images, s.labels, tuple(map(str, names))) for split, s in splits.items()}
    return splits

