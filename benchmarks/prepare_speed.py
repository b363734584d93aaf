"""How long fetch + prepare take for 70,000 28x28 images (MNIST's size), on this machine.

    python benchmarks/prepare_speed.py [--images 70000] [--runs 3]

Builds IDX files of that many images in a temporary folder (tiling the real MNIST test set from
../shared/datasets/mnist-t10k when present, random pixels otherwise), then times reading them
(the idx source), preparing them (stratified split, statistics, data card) and writing the
prepared splits, as the fetch and prepare stages do. Prints each run and the median.
"""

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgpipe.config import DataConfig
from imgpipe.data.card import data_card
from imgpipe.data.imageset import save_splits
from imgpipe.data.prepare import prepare
from imgpipe.data.prepared import save_prepared
from imgpipe.data.sources import fetch
from imgpipe.data.sources.idx import read_idx, write_idx

MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist-t10k"


def source_images(count: int) -> tuple[np.ndarray, np.ndarray, str]:
    if (MNIST_T10K / "t10k-images-idx3-ubyte.gz").exists():
        images = read_idx(MNIST_T10K / "t10k-images-idx3-ubyte.gz")
        labels = read_idx(MNIST_T10K / "t10k-labels-idx1-ubyte.gz")
        reps = -(-count // len(images))
        return np.tile(images, (reps, 1, 1))[:count], np.tile(labels, reps)[:count], "MNIST t10k, tiled"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count, dtype=np.uint8), "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    images, labels, origin = source_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "idx"
        folder.mkdir()
        write_idx(folder / "train-images-idx3-ubyte", images)
        write_idx(folder / "train-labels-idx1-ubyte", labels)
        print(f"{args.images:,} images of 28x28 ({origin}); {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, numpy {np.__version__}")
        times = []
        for run in range(1, args.runs + 1):
            start = time.perf_counter()
            raw = fetch(DataConfig(dataset="idx", path=folder))
            save_splits(raw, Path(tmp) / "raw")
            fetched = time.perf_counter()
            prepared = prepare(raw, val_fraction=0.1, test_fraction=1 / 7, seed=0)
            data_card(prepared)
            save_prepared(prepared, Path(tmp) / "prepared")
            done = time.perf_counter()
            times.append(done - start)
            print(f"run {run}: fetch {fetched - start:.2f} s + prepare {done - fetched:.2f} s = {done - start:.2f} s")
        print(f"first run {times[0]:.2f} s (pays the one-time imports, as a stage does); "
              f"median of {args.runs}: {statistics.median(times):.2f} s; target: under 10 s")


if __name__ == "__main__":
    main()
