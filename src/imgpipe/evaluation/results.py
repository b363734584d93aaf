"""What training and evaluation measured of each variant and seed, read back from their files in metrics/ (what
the report sets side by side and the publish stage records in MLflow), and the choice among them.

Choosing is on validation figures, never on test ones: test figures are shown beside the choice; using them
to choose would make them an optimistic estimate of the chosen model, and the test split a second
validation split.
"""

from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING

import numpy as np

from imgpipe import paths
from imgpipe.files import read_csv, read_json

if TYPE_CHECKING:  # pandas is read_csv's to import: the stages that only choose never pay for it
    import pandas as pd


@dataclass(frozen=True)
class VariantResult:
    """One variant trained with one seed: its files under <variant>/seed<seed> in metrics/."""

    train: dict  # metrics/train/
    test: dict  # metrics/test/
    classes: "pd.DataFrame"  # metrics/classes/: class, precision, recall, f1, support
    confusion: "pd.DataFrame"  # metrics/confusion/: counts, actual classes as the index
    correct: np.ndarray  # (N,) bool: whether it got each test image right, in metrics/predictions/'s order
    reliability: "pd.DataFrame | None" = None  # metrics/reliability/: confidence bins before and after temperature scaling


def load_result(name: str, seed: int) -> VariantResult:
    predictions = read_csv(paths.predictions(name, seed), ("actual", "predicted"))
    return VariantResult(
        train=read_json(paths.train_metrics(name, seed)),
        test=read_json(paths.test_metrics(name, seed)),
        classes=read_csv(paths.class_scores(name, seed), ("class",)),
        confusion=_square(read_csv(paths.confusion(name, seed), ("actual",)).set_index("actual")),
        correct=(predictions["actual"] == predictions["predicted"]).to_numpy(),
        reliability=read_csv(paths.reliability(name, seed), ("scaling",)),
    )


def load_results(variants: list[str], seeds: list[int]) -> dict[str, dict[int, VariantResult]]:
    """variant -> seed -> its result."""
    return {name: {seed: load_result(name, seed) for seed in seeds} for name in variants}


def best_on_validation(train_metrics: dict[str, dict]) -> str:
    """The variant with the highest val accuracy; ties go to the lower val loss, then to the first listed.
    train_metrics: variant -> its metrics/train/<variant>.json."""
    return max(train_metrics, key=lambda name: (train_metrics[name]["val_accuracy"], -train_metrics[name]["val_loss"]))


def best_over_seeds(train_metrics: dict[str, dict[int, dict]]) -> str:
    """The variant with the highest mean val accuracy over its seeds (ties: the lower mean val loss, then
    the first listed), which one lucky seed cannot sway. train_metrics: variant -> seed -> its metrics."""
    means = {variant: {key: fmean(metrics[key] for metrics in by_seed.values()) for key in ("val_accuracy", "val_loss")}
             for variant, by_seed in train_metrics.items()}
    return best_on_validation(means)


@dataclass(frozen=True)
class Choice:
    variant: str
    seed: int


def choose(train_metrics: dict[str, dict[int, dict]]) -> Choice:
    """The model a run puts forward: the variant best over its seeds, then its seed best on validation. The
    report's headline and the registry's `candidate` are this one choice. train_metrics: variant -> seed -> metrics."""
    variant = best_over_seeds(train_metrics)
    return Choice(variant, best_on_validation(train_metrics[variant]))


def _square(confusion: "pd.DataFrame") -> "pd.DataFrame":
    """The confusion counts with the predicted classes named as the actual ones, in the same order (a class named
    `actual` reads back as pandas' `actual.1`, as text: the row labels' type)."""
    confusion.columns = confusion.index.copy()
    return confusion.astype(np.int64)
