"""Real MNIST images (the first 2,500 of its test set) through IDX, CSV and image-folder copies: the same prepared
tensors. (All 10,000 took 7 CPU-seconds, most of them writing and decoding PNGs, for the same check.)"""

import numpy as np
import pytest
from datafiles import MNIST_T10K, write_csv, write_image_folder

from imgpipe.config import DataConfig
from imgpipe.data.prepare import prepare
from imgpipe.data.sources import fetch

pytestmark = pytest.mark.skipif(not MNIST_T10K.is_dir(), reason="../shared/datasets/mnist-t10k is absent")


def test_idx_csv_and_image_folder_prepare_identically(tmp_path):
    from_idx = fetch(DataConfig(dataset="idx", path=MNIST_T10K))["train"].subset(np.arange(2500))
    write_csv(tmp_path / "mnist.csv", from_idx.images, from_idx.labels)
    write_image_folder(tmp_path / "png", from_idx.images, from_idx.labels, from_idx.class_names)
    sources = {
        "idx": {"train": from_idx},
        "csv": fetch(DataConfig(dataset="csv", path=tmp_path / "mnist.csv")),
        "imagefolder": fetch(DataConfig(dataset="imagefolder", path=tmp_path / "png")),
    }
    prepared = {name: prepare(raw, val_fraction=0.1, test_fraction=0.2, seed=0) for name, raw in sources.items()}
    reference = prepared["idx"]
    assert (len(reference.train), len(reference.test)) == (1800, 500) and len(set(reference.train.labels.tolist())) == 10
    for name, other in prepared.items():
        assert other.class_names == reference.class_names, name
        assert other.mean == reference.mean and other.std == reference.std, name
        for split in ("train", "val", "test"):
            assert np.array_equal(getattr(other, split).images, getattr(reference, split).images), (name, split)
            assert np.array_equal(getattr(other, split).labels, getattr(reference, split).labels), (name, split)
