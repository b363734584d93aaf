import numpy as np
import pytest

from imgpipe.config import DataConfig
from imgpipe.prepare import prepare
from imgpipe.sources import digits


@pytest.fixture(scope="session")
def digits_prepared():
    """The real default dataset, prepared as the pipeline prepares it."""
    return prepare(digits(DataConfig()).splits, val_fraction=0.15, test_fraction=0.2, seed=0)


def random_images(n: int, shape: tuple[int, int, int], classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = np.arange(n) % classes
    return images, labels.astype(np.int64)
