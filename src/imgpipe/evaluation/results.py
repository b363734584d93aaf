"""What training and evaluation measured of each variant and seed, read back from their files in metrics/:
what the report sets side by side and the publish stage records in MLflow."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from imgpipe import paths
from imgpipe.files import read_csv, read_json


@dataclass(frozen=True)
class VariantResult:
    """One variant trained with one seed: its files under <variant>/seed<seed> in metrics/."""

    train: dict  # metrics/train/
    test: dict  # metrics/test/
    classes: pd.DataFrame  # metrics/classes/: class, precision, recall, f1, support
    confusion: pd.DataFrame  # metrics/confusion/: counts, actual classes as the index
    correct: np.ndarray  # (N,) bool: whether it got each test image right, in metrics/predictions/'s order
    reliability: pd.DataFrame | None = None  # metrics/reliability/: confidence bins before and after temperature scaling


def load_result(name: str, seed: int) -> VariantResult:
    predictions = read_csv(paths.predictions(name, seed), ("actual", "predicted"))
    return VariantResult(
        train=read_json(paths.train_metrics(name, seed)),
        test=read_json(paths.test_metrics(name, seed)),
        classes=read_csv(paths.class_scores(name, seed), ("class",)),
        confusion=read_csv(paths.confusion(name, seed), ("actual",)).set_index("actual"),
        correct=(predictions["actual"] == predictions["predicted"]).to_numpy(),
        reliability=read_csv(paths.reliability(name, seed), ("scaling",)),
    )


def load_results(variants: list[str], seeds: list[int]) -> dict[str, dict[int, VariantResult]]:
    """variant -> seed -> its result."""
    return {name: {seed: load_result(name, seed) for seed in seeds} for name in variants}
